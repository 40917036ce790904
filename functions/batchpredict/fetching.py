"""One image's bytes, with its retries: transient failures are tried again inside the
image's one deadline (``fetch.Fetcher`` bounds each attempt by what is left of it), after the
pipeline's one backoff (``throttling.Backoff``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from batchpredict.errors import PredictionError
from batchpredict.fetch import Fetcher, FetchPolicy
from batchpredict.throttling import Backoff


@dataclass(frozen=True)
class FetchResult:
    payload: bytes | PredictionError
    fetch_ms: float  # every attempt and pause included


class ImageFetcher:
    """Fetch one URL, retrying transient failures with doubling, jittered pauses (from
    ``policy.backoff_seconds``), up to ``policy.attempts`` tries, all by one deadline.

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
        self._clock = clock
        self._backoff = Backoff(sleep=sleep, clock=clock, base=policy.backoff_seconds, cap=math.inf)

    def fetch(self, url: str, run_deadline: float | None = None, *, robots: bool = True) -> FetchResult:
        """``robots``: honour what the host asks (``Fetcher.fetch``); False for the user's own hosts."""
        started = self._clock()
        deadline = started + self.total_timeout
        if run_deadline is not None:
            deadline = min(deadline, run_deadline)
        attempt = 0
        while True:
            attempt += 1
            try:
                payload: bytes | PredictionError = self.fetcher.fetch(
                    url, deadline=deadline, robots=robots
                ).data
            except PredictionError as exc:
                payload = exc
            if isinstance(payload, bytes) or not payload.transient or attempt >= self.policy.attempts:
                break
            if not self._backoff.pause(attempt - 1, deadline):
                break  # no time left for another attempt: the last error stands
        return FetchResult(payload, (self._clock() - started) * 1000)

    def close(self) -> None:
        self.fetcher.close()
