"""One image's bytes, with its retries: transient failures are tried again inside the
image's one deadline (``fetch.Fetcher`` bounds each attempt by what is left of it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from batchpredict.errors import PredictionError
from batchpredict.fetch import Fetcher, FetchPolicy


@dataclass(frozen=True)
class FetchResult:
    payload: bytes | PredictionError
    fetch_ms: float  # every attempt and pause included


class ImageFetcher:
    """Fetch one URL, retrying transient failures with doubling pauses, all by one deadline.

    The image's deadline starts when its first attempt starts (not while it queues) and is
    ``total_timeout`` (FETCH_TOTAL_TIMEOUT) later, cut short by ``run_deadline``.
    """

    def __init__(
        self,
        fetcher: Fetcher,
        policy: FetchPolicy,
        total_timeout: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetcher = fetcher
        self.policy = policy
        self.total_timeout = total_timeout
        self._sleep = sleep
        self._clock = clock

    def fetch(self, url: str, run_deadline: float | None = None) -> FetchResult:
        started = self._clock()
        deadline = started + self.total_timeout
        if run_deadline is not None:
            deadline = min(deadline, run_deadline)
        attempt = 0
        while True:
            attempt += 1
            try:
                payload: bytes | PredictionError = self.fetcher.fetch(url, deadline=deadline).data
            except PredictionError as exc:
                payload = exc
            if isinstance(payload, bytes) or not payload.transient or attempt >= self.policy.attempts:
                break
            pause = self.policy.backoff_seconds * 2 ** (attempt - 1)
            if self._clock() + pause >= deadline:
                break  # no time left for another attempt: the last error stands
            self._sleep(pause)
        return FetchResult(payload, (self._clock() - started) * 1000)

    def close(self) -> None:
        self.fetcher.close()
