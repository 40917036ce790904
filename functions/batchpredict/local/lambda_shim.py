"""What Lambda hands a function that an SQS event-source mapping triggers: the event and the context;
and what Lambda logs after every invocation: the ``REPORT`` line.

Used by the local runner and the integration tests, so handlers see exactly the shapes
they see on AWS (``Records[].messageId/receiptHandle/body/attributes/eventSourceARN``).
"""

from __future__ import annotations

import importlib
import logging
import math
import re
import resource
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchpredict.cpu_gate import UNGATED, CpuGate

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import ChangeMessageVisibilityBatchRequestEntryTypeDef, MessageTypeDef

Handler = Callable[[dict[str, Any], Any], Any]  # (event, context) -> response


@dataclass(frozen=True)
class Report:
    """One invocation's accounting, as Lambda's ``REPORT`` log line carries it.

    Locally the duration is Lambda's estimate: the handler's wall time less ``cpu_wait_ms``,
    the time the worker waited for CPU slots while other workers computed (cpu_slots.py),
    which its own vCPUs on Lambda would have spared it. The line then ends with a local-only
    ``CPU Wait`` field.
    """

    request_id: str
    duration_ms: float
    billed_ms: int
    memory_mb: int
    max_memory_used_mb: int
    init_ms: float | None = None  # Lambda adds "Init Duration" to a cold start's line
    cpu_wait_ms: float | None = None  # local only: left out of the duration

    @classmethod
    def measured(
        cls,
        request_id: str,
        duration_ms: float,
        memory_mb: int,
        max_memory_used_mb: int,
        cpu_wait_ms: float | None = None,
    ) -> Report:
        """``duration_ms``: the handler's wall time; ``cpu_wait_ms``: how much of it was spent
        waiting for CPU slots (not billed)."""
        wait = None if cpu_wait_ms is None else round(min(max(cpu_wait_ms, 0.0), duration_ms), 2)
        duration_ms = round(duration_ms - (wait or 0.0), 2)
        # Billed in 1 ms steps, rounded up (Lambda since December 2020), at least 1 ms.
        billed = max(1, math.ceil(duration_ms))
        return cls(request_id, duration_ms, billed, memory_mb, max_memory_used_mb, cpu_wait_ms=wait)

    @property
    def gb_seconds(self) -> float:
        """What Lambda charges the duration by: billed seconds x configured memory in GB."""
        return self.billed_ms / 1000 * self.memory_mb / 1024

    def line(self) -> str:
        line = (
            f"REPORT RequestId: {self.request_id}\tDuration: {self.duration_ms:.2f} ms"
            f"\tBilled Duration: {self.billed_ms} ms\tMemory Size: {self.memory_mb} MB"
            f"\tMax Memory Used: {self.max_memory_used_mb} MB"
        )
        if self.init_ms is not None:
            line = f"{line}\tInit Duration: {self.init_ms:.2f} ms"
        return line if self.cpu_wait_ms is None else f"{line}\tCPU Wait: {self.cpu_wait_ms:.2f} ms"


_REPORT = re.compile(
    r"REPORT RequestId: (?P<id>\S+)\s+Duration: (?P<duration>\d+(?:\.\d+)?) ms"
    r"\s+Billed Duration: (?P<billed>\d+) ms\s+Memory Size: (?P<memory>\d+) MB"
    r"\s+Max Memory Used: (?P<used>\d+) MB(?:\s+Init Duration: (?P<init>\d+(?:\.\d+)?) ms)?"
    r"(?:\s+CPU Wait: (?P<wait>\d+(?:\.\d+)?) ms)?"
)


def parse_report(line: str) -> Report | None:
    """The ``Report`` of a REPORT log line (ours, or one from CloudWatch), None for any other line."""
    match = _REPORT.search(line)
    if match is None:
        return None
    init, wait = match["init"], match["wait"]
    return Report(
        match["id"],
        float(match["duration"]),
        int(match["billed"]),
        int(match["memory"]),
        int(match["used"]),
        float(init) if init is not None else None,
        float(wait) if wait is not None else None,
    )


def peak_rss_mb() -> int:
    """This process's peak resident set so far, in MB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def print_report(report: Report) -> None:
    """Where Lambda's runtime writes it: the function's log stream (here, the worker's stdout)."""
    print(report.line(), file=sys.stdout, flush=True)


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


def sqs_event(
    messages: Sequence[MessageTypeDef], queue_arn: str, region: str = "us-east-1"
) -> dict[str, Any]:
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


# With the queue's visibility timeout given, a poller holds what it receives only this long past
# its batching window, until it hands the batch to the handler (see deliver_once).
POLLER_HOLD_SECONDS = 10


def deliver_once(
    sqs: SQSClient,
    queue_url: str,
    queue_arn: str,
    handler: Handler,
    *,
    function_name: str,
    batch_size: int = 10,
    wait_seconds: int = 0,
    window_seconds: float = 0.0,
    timeout_seconds: float = 900.0,
    memory_mb: int = 1024,
    visibility_seconds: int = 0,
    report: Callable[[Report], None] = print_report,
    gate: CpuGate | None = None,
) -> int:
    """One poll of the mapping: receive up to ``batch_size``, invoke, delete what succeeded.

    Messages reported in ``batchItemFailures`` are left alone: they come back after the
    visibility timeout, and after ``maxReceiveCount`` deliveries the redrive policy moves
    them to the dead-letter queue, as on AWS. Every invocation, failed or not, ends with
    one ``report`` (by default Lambda's REPORT line on stdout): the handler's duration, the
    billed duration, ``memory_mb`` as configured and the process's peak RSS. Returns how
    many messages were delivered. ``gate``: the worker's CPU slots (cpu_slots.py), held
    for the invocation: waited for before its clock starts, and what it waits for them later is
    not billed (the REPORT line's ``CPU Wait``).

    ``visibility_seconds`` (the queue's visibility timeout; 0: none given): the messages are
    received hidden only for the batching window + POLLER_HOLD_SECONDS, and given the queue's
    visibility when the batch goes to the handler. On AWS the mapping's poller is not the
    function: a function that dies never takes a batch it had not begun with it. Here the poller
    lives in the worker process, and a worker killed while it waits for its batching window (or
    in a long poll the server answers after) would otherwise hide those messages for the whole
    visibility timeout.
    """
    # The VisibilityTimeout to receive with; -1: the queue's (no such value is ever sent).
    hold = math.ceil(window_seconds) + POLLER_HOLD_SECONDS if visibility_seconds else -1
    messages: list[MessageTypeDef] = []
    window_ends = 0.0
    while len(messages) < batch_size:
        count, wait = min(10, batch_size - len(messages)), wait_seconds if not messages else 0
        got = _receive(sqs, queue_url, count, wait, hold)
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
    if visibility_seconds:
        _hand_over(sqs, queue_url, messages, visibility_seconds)
    with (gate or UNGATED).computing():
        context = LocalContext(function_name, timeout_seconds=timeout_seconds, memory_limit_in_mb=memory_mb)
        event = sqs_event(messages, queue_arn)
        waited = gate.waited_seconds() if gate is not None else 0.0
        started = time.perf_counter()
        try:
            response = handler(event, context)
        except Exception:
            # A function error fails the whole batch: every message comes back, as on AWS.
            logging.getLogger(__name__).exception(
                "%s failed; %d messages will be redelivered", function_name, len(messages)
            )
            return len(messages)
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            wait_ms = None if gate is None else (gate.waited_seconds() - waited) * 1000
            report(Report.measured(context.aws_request_id, duration_ms, memory_mb, peak_rss_mb(), wait_ms))
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


def _receive(
    sqs: SQSClient, queue_url: str, count: int, wait_seconds: int, hidden: int
) -> list[MessageTypeDef]:
    if hidden < 0:
        response = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"],
        )
    else:
        response = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"],
            VisibilityTimeout=hidden,
        )
    return response.get("Messages", [])


def _hand_over(sqs: SQSClient, queue_url: str, messages: Sequence[MessageTypeDef], seconds: int) -> None:
    """The batch's messages hidden for the queue's visibility timeout from now: the invocation's.
    One that cannot be (shown and taken by another poller meanwhile) is delivered all the same,
    as a duplicate delivery, which the handlers take in their stride."""
    for start in range(0, len(messages), 10):
        entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": seconds}
            for i, m in enumerate(messages[start : start + 10])
        ]
        failed = sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries).get("Failed", [])
        if failed:
            logging.getLogger(__name__).warning("%d messages could not be handed over", len(failed))


def load_handler(path: str) -> Handler:
    """``package.module.function`` -> the function."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
