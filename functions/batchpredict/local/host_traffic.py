"""What a host saw of a job, from its own request log (polite_hosts.Request): requests, the share
it refused (429 or 503), the rate attempted (the most requests that arrived in any window of a
second, and the mean) and the most requests in flight at once; over the whole log or from a time
on (``since``: e.g. once the job's first minute has passed). And the least time a host's limits
allow for its lines, which no client can beat."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from batchpredict.local.polite_hosts import REFUSAL_STATUSES, HostShape, Request


@dataclass(frozen=True)
class Traffic:
    requests: int
    refused: int  # answered 429 or 503
    max_rate: int  # the most requests that arrived in any window of ``window`` seconds
    mean_rate: float  # requests a second over the period
    max_concurrency: int  # the most requests in flight at once (arrived, not yet answered)
    period: float  # seconds the mean is over
    window: float = 1.0

    @property
    def refused_share(self) -> float:
        return self.refused / self.requests if self.requests else 0.0


def max_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most of ``times`` in any half-open window [t, t + window)."""
    ordered = sorted(times)
    best, first = 0, 0
    for last, at in enumerate(ordered):
        while ordered[first] <= at - window:
            first += 1
        best = max(best, last - first + 1)
    return best


def max_overlap(intervals: Iterable[tuple[float, float]], since: float | None = None) -> int:
    """The most half-open intervals [start, end) open at one moment at or after ``since``."""
    spans = list(intervals)
    if since is None:
        since = min((start for start, _ in spans), default=0.0)
    # Those already open at ``since``, then every later start (an end at the same moment first).
    best = current = sum(1 for start, end in spans if start <= since < end)
    events = sorted(
        [(start, 1) for start, _ in spans if start > since]
        + [(end, -1) for start, end in spans if end > since]
    )
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def traffic(
    requests: Sequence[Request], since: float | None = None, until: float | None = None, window: float = 1.0
) -> Traffic:
    """The log's figures for the requests that arrived in [since, until) (default: all). The mean
    rate is over [since, until], by default from the first arrival to the last, and over at least
    ``window`` (a burst inside one window is that many requests in it). The concurrency also
    counts the requests that arrived before ``since`` and were still in flight after it."""
    chosen = [
        r for r in requests if (since is None or r.arrived >= since) and (until is None or r.arrived < until)
    ]
    arrivals = [r.arrived for r in chosen]
    start = since if since is not None else min(arrivals, default=0.0)
    end = until if until is not None else max(arrivals, default=start)
    period = max(end - start, window)
    before_until = [r for r in requests if until is None or r.arrived < until]
    return Traffic(
        requests=len(chosen),
        refused=sum(r.status in REFUSAL_STATUSES for r in chosen),
        max_rate=max_in_window(arrivals, window),
        mean_rate=len(chosen) / period,
        max_concurrency=max_overlap(((r.arrived, r.ended) for r in before_until), since),
        period=period,
        window=window,
    )


def least_seconds(lines: int, shape: HostShape) -> float | None:
    """The least time ``shape``'s limits allow to serve ``lines`` requests: ``lines / rps``, or
    the concurrency's ``lines x latency / concurrency`` when that is longer (None for a host that
    serves nothing)."""
    if shape.reject_all:
        return None
    rate = lines / shape.rps if shape.rps else 0.0
    slots = lines * shape.latency_ms / 1000 / shape.concurrency if shape.concurrency else 0.0
    return max(rate, slots)


def within(value: float, limit: float, slack: float = 0.10) -> bool:
    """``value`` at most ``limit`` plus ``slack`` of it."""
    return value <= limit * (1 + slack) + 1e-9
