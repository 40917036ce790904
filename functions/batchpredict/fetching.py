"""One image's bytes, with its retries: transient failures are tried again inside the
image's one deadline (``fetch.Fetcher`` bounds each attempt by what is left of it), after the
pipeline's one backoff (``throttling.Backoff``).

With a host limiter (hostlimiter.py) every retry waits for its host's turn too, each answer's
latency is reported, and a refusal (429/503) is reported and returned at once: the line is
deferred by its run (pipeline.py), not retried against a host that asked us to slow down.
Without one (the CLI's ``predict``), a refusal is retried after its Retry-After if that fits
the deadline."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from batchpredict.errors import PredictionError, RefusedError
from batchpredict.fetch import Fetcher, FetchPolicy
from batchpredict.hostlimiter import HostLimiter
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
        limiter: HostLimiter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.fetcher = fetcher
        self.policy = policy
        self.total_timeout = total_timeout
        self.limiter = limiter
        self._sleep = sleep
        self._clock = clock
        self._wall = wall
        self._backoff = Backoff(sleep=sleep, clock=clock, base=policy.backoff_seconds, cap=math.inf)

    def fetch(
        self,
        url: str,
        run_deadline: float | None = None,
        job_rps: float | None = None,
        *,
        robots: bool = True,
    ) -> FetchResult:
        """The first attempt goes at once (its run waited for the host's turn: pipeline.py);
        ``job_rps``: the job's own host-rps, for the retries' turns. ``robots``: honour what the
        host asks (``Fetcher.fetch``); False for the user's own hosts."""
        started = self._clock()
        deadline = started + self.total_timeout
        if run_deadline is not None:
            deadline = min(deadline, run_deadline)
        attempt = 0
        while True:
            attempt += 1
            sent = self._clock()
            try:
                payload: bytes | PredictionError = self.fetcher.fetch(
                    url, deadline=deadline, robots=robots
                ).data
            except PredictionError as exc:
                payload = exc
            if self.limiter is not None:
                if isinstance(payload, RefusedError):
                    self.limiter.refused(url, payload.retry_after)
                    break  # deferred by the run
                self.limiter.answered(url, self._clock() - sent)
            if isinstance(payload, bytes) or not payload.transient or attempt >= self.policy.attempts:
                break
            if not self._pause(url, payload, attempt, deadline, job_rps):
                break  # no time left for another attempt: the last error stands
        return FetchResult(payload, (self._clock() - started) * 1000)

    def _pause(
        self, url: str, error: PredictionError, attempt: int, deadline: float, job_rps: float | None
    ) -> bool:
        """Wait before the next attempt: the backoff, a refusal's Retry-After, the host's turn."""
        if isinstance(error, RefusedError) and error.retry_after:
            if self._clock() + error.retry_after > deadline:
                return False
            self._sleep(error.retry_after)
        elif not self._backoff.pause(attempt - 1, deadline):
            return False
        if self.limiter is None:
            return True
        horizon = self._wall() + (deadline - self._clock())
        turn = self.limiter.turn(url, job_rps, horizon)
        if turn.defer_until is not None or turn.refusing:
            return False
        self._sleep(max(turn.at - self._wall(), 0.0))
        return True

    def close(self) -> None:
        self.fetcher.close()
