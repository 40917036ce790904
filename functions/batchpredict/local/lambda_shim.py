"""What Lambda hands a function that an SQS event-source mapping triggers: the event and the context.

Used by the local runner and the integration tests, so handlers see exactly the shapes
they see on AWS (``Records[].messageId/receiptHandle/body/attributes/eventSourceARN``).
"""

from __future__ import annotations

import importlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[[dict[str, Any], Any], Any]  # (event, context) -> response


@dataclass
class LocalContext:
    """The parts of ``LambdaContext`` that handlers and Powertools read."""

    function_name: str
    timeout_seconds: float = 900.0
    memory_limit_in_mb: int = 1024
    region: str = "us-east-1"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _deadline: float = 0.0

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        self.invoked_function_arn = f"arn:aws:lambda:{self.region}:123456789012:function:{self.function_name}"
        self.function_version = "$LATEST"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"local/{self.aws_request_id}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str = "us-east-1") -> dict[str, Any]:
    """The event an SQS event-source mapping sends, from ReceiveMessage results."""
    records = []
    for m in messages:
        attributes = m.get("Attributes", {})
        records.append(
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {
                    "ApproximateReceiveCount": attributes.get("ApproximateReceiveCount", "1"),
                    "SentTimestamp": attributes.get("SentTimestamp", str(int(time.time() * 1000))),
                    "SenderId": attributes.get("SenderId", "AIDALOCAL"),
                    "ApproximateFirstReceiveTimestamp": attributes.get(
                        "ApproximateFirstReceiveTimestamp", str(int(time.time() * 1000))
                    ),
                },
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


def deliver_once(
    sqs: Any,
    queue_url: str,
    queue_arn: str,
    handler: Handler,
    *,
    function_name: str,
    batch_size: int = 10,
    wait_seconds: int = 0,
    window_seconds: float = 0.0,
    timeout_seconds: float = 900.0,
) -> int:
    """One poll of the mapping: receive up to ``batch_size``, invoke, delete what succeeded.

    Messages reported in ``batchItemFailures`` are left alone: they come back after the
    visibility timeout, and after ``maxReceiveCount`` deliveries the redrive policy moves
    them to the dead-letter queue, as on AWS. Returns how many messages were delivered.
    """
    messages: list[dict[str, Any]] = []
    window_ends = 0.0
    while len(messages) < batch_size:
        got = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(10, batch_size - len(messages)),
            WaitTimeSeconds=wait_seconds if not messages else 0,
            AttributeNames=["All"],
        ).get("Messages", [])
        if got:
            # The batching window opens with the first message, as the mapping's does.
            window_ends = window_ends or time.monotonic() + window_seconds
            messages.extend(got)
        elif not messages or time.monotonic() >= window_ends:
            break
        else:
            time.sleep(0.05)
    if not messages:
        return 0
    context = LocalContext(function_name, timeout_seconds=timeout_seconds)
    try:
        response = handler(sqs_event(messages, queue_arn), context)
    except Exception:
        # A function error fails the whole batch: every message comes back, as on AWS.
        logging.getLogger(__name__).exception(
            "%s failed; %d messages will be redelivered", function_name, len(messages)
        )
        return len(messages)
    failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
    done = [m for m in messages if m["MessageId"] not in failed]
    for start in range(0, len(done), 10):
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(done[start : start + 10])
            ],
        )
    return len(messages)


def load_handler(path: str) -> Handler:
    """``package.module.function`` -> the function."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
