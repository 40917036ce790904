"""SQS adapter: SendMessageBatch in tens and under the payload cap; ``Failed`` entries re-sent
with the pipeline's one backoff (``throttling.Backoff``) until the call's deadline. A consumer
that takes messages itself (predict's refill) receives and deletes them here, and one that keeps
messages hidden while it works on them (predict's heartbeat) changes their visibility here.

Fair queues: every message sent to the work queue carries ``group_id`` (its MessageGroupId) = the
job's id. On a *standard* queue a MessageGroupId turns on Amazon SQS fair queues (July 2025): SQS
names the tenant (here the job) with the most messages in flight a noisy neighbour and delivers the
other tenants' messages first, so a small job's chunks do not wait behind a large job's backlog.
It keeps the standard queue's semantics (at-least-once, no ordering, messages of one group
processed in parallel; nothing of FIFO's one-at-a-time per group) and needs no change in the
consumers. AWS: "Amazon SQS fair queues" and "How Amazon SQS fair queues work" in the SQS
Developer Guide (docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/
sqs-fair-queues.html, sqs-fair-queues-detailed.html), and SendMessage's MessageGroupId in the API
reference. The local stack's SQS emulates the order (local/sqs_depth.py)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from batchpredict.observability import logger
from batchpredict.throttling import Backoff, UnprocessedError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        ChangeMessageVisibilityBatchResultTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
        DeleteMessageBatchResultTypeDef,
        SendMessageBatchRequestEntryTypeDef,
        SendMessageBatchResultTypeDef,
    )

# A batch call's entries and its response: SendMessageBatch's, DeleteMessageBatch's or
# ChangeMessageVisibilityBatch's.
Entry = TypeVar(
    "Entry",
    "SendMessageBatchRequestEntryTypeDef",
    "DeleteMessageBatchRequestEntryTypeDef",
    "ChangeMessageVisibilityBatchRequestEntryTypeDef",
)
BatchResult = TypeVar(
    "BatchResult",
    "SendMessageBatchResultTypeDef",
    "DeleteMessageBatchResultTypeDef",
    "ChangeMessageVisibilityBatchResultTypeDef",
)

SEND_BATCH_LIMIT = 10  # entries per SendMessageBatch call (AWS limit)
BEATS_PER_STEP = 3  # a heartbeat every third of its step: two may fail before a message shows
STOP_WAIT_SECONDS = 2.0  # how long Heartbeat.stop waits for a beat under way
# A beat never hides a message longer than the invocation's remaining time + this: a message
# whose invocation ended without deleting it is visible again right after.
VISIBILITY_MARGIN_SECONDS = 1.0
# Total body bytes per call: SQS caps a batch's payload (256 KiB before 2025-08, 1 MiB since);
# the lower figure holds everywhere, moto and older regions included.
SEND_BATCH_MAX_BYTES = 256 * 1024


class QueueSendError(RuntimeError):
    """SQS refused messages (the sender's fault), or some still failed at the deadline.
    ``refused``: the ids of the entries SQS refused (for a visibility change, the indices of
    their receipt handles in the call's list), empty when none was refused."""

    def __init__(self, message: str, refused: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.refused = tuple(refused)


@dataclass(frozen=True)
class Received:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1  # ApproximateReceiveCount: this receive included


class Queue:
    def __init__(
        self,
        client: SQSClient,
        url: str,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.url = url
        self.backoff = Backoff(sleep=sleep, clock=monotonic)
        self._visibility: int | None = None

    def visibility_timeout(self) -> int | None:
        """The queue's own VisibilityTimeout (GetQueueAttributes, read once per process); None if
        it cannot be read."""
        if self._visibility is None:
            try:
                attributes = self.client.get_queue_attributes(
                    QueueUrl=self.url, AttributeNames=["VisibilityTimeout"]
                )["Attributes"]
                self._visibility = int(attributes["VisibilityTimeout"])
            except Exception as exc:
                logger.warning("the queue's visibility timeout is unknown", extra={"error": repr(exc)[:200]})
                return None
        return self._visibility

    def send(self, body: str, delay_seconds: int = 0, *, group_id: str | None = None) -> None:
        """One message; ``group_id``: its MessageGroupId (the job's id on the work queue: see the
        module's doc on fair queues), None for none."""
        if group_id is None:
            self.client.send_message(QueueUrl=self.url, MessageBody=body, DelaySeconds=delay_seconds)
        else:
            self.client.send_message(
                QueueUrl=self.url, MessageBody=body, DelaySeconds=delay_seconds, MessageGroupId=group_id
            )

    def receive(self, max_messages: int, visibility_seconds: int) -> list[Received]:
        """What is there now (no long poll), hidden from other consumers for ``visibility_seconds``."""
        response = self.client.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=max(1, min(max_messages, SEND_BATCH_LIMIT)),
            VisibilityTimeout=visibility_seconds,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return [
            Received(
                m["MessageId"],
                m["ReceiptHandle"],
                m["Body"],
                int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
            )
            for m in response.get("Messages", [])
        ]

    def change_visibility(
        self, receipt_handles: Sequence[str], seconds: int, deadline: float | None = None
    ) -> None:
        """Hide these messages for ``seconds`` from now (0: visible at once), by
        ChangeMessageVisibilityBatch in tens. Entries it fails are sent again until ``deadline``
        (None: the backoff's default budget); those it refuses (an expired or deleted message's
        receipt handle) are raised together, in one QueueSendError naming their indices in
        ``receipt_handles``, after every ten was sent."""
        refused: list[str] = []
        for start in range(0, len(receipt_handles), SEND_BATCH_LIMIT):
            batch = receipt_handles[start : start + SEND_BATCH_LIMIT]
            entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
                {"Id": str(start + i), "ReceiptHandle": handle, "VisibilityTimeout": seconds}
                for i, handle in enumerate(batch)
            ]
            try:
                self.backoff.until_processed(
                    self._change_entries, entries, self._failed_entries(entries), deadline
                )
            except QueueSendError as exc:
                refused += exc.refused
        if refused:
            raise QueueSendError(f"SQS refused {len(refused)} visibility changes", refused)

    def _change_entries(
        self, entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef]
    ) -> ChangeMessageVisibilityBatchResultTypeDef:
        return self.client.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)

    def delete(self, receipt_handles: Sequence[str], deadline: float | None = None) -> None:
        """DeleteMessageBatch in tens; entries it fails are sent again until ``deadline`` (None:
        the backoff's default budget), but one the caller caused (an invalid receipt handle) is
        raised."""
        for start in range(0, len(receipt_handles), SEND_BATCH_LIMIT):
            batch = receipt_handles[start : start + SEND_BATCH_LIMIT]
            entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": handle} for i, handle in enumerate(batch)
            ]
            self.backoff.until_processed(
                self._delete_entries, entries, self._failed_entries(entries), deadline
            )

    def _delete_entries(
        self, entries: list[DeleteMessageBatchRequestEntryTypeDef]
    ) -> DeleteMessageBatchResultTypeDef:
        return self.client.delete_message_batch(QueueUrl=self.url, Entries=entries)

    def send_batch(self, bodies: Iterable[str], *, group_id: str | None = None) -> int:
        """Send every body, in calls of at most 10 entries and SEND_BATCH_MAX_BYTES; returns the
        count. ``group_id``: every message's MessageGroupId (see ``send``), None for none."""
        sent = 0
        batch: list[str] = []
        size = 0
        for body in bodies:
            length = len(body.encode())
            if batch and (len(batch) == SEND_BATCH_LIMIT or size + length > SEND_BATCH_MAX_BYTES):
                sent += self._send_ten(batch, group_id)
                batch, size = [], 0
            batch.append(body)
            size += length
        if batch:
            sent += self._send_ten(batch, group_id)
        return sent

    def _send_ten(self, bodies: list[str], group_id: str | None) -> int:
        entries: list[SendMessageBatchRequestEntryTypeDef] = [
            {"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)
        ]
        if group_id is not None:
            for entry in entries:
                entry["MessageGroupId"] = group_id
        try:
            self.backoff.until_processed(self._send_entries, entries, self._failed_entries(entries))
        except UnprocessedError as exc:
            raise QueueSendError(f"SQS kept failing messages: {exc}") from exc
        return len(bodies)

    def _send_entries(
        self, entries: list[SendMessageBatchRequestEntryTypeDef]
    ) -> SendMessageBatchResultTypeDef:
        return self.client.send_message_batch(QueueUrl=self.url, Entries=entries)

    @staticmethod
    def _failed_entries(entries: list[Entry]) -> Callable[[BatchResult], list[Entry]]:
        """A batch response's Failed entries, to send again; one the sender caused (too long, bad
        attribute, invalid receipt handle) will fail however often it is sent, and is raised."""
        by_id = {entry["Id"]: entry for entry in entries}

        def failed(response: BatchResult) -> list[Entry]:
            failures = response.get("Failed", [])
            permanent = [f for f in failures if f.get("SenderFault")]
            if permanent:
                raise QueueSendError(
                    f"SQS refused {len(permanent)} entries: {permanent[0].get('Message')}",
                    [f["Id"] for f in permanent],
                )
            return [by_id[f["Id"]] for f in failures]

        return failed


class Heartbeat:
    """Keeps an invocation's messages hidden from other consumers while it works on them (predict's
    event and refilled chunks, finalize's message), so that a crashed invocation's messages come
    back within ``step``, however long the queue's visibility timeout.

    Each beat sets the visibility of every message kept to ``visibility()`` seconds from now:
    ``step``, or the invocation's remaining time + VISIBILITY_MARGIN_SECONDS if that is less;
    a beat every ``step / BEATS_PER_STEP``. The step is never longer than the queue's own
    visibility timeout: a heartbeat only ever brings a crashed invocation's messages back
    sooner. A beat that fails is logged (the messages keep the visibility they had); a receipt
    handle SQS refuses (the message was deleted, or taken by another delivery after it showed)
    is dropped.
    """

    def __init__(self, queue: Queue, step: float, remaining: Callable[[], float]) -> None:
        self.queue = queue
        own = queue.visibility_timeout()
        self.step = min(step, own) if own else step
        self._remaining = remaining
        self._handles: dict[str, str] = {}  # message id -> receipt handle
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    def visibility(self) -> int:
        return max(1, math.ceil(min(self.step, self._remaining() + VISIBILITY_MARGIN_SECONDS)))

    def keep(self, handles: Mapping[str, str]) -> None:
        """Keep these messages (id -> receipt handle) hidden too. The first call beats at once (the
        messages' visibility is the heartbeat's before it returns) and starts the beats."""
        with self._lock:
            self._handles.update({m: h for m, h in handles.items() if h})
            if self._thread is not None or not self._handles:
                return
            self._thread = threading.Thread(target=self._beat_until_stopped, name="heartbeat", daemon=True)
        self.beat(time.monotonic() + self.step / BEATS_PER_STEP)
        self._thread.start()

    def release(self, message_ids: Iterable[str]) -> None:
        with self._lock:
            for message_id in message_ids:
                self._handles.pop(message_id, None)

    def stop(self) -> None:
        """No beat starts after this; one under way is waited for STOP_WAIT_SECONDS at most (an
        SQS call that hangs must not hold the invocation past its end)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_SECONDS)

    def retry_later(self, seconds: int | None = None) -> None:
        """After a failure (the beats stopped): the messages kept are hidden ``seconds`` (None:
        the queue's own visibility timeout), as long as a failed delivery waits without a
        heartbeat, so that a stage that is down is not retried into the dead-letter queue in
        minutes. Errors are logged: the messages then come back when the last beat's visibility
        ends."""
        with self._lock:
            handles = list(self._handles.values())
        hidden = seconds if seconds is not None else self.queue.visibility_timeout()
        if not handles or hidden is None:
            return
        try:
            self.queue.change_visibility(handles, hidden, time.monotonic() + self.step / BEATS_PER_STEP)
        except Exception:
            logger.exception("hiding failed messages failed", extra={"messages": len(handles)})

    def _beat_until_stopped(self) -> None:
        period = self.step / BEATS_PER_STEP
        while not self._stop.wait(period):
            self.beat(time.monotonic() + period)

    def beat(self, deadline: float) -> None:
        with self._lock:
            kept = list(self._handles.items())
        if not kept:
            return
        try:
            self.queue.change_visibility([h for _, h in kept], self.visibility(), deadline)
            self.beats += 1
        except QueueSendError as exc:
            gone = [kept[int(i)][0] for i in exc.refused]
            logger.warning("heartbeat: SQS refused receipt handles", extra={"messages": gone})
            self.release(gone)
        except Exception:
            logger.exception(
                "heartbeat failed: the messages keep their visibility", extra={"messages": len(kept)}
            )
