"""A complete pipeline stack on any AWS endpoint (a moto server here), and a synchronous
driver that plays every SQS event-source mapping until the queues are empty.

Provisioning mirrors the deployed resources: three queues each with a dead-letter
queue, the input bucket's ObjectCreated notification on ``manifests/`` to the manifest
queue, the output bucket and the table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchpredict.jobs import Job, JobStore
from batchpredict.local.lambda_shim import Handler, deliver_once

QUEUES = ("manifest", "work", "finalize")


@dataclass(frozen=True)
class QueueRef:
    url: str
    arn: str


@dataclass
class Stack:
    s3: Any
    sqs: Any
    dynamodb: Any
    input_bucket: str
    output_bucket: str
    table: str
    queues: dict[str, QueueRef] = field(default_factory=dict)

    def settings(self) -> dict[str, str]:
        """The function environment for this stack (model and fetch settings are added by the caller)."""
        return {
            "TABLE_NAME": self.table,
            "OUTPUT_BUCKET": self.output_bucket,
            "WORK_QUEUE_URL": self.queues["work"].url,
            "MANIFEST_QUEUE_URL": self.queues["manifest"].url,
            "FINALIZE_QUEUE_URL": self.queues["finalize"].url,
        }

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

    def depth(self, name: str) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queues[name].url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def deliver(self, name: str, handler: Handler, batch_size: int = 10) -> int:
        q = self.queues[name]
        return deliver_once(self.sqs, q.url, q.arn, handler, function_name=name, batch_size=batch_size)

    def drain(
        self,
        mappings: list[tuple[str, Handler]],
        max_seconds: float = 120.0,
        idle: Callable[[], None] = lambda: time.sleep(0.2),
    ) -> None:
        """Deliver from every queue until all are empty, messages in flight included."""
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            if not sum(self.deliver(name, handler) for name, handler in mappings):
                if not any(self.depth(name) for name, _ in mappings):
                    return
                idle()  # messages in flight come back after their visibility timeout
        raise TimeoutError(f"the queues did not drain in {max_seconds:.0f}s")


def provision(
    s3: Any, sqs: Any, dynamodb: Any, prefix: str, *, visibility_timeout: int = 30, max_receive_count: int = 5
) -> Stack:
    stack = Stack(s3, sqs, dynamodb, f"{prefix}-input", f"{prefix}-output", f"{prefix}-table")
    for name in QUEUES:
        dlq = _queue(sqs, f"{prefix}-{name}-dlq", {})
        stack.queues[f"{name}-dlq"] = dlq
        redrive = {"deadLetterTargetArn": dlq.arn, "maxReceiveCount": str(max_receive_count)}
        stack.queues[name] = _queue(
            sqs,
            f"{prefix}-{name}",
            {"VisibilityTimeout": str(visibility_timeout), "RedrivePolicy": json.dumps(redrive)},
        )
    for bucket in (stack.input_bucket, stack.output_bucket):
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(
        Bucket=stack.input_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": stack.queues["manifest"].arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "manifests/"}]}},
                }
            ]
        },
    )
    dynamodb.create_table(
        TableName=stack.table,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    )
    return stack


def _queue(sqs: Any, name: str, attributes: dict[str, str]) -> QueueRef:
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return QueueRef(url, arn)


def handler_mappings() -> list[tuple[str, Handler]]:
    """Each queue with the handler its event-source mapping invokes."""
    from batchpredict.handlers import finalize, predict, reconcile, split_manifest

    return [
        ("manifest", split_manifest.lambda_handler),
        ("work", predict.lambda_handler),
        ("finalize", finalize.lambda_handler),
        ("work-dlq", reconcile.lambda_handler),
    ]


def clear_handler_caches() -> None:
    """Forget every handler's cold-start state (settings, clients, model)."""
    from batchpredict.handlers import finalize, predict, predict_api, reconcile, split_manifest

    for cached in (
        split_manifest.splitter,
        predict.service,
        finalize.finalizer,
        reconcile.writer,
        predict_api.service,
    ):
        cached.cache_clear()


# --- the embedded local stack: servers, provisioning from the template, workers, API ---------

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Locally the workers' logs would drown the progress bar; metrics have nowhere to go.
LOCAL_QUIET = {
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_TRACE_DISABLED": "true",
}


class LocalStack:
    """moto server (S3, SQS) + DynamoDB Local (or moto's DynamoDB) on loopback, provisioned from
    the template, with worker processes for the mappings and predict_api on a loopback port."""

    def __init__(
        self,
        options: Any,
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

    def start(self) -> Any:

        import boto3

        from batchpredict.client import StackRef
        from batchpredict.local.dynamodb_local import DynamoDBLocal, DynamoDBLocalUnavailableError
        from batchpredict.local.provision import provision_from_template
        from batchpredict.local.runner import Runner
        from batchpredict.local.servers import MotoServer

        try:
            moto = MotoServer()
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
            env = {
                "AWS_ENDPOINT_URL_S3": endpoint,
                "AWS_ENDPOINT_URL_SQS": endpoint,
                "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint,
            } | LOCAL_CREDENTIALS
            self._set_environment(env | {"AWS_PROFILE": None})
            self.plan = provision_from_template(
                boto3.client("s3"), boto3.client("sqs"), boto3.client("dynamodb"), self.options
            )
            for mapping in self.plan.mappings:
                mapping.environment.update(env | LOCAL_QUIET)
            self.runner = Runner(self.plan.mappings, log_dir=self.log_dir)
            self.runner.start()
            self._stoppers.append(self.runner.stop)
            api_url = self._start_api(env) if self.serve_api else None
        except BaseException:
            self.stop()
            raise
        return StackRef(
            self.plan.input_bucket, self.plan.output_bucket, self.plan.table, endpoints=env, api_url=api_url
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
