"""What a user does with a stack (local or deployed): submit, follow, fetch results, retry.

A ``StackRef`` names the stack's buckets and table; it comes from the local stack's state
file (``targets.LocalState``) or from a deployed stack's CloudFormation outputs. Clients use the
standard boto3 credential chain and endpoint settings.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from batchpredict import aws
from batchpredict.costs import vcpus
from batchpredict.errors import ErrorCode
from batchpredict.estimate import (
    DEFAULT_MODEL,
    EXACT,
    Estimate,
    StackSettings,
    estimate,
    per_line_for,
    scan_manifest,
)
from batchpredict.jobs import FINAL_STATUSES, Job, JobStatus, JobStore
from batchpredict.manifest import ManifestError, detect_format
from batchpredict.messages import ManifestObject
from batchpredict.options import JobOptions
from batchpredict.records import FAILED, ResultRecord
from batchpredict.results import results_key, summary_key

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client

# CloudFormation output keys of infrastructure/template.yaml.
OUTPUT_KEYS = {
    "input_bucket": "InputBucketName",
    "output_bucket": "OutputBucketName",
    "table": "ResultsTableName",
}


SPLIT_TIME_CODES = frozenset({ErrorCode.INVALID_MANIFEST_LINE.value, ErrorCode.UNSUPPORTED_SCHEME.value})
HISTORY_SEARCHED = 20  # finished jobs a dry run looks through for ones of its model and fidelity
SUMMARY_GRACE_SECONDS = 30.0  # a final job's _summary.json follows its status write within this


class UserError(Exception):
    """Something the user can fix; the CLI prints it as one line."""


@dataclass(frozen=True)
class StackRef:
    input_bucket: str
    output_bucket: str
    table: str
    endpoints: dict[str, str] | None = None  # local stack only: AWS_ENDPOINT_URL_* settings
    api_url: str | None = None
    events_queue: str | None = None  # local stack only: a copy of every job state change event
    parameters: dict[str, str] | None = None  # deployed stack only: its CloudFormation parameters

    @classmethod
    def from_cloudformation(
        cls, stack_name: str, cloudformation: CloudFormationClient | None = None
    ) -> StackRef:
        cloudformation = cloudformation or aws.client("cloudformation")
        try:
            stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
        except ClientError as exc:
            raise UserError(f"stack {stack_name!r} not found ({exc.response['Error']['Message']})") from exc
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        missing = [key for key in OUTPUT_KEYS.values() if key not in outputs]
        if missing:
            raise UserError(
                f"stack {stack_name!r} has no output {', '.join(missing)}: is it a batchpredict stack?"
            )
        return cls(
            input_bucket=outputs[OUTPUT_KEYS["input_bucket"]],
            output_bucket=outputs[OUTPUT_KEYS["output_bucket"]],
            table=outputs[OUTPUT_KEYS["table"]],
            api_url=outputs.get("PredictApiUrl"),
            parameters={
                p["ParameterKey"]: p.get("ParameterValue", "") for p in stacks[0].get("Parameters", ())
            },
        )


@dataclass(frozen=True)
class Progress:
    job: Job
    elapsed: float

    @property
    def done(self) -> int:
        return self.job.succeeded + self.job.failed

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if not self.job.split_done or not self.rate:
            return None
        return max(self.job.total - self.done, 0) / self.rate


def local_stack_settings() -> StackSettings:
    """The local stack's settings: the template's, with as many predict invocations at once as its
    CPU slots allow (cores ÷ the vCPUs a predict function's memory buys: cpu_slots.py)."""
    from batchpredict.model import available_cpus

    memory_mb = StackSettings().predict_memory_mb
    return StackSettings(predict_concurrency=max(1, available_cpus() // vcpus(memory_mb)))


class Client:
    def __init__(
        self, stack: StackRef, s3: S3Client | None = None, dynamodb: DynamoDBClient | None = None
    ) -> None:
        self.stack = stack
        self.s3 = s3 or aws.client("s3")
        self.jobs = JobStore(dynamodb or aws.client("dynamodb"), stack.table)

    def submit(self, manifest: Path, key: str | None = None, options: JobOptions | None = None) -> str:
        """Upload under manifests/ (as ``key``, default the file name) with the job's options as
        the object's user metadata; return the job id the pipeline will give it."""
        if not manifest.is_file():
            raise UserError(f"manifest not found: {manifest}")
        key = f"manifests/{key or manifest.name}"
        try:
            detect_format(key)  # refuse an extension the splitter would refuse, before uploading
        except ManifestError as exc:
            raise UserError(f"{manifest}: {exc}") from exc
        response = self.s3.put_object(
            Bucket=self.stack.input_bucket,
            Key=key,
            Body=manifest.read_bytes(),
            Metadata=(options or JobOptions()).as_metadata(),
        )
        return ManifestObject(
            self.stack.input_bucket,
            key,
            response.get("VersionId"),
            response.get("ETag", "").strip('"') or None,
        ).job_id

    def dry_run(
        self,
        manifest: Path,
        key: str | None = None,
        options: JobOptions | None = None,
        settings: StackSettings | None = None,
        model: str | None = None,
    ) -> Estimate:
        """What ``submit`` of ``manifest`` would make and cost, without uploading it: its lines and
        those that would fail, read by the splitter's own code, and an estimate of GB-s, $ and wall
        time at the job's fidelity from this stack's recent jobs of the same model and fidelity
        (the shipped defaults when it has none). ``settings``: the stack's (default: a deployed
        stack's parameters, or the template's with ``local up``'s one predict worker per core);
        ``model``: default the model of the stack's newest finished job."""
        if not manifest.is_file():
            raise UserError(f"manifest not found: {manifest}")
        with manifest.open("rb") as stream:
            scan = scan_manifest(stream, key or manifest.name)
        settings = settings or self.settings()
        fidelity = str(options.fidelity or EXACT) if options else EXACT
        history = self.jobs.list_jobs(
            (JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_ERRORS), limit=HISTORY_SEARCHED
        )
        model = model or next((j.model for j in history if j.model), DEFAULT_MODEL)
        return estimate(scan, per_line_for(history, model, fidelity, settings), settings, model, fidelity)

    def settings(self) -> StackSettings:
        """The stack's settings an estimate follows: a deployed stack's parameters; for the local
        stack the template's, with as many predict invocations at once as its CPU slots allow
        (cores ÷ the vCPUs a predict function's memory buys: cpu_slots.py)."""
        if self.stack.parameters is not None:
            return StackSettings.from_parameters(self.stack.parameters)
        return local_stack_settings()

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise UserError(f"job {job_id} not found in table {self.stack.table}")
        return job

    def wait_for_job(self, job_id: str, timeout: float = 60.0) -> Job:
        """The job record appears once the splitter has seen the upload."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.jobs.get(job_id)
            if job is not None:
                return job
            time.sleep(0.3)
        raise UserError(f"job {job_id} did not start within {timeout:.0f}s: is the pipeline running?")

    def watch(
        self,
        job_id: str,
        on_progress: Callable[[Progress], None],
        interval: float = 0.5,
        timeout: float | None = None,
    ) -> Job:
        started = time.monotonic()
        job = self.wait_for_job(job_id)
        while True:
            job = self.job(job_id)
            on_progress(Progress(job, time.monotonic() - started))
            if job.status in FINAL_STATUSES:
                self._await_summary(job_id, interval)
                return job
            if timeout is not None and time.monotonic() - started > timeout:
                raise UserError(f"job {job_id} still {job.status.value} after {timeout:.0f}s")
            time.sleep(interval)

    def _await_summary(self, job_id: str, interval: float) -> None:
        """A job's final status is written before its _summary.json (so a writer that loses the race
        writes no summary): give the winner up to SUMMARY_GRACE_SECONDS to put it, so that `--wait`
        followed by `report` never meets a final job without one."""
        until = time.monotonic() + SUMMARY_GRACE_SECONDS
        while time.monotonic() < until:
            try:
                self.s3.head_object(Bucket=self.stack.output_bucket, Key=summary_key(job_id))
                return
            except ClientError:
                time.sleep(interval)

    def recent_jobs(
        self,
        limit: int = 20,
        statuses: tuple[JobStatus, ...] = (),
        since: str | None = None,
        name: str | None = None,
    ) -> list[Job]:
        """Newest first, from the table's by-status index (no scan)."""
        return self.jobs.list_jobs(statuses or tuple(JobStatus), since=since, name=name, limit=limit)

    def jobs_of_manifest(self, uri: str) -> list[Job]:
        return self.jobs.jobs_of_manifest(uri)

    def cancel(self, job_id: str) -> Job:
        """SPLITTING/RUNNING -> CANCELLING; a job in any other state is a UserError saying which."""
        job = self.jobs.cancel(job_id)
        if job is None:
            status = self.job(job_id).status.value
            raise UserError(f"job {job_id} is {status}: only SPLITTING or RUNNING jobs can be cancelled")
        return job

    def events(self, wait_seconds: int = 20) -> Iterator[dict[str, Any]]:
        """Job state change events as they arrive (the local stack's events queue; each is read
        once, by whoever reads it first). Ends after ``wait_seconds`` without one."""
        if not self.stack.events_queue:
            raise UserError(
                "job events are read here from the local stack only; on AWS they go to the stack's "
                "EventBridge bus (output JobEventBusName): subscribe a rule, NotificationEmail or WebhookUrl"
            )
        sqs = aws.client("sqs")
        while True:
            messages = sqs.receive_message(
                QueueUrl=self.stack.events_queue,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=min(wait_seconds, 20),
            ).get("Messages", [])
            if not messages:
                return
            for m in messages:
                yield json.loads(m["Body"])
                sqs.delete_message(QueueUrl=self.stack.events_queue, ReceiptHandle=m["ReceiptHandle"])

    def result_lines(self, job_id: str, from_table: bool = False) -> Iterator[ResultRecord]:
        if from_table:
            self.job(job_id)
            yield from self.jobs.query_results(job_id)
            return
        try:
            body = self.s3.get_object(Bucket=self.stack.output_bucket, Key=results_key(job_id))["Body"]
        except ClientError as exc:
            status = self.job(job_id).status.value
            raise UserError(f"job {job_id} has no results.jsonl yet (status {status})") from exc
        for line in body.iter_lines():
            if line:
                yield ResultRecord.from_json(json.loads(line))

    def summary(self, job_id: str) -> dict[str, Any]:
        try:
            body = self.s3.get_object(Bucket=self.stack.output_bucket, Key=summary_key(job_id))["Body"]
        except ClientError as exc:
            raise UserError(f"job {job_id} has no _summary.json yet") from exc
        return json.loads(body.read())  # type: ignore[no-any-return]

    def retry_failed(self, job_id: str) -> tuple[str, int]:
        """Submit the job's failed lines as a new JSONL manifest; returns (new job id, lines)."""
        # Lines refused at split time (bad JSON, bad scheme) would only fail the same way again.
        lines = [
            r
            for r in self.result_lines(job_id)
            if r.status == FAILED and r.url and r.error and r.error.code not in SPLIT_TIME_CODES
        ]
        if not lines:
            raise UserError(f"job {job_id} has no failed lines to retry")
        body = "".join(
            json.dumps(
                {k: v for k, v in (("url", r.url), ("id", r.id), ("metadata", r.metadata)) if v is not None}
            )
            + "\n"
            for r in lines
        )
        key = f"manifests/retry-{job_id}-{int(time.time())}.jsonl"
        response = self.s3.put_object(Bucket=self.stack.input_bucket, Key=key, Body=body.encode())
        new_id = ManifestObject(
            self.stack.input_bucket,
            key,
            response.get("VersionId"),
            response.get("ETag", "").strip('"') or None,
        ).job_id
        return new_id, len(lines)


def to_csv(records: Iterable[ResultRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["index", "id", "url", "status", "label", "probability", "error_code", "error_message"])
    for r in records:
        top = r.predictions[0] if r.predictions else None
        writer.writerow(
            [
                r.index,
                r.id or "",
                r.url or "",
                r.status,
                top.label if top else "",
                f"{top.probability:.4f}" if top else "",
                r.error.code if r.error else "",
                r.error.message if r.error else "",
            ]
        )
    return out.getvalue()
