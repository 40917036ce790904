"""Backoff for the DynamoDB throttling botocore's own retries leave to us, bounded by a deadline.

botocore (standard mode, ``aws.RETRIES``) retries a throttled call a few times. It cannot
see inside a cancelled transaction (``TransactionCanceledException`` whose reasons say
``ThrottlingError``, ``ProvisionedThroughputExceeded`` or ``TransactionConflict``), nor the
``UnprocessedItems`` of a BatchWriteItem, and it does not know how long the invocation has
left. ``Backoff`` retries those, and throttling botocore gave up on, until the caller's
deadline: past it the error is raised, and the chunk goes back to its queue with the
invocation's time, instead of being written and counted after its claim has lapsed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

T = TypeVar("T")
R = TypeVar("R")  # a batch call's response

# Error codes of a throttled request (DynamoDB and the generic AWS ones).
THROTTLE_CODES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
    }
)
# Cancellation reasons of a transaction worth sending again. Every transaction here is guarded by
# a condition (a marker that must not exist), so sending one again can never apply it twice.
RETRIED_CANCELLATIONS = frozenset({"ThrottlingError", "ProvisionedThroughputExceeded", "TransactionConflict"})
# Without a caller's deadline (split, finalize, the CLI): how long a call keeps trying.
DEFAULT_BUDGET_SECONDS = 20.0


def cancellation_reasons(exc: ClientError) -> list[str]:
    return [str(r.get("Code")) for r in exc.response.get("CancellationReasons") or []]


def is_retryable(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    if code in THROTTLE_CODES:
        return True
    reasons = set(cancellation_reasons(exc))
    # A failed condition is an answer, not throttling: never retried, whatever else it says.
    return bool(reasons & RETRIED_CANCELLATIONS) and "ConditionalCheckFailed" not in reasons


class UnprocessedError(RuntimeError):
    """A batch call still left requests unprocessed when the deadline came."""


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff (base * 2^attempt, capped), never sleeping past a deadline
    (``clock`` seconds, ``time.monotonic`` by default)."""

    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    base: float = 0.05
    cap: float = 2.0

    def deadline(self, seconds: float = DEFAULT_BUDGET_SECONDS) -> float:
        return self.clock() + seconds

    def pause(self, attempt: int, deadline: float) -> bool:
        """Sleep before retry ``attempt`` (0 first); False, without sleeping, if the sleep would
        end past ``deadline``."""
        delay = random.uniform(0.5, 1.0) * min(self.base * 2**attempt, self.cap)
        if self.clock() + delay > deadline:
            return False
        self.sleep(delay)
        return True

    def call(self, operation: Callable[[], T], deadline: float | None = None) -> T:
        """``operation()``, again after a pause while it is throttled and time is left."""
        until = self.deadline() if deadline is None else deadline
        attempt = 0
        while True:
            try:
                return operation()
            except ClientError as exc:
                if not is_retryable(exc) or not self.pause(attempt, until):
                    raise
            attempt += 1

    def until_processed(
        self,
        send: Callable[[T], R],
        pending: T,
        leftover: Callable[[R], T],
        deadline: float | None = None,
    ) -> list[R]:
        """A batch call (BatchWriteItem, BatchGetItem, SendMessageBatch) sent again with what it
        left unprocessed (``leftover(response)``, empty when all is done) until nothing is left;
        the responses."""
        until = self.deadline() if deadline is None else deadline
        responses = []
        attempt = 0
        while pending:
            response = self.call(partial(send, pending), until)
            responses.append(response)
            pending = leftover(response)
            if pending and not self.pause(attempt, until):
                raise UnprocessedError(f"requests left unprocessed after {attempt + 1} attempts")
            attempt += 1
        return responses


def is_transient(exc: BaseException) -> bool:
    """An AWS call that may well succeed if made again: throttled, a 5xx, or the connection
    failed. Anything else (a 4xx, a bug, bad data) will fail the same way next time."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return is_retryable(exc) or status >= 500
    return isinstance(exc, BotoConnectionError | HTTPClientError)
