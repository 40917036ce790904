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
