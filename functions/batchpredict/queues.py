"""SQS adapter: SendMessageBatch in tens and under the payload cap; ``Failed`` entries re-sent."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

SEND_BATCH_LIMIT = 10  # entries per SendMessageBatch call (AWS limit)
# Total body bytes per call: SQS caps a batch's payload (256 KiB before 2025-08, 1 MiB since);
# the lower figure holds everywhere, moto and older regions included.
SEND_BATCH_MAX_BYTES = 256 * 1024
SEND_ATTEMPTS = 5


class QueueSendError(RuntimeError):
    """Some messages could not be sent after retries."""


class Queue:
    def __init__(self, client: Any, url: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.url = url
        self._sleep = sleep

    def send(self, body: str, delay_seconds: int = 0) -> None:
        self.client.send_message(QueueUrl=self.url, MessageBody=body, DelaySeconds=delay_seconds)

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
        pending = {str(i): body for i, body in enumerate(bodies)}
        for attempt in range(SEND_ATTEMPTS):
            response = self.client.send_message_batch(
                QueueUrl=self.url, Entries=[{"Id": i, "MessageBody": b} for i, b in pending.items()]
            )
            failed = response.get("Failed", [])
            permanent = [f for f in failed if f.get("SenderFault")]
            if permanent:
                raise QueueSendError(f"SQS refused {len(permanent)} messages: {permanent[0].get('Message')}")
            pending = {f["Id"]: pending[f["Id"]] for f in failed}
            if not pending:
                return len(bodies)
            if attempt + 1 < SEND_ATTEMPTS:
                self._sleep(min(0.1 * 2**attempt, 2.0))
        raise QueueSendError(f"{len(pending)} messages still failing after {SEND_ATTEMPTS} attempts")
