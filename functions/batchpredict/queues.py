"""SQS adapter: SendMessageBatch in tens, with the ``Failed`` entries re-sent, then raised."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

SEND_BATCH_LIMIT = 10  # entries per SendMessageBatch call (AWS limit)
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
        """Send every body (in calls of 10); returns how many were sent."""
        sent = 0
        batch: list[str] = []
        for body in bodies:
            batch.append(body)
            if len(batch) == SEND_BATCH_LIMIT:
                sent += self._send_ten(batch)
                batch = []
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
            self._sleep(min(0.1 * 2**attempt, 2.0))
        raise QueueSendError(f"{len(pending)} messages still failing after {SEND_ATTEMPTS} attempts")
