"""The local stack: a synchronous driver over a provisioned stack (for tests and benchmarks),
and ``LocalStack``, the embedded stack the CLI starts (servers, template provisioning,
worker processes, the predict API).

Both are provisioned from infrastructure/template.yaml (``provision.provision_from_template``):
nothing about queues, table or mappings is defined here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpredict.jobs import Job, JobStore
from batchpredict.local.lambda_shim import Handler, Report, deliver_once, load_handler

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

    from batchpredict.cli.client import StackRef
    from batchpredict.local.provision import LocalOptions, LocalPlan
    from batchpredict.local.runner import Mapping


@dataclass
class Stack:
    """A provisioned stack (a ``LocalPlan``) and the clients to reach it.

    In-process invocations are accounted like Lambda's: ``reports`` collects each one's
    ``Report`` (the REPORT line the worker processes print) by queue logical id.
    """

    s3: S3Client
    sqs: SQSClient
    dynamodb: DynamoDBClient
    plan: LocalPlan
    reports: dict[str, list[Report]] = field(default_factory=dict)

    @property
    def input_bucket(self) -> str:
        return str(self.plan.input_bucket)

    @property
    def output_bucket(self) -> str:
        return str(self.plan.output_bucket)

    @property
    def table(self) -> str:
        return str(self.plan.table)

    def queue(self, logical_id: str) -> tuple[str, str]:
        """(url, arn) of a queue by its logical id in the template, e.g. ``WorkQueue``."""
        return self.plan.queues[logical_id]

    def environment(self) -> dict[str, str]:
        """Every function's environment, merged: what an in-process driver needs set."""
        merged: dict[str, str] = {}
        for function in self.plan.functions.values():
            merged |= function.environment
        return merged

    def submit(self, name: str, body: bytes | str) -> None:
        self.s3.put_object(
            Bucket=self.input_bucket,
            Key=f"manifests/{name}",
            Body=body.encode() if isinstance(body, str) else body,
        )

    def jobs(self) -> JobStore:
        return JobStore(self.dynamodb, self.table)

    def job(self, job_id: str) -> Job:
        job = self.jobs().get(job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        return job

    def depth(self, logical_id: str) -> int:
        # Delayed messages too: a chunk whose lines were deferred comes back after its delay.
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queue(logical_id)[0],
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return (
            int(attrs["ApproximateNumberOfMessages"])
            + int(attrs["ApproximateNumberOfMessagesNotVisible"])
            + int(attrs.get("ApproximateNumberOfMessagesDelayed", "0"))
        )

    def deliver(self, logical_id: str, handler: Handler, batch_size: int = 10) -> int:
        url, arn = self.queue(logical_id)
        memory = next((m.memory_mb for m in self.plan.mappings if m.queue_url == url), 1024)
        return deliver_once(
            self.sqs,
            url,
            arn,
            handler,
            function_name=logical_id,
            batch_size=batch_size,
            memory_mb=memory,
            report=self.reports.setdefault(logical_id, []).append,
        )

    def mappings(
        self, wrap: Callable[[str, Handler], Handler] = lambda _, h: h
    ) -> list[tuple[str, Handler, int]]:
        """(queue logical id, handler, batch size) of every event-source mapping in the template."""
        by_url = {url: name for name, (url, _) in self.plan.queues.items()}
        return [
            (by_url[m.queue_url], wrap(m.function, load_handler(m.handler)), m.batch_size)
            for m in self.plan.mappings
        ]

    def drain(
        self,
        mappings: list[tuple[str, Handler, int]] | None = None,
        max_seconds: float = 120.0,
        idle: Callable[[], None] = lambda: time.sleep(0.2),
    ) -> None:
        """Deliver from every mapped queue until all are empty, messages in flight included."""
        mappings = mappings or self.mappings()
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            if not sum(self.deliver(name, handler, size) for name, handler, size in mappings):
                if not any(self.depth(name) for name, _, _ in mappings):
                    return
                idle()  # messages in flight come back after their visibility timeout
        raise TimeoutError(f"the queues did not drain in {max_seconds:.0f}s")


def _waiting(sqs: SQSClient, mapping: Mapping) -> int:
    """Messages visible in a mapping's queue: what scaling out would serve."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=mapping.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def clear_handler_caches() -> None:
    """Forget every handler's cold-start state (settings, clients, model)."""
    from batchpredict.handlers import finalize, predict, predict_api, reconcile, split_manifest, sweep

    for cached in (
        split_manifest.splitter,
        predict.service,
        finalize.finalizer,
        reconcile.config,
        reconcile.writer,
        reconcile.finalizer,
        predict_api.service,
        sweep.sweeper,
    ):
        cached.cache_clear()


# --- the embedded local stack: servers, provisioning from the template, workers, API ---------

# Locally the workers' logs would drown the progress bar; metrics have nowhere to go.
LOCAL_QUIET = {
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_TRACE_DISABLED": "true",
}


class LocalStack:
    """moto server (S3, SQS) on loopback + DynamoDB Local (every interface, the stack's random
    key; or moto's DynamoDB), provisioned from the template, with worker processes for the
    mappings and predict_api on a loopback port."""

    def __init__(
        self,
        options: LocalOptions,
        *,
        dynamodb_local: bool = True,
        serve_api: bool = True,
        log_dir: Path | None = None,
        warn: Callable[[str], None] = print,
    ) -> None:
        self.options = options
        self.log_dir = log_dir
        self.dynamodb_local = dynamodb_local
        self.serve_api = serve_api
        self.warn = warn
        self._stoppers: list[Callable[[], None]] = []
        self._saved_environment: dict[str, str | None] = {}
        self.runner: Any = None
        self.plan: Any = None

    def start(self) -> StackRef:
        from batchpredict import aws
        from batchpredict.cli.client import StackRef
        from batchpredict.local.dynamodb_local import (
            DynamoDBLocal,
            DynamoDBLocalUnavailableError,
            new_credentials,
        )
        from batchpredict.local.provision import provision_from_template
        from batchpredict.local.runner import Runner
        from batchpredict.local.schedules import Scheduler
        from batchpredict.local.servers import MotoServer

        try:
            moto = MotoServer(fair_queues=self.options.fair_queues)
            endpoint = moto.start()
            self._stoppers.append(moto.stop)
            dynamodb_endpoint = endpoint
            if self.dynamodb_local:
                try:
                    ddb = DynamoDBLocal()
                    dynamodb_endpoint = ddb.start()
                    self._stoppers.append(ddb.stop)
                except DynamoDBLocalUnavailableError as exc:
                    self.warn(f"warning: {exc}; using moto's DynamoDB instead (slower, looser API limits)")
            # The stack's own key: DynamoDB Local listens on every interface and keeps a database
            # per access key, so the key is what keeps its tables to this stack. It reaches every
            # client of the stack: this process, the workers (their mappings' environment), the
            # predict API, and the other terminals' CLI (the StackRef, in local up's 0600 state).
            env = {
                "AWS_ENDPOINT_URL_S3": endpoint,
                "AWS_ENDPOINT_URL_SQS": endpoint,
                "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint,
                "AWS_ENDPOINT_URL_EVENTBRIDGE": endpoint,  # moto's EventBridge (service id EventBridge)
            } | new_credentials()
            self._set_environment(env | {"AWS_PROFILE": None})
            self.plan = provision_from_template(
                aws.client("s3"), aws.client("sqs"), aws.client("dynamodb"), self.options
            )
            for mapping in self.plan.mappings:
                mapping.environment.update(env | LOCAL_QUIET)
            sqs = aws.client("sqs")
            self.runner = Runner(self.plan.mappings, log_dir=self.log_dir, backlog=lambda m: _waiting(sqs, m))
            self.runner.start()
            self._stoppers.append(self.runner.stop)
            # The template's schedules (the sweeper), every LocalOptions.schedule_seconds.
            scheduler = Scheduler(self.plan.schedules, log_dir=self.log_dir, environment=env | LOCAL_QUIET)
            scheduler.start()
            self._stoppers.append(scheduler.stop)
            api_url = self._start_api(env) if self.serve_api else None
        except BaseException:
            self.stop()
            raise
        return StackRef(
            self.plan.input_bucket,
            self.plan.output_bucket,
            self.plan.table,
            endpoints=env,
            api_url=api_url,
            events_queue=self.plan.events_queue,
        )

    def _start_api(self, env: dict[str, str]) -> str:

        from batchpredict.handlers import predict_api
        from batchpredict.local.api_server import ApiServer

        # The handler runs in this process (its model loads on the first request).
        self._set_environment(self.plan.functions["PredictApiFunction"].environment | env | LOCAL_QUIET)
        predict_api.service.cache_clear()
        server = ApiServer(
            predict_api.lambda_handler, timeout_seconds=self.plan.functions["PredictApiFunction"].timeout
        )
        self._stoppers.append(server.stop)
        return server.start() + "/predict"

    def _set_environment(self, values: dict[str, str | None]) -> None:
        """Point this process's boto3 at the local servers; stop() puts the old values back."""
        import os

        for name, value in values.items():
            self._saved_environment.setdefault(name, os.environ.get(name))
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    def _restore_environment(self) -> None:
        import os

        for name, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_environment.clear()

    def stop(self) -> None:
        self._stoppers.insert(0, self._restore_environment)  # runs last
        while self._stoppers:
            stopper = self._stoppers.pop()
            try:
                stopper()
            except Exception as exc:  # keep stopping the rest
                self.warn(f"warning: stopping a local server failed: {exc}")
