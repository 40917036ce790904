"""SQS adapter: SendMessageBatch in tens and under the payload cap; ``Failed`` entries re-sent
with the pipeline's one backoff (``throttling.Backoff``) until the call's deadline. A consumer
that takes messages itself (predict's refill) receives and deletes them here, and one that keeps
messages hidden while it works on them (predict's heartbeat) changes their visibility here."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

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

    def send(self, body: str, delay_seconds: int = 0) -> None:
        self.client.send_message(QueueUrl=self.url, MessageBody=body, DelaySeconds=delay_seconds)

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

    def send_batch(self, bodies: Iterable[str]) -> int:
        """Send every body, in calls of at most 10 entries and SEND_BATCH_MAX_BYTES; returns the count."""
        sent = 0
        batch: list[str] = []
        size = 0
        for body in bodies:
            length = len(body.encode())
            if batch and (len(batch) == SEND_BATCH_LIMIT or size + length > SEND_BATCH_MAX_BYTES):
                sent += self._send_ten(batch)
                batch, size = [], 0
            batch.append(body)
            size += length
        if batch:
            sent += self._send_ten(batch)
        return sent

    def _send_ten(self, bodies: list[str]) -> int:
        entries: list[SendMessageBatchRequestEntryTypeDef] = [
            {"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)
        ]
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
