"""Per-host politeness: the rules, as pure functions of a host's shared state.

A *host* is the URL's exact host and port (``host_key``), not its registrable domain: servers
and CDNs enforce their limits per host name, and grouping by registrable domain would need the
Public Suffix List (data that goes stale) and would lump unrelated tenants of shared domains
(``*.cloudfront.net``, ``*.s3.amazonaws.com``, ``*.github.io``) under one limit.

Each host has one shared ``HostState`` (one DynamoDB item, hostlimiter.py) that every invocation
of every job reads and writes:

* **rate, by a shared timeline** (GCRA, the generic cell-rate algorithm): ``tat`` is the next
  free instant. A lease of ``k`` requests takes ``[max(tat, now), +k/rate)`` and the holder
  spaces its requests evenly in it, so the fleet's requests to a host never exceed its rate,
  however many invocations send them. A lease is at most ``lease_seconds`` of the host's time.
* **concurrency, by Little's law**: requests in flight = rate x latency, so the rate used is
  capped at ``concurrency / latency`` (latency: a moving average of the host's answers).
* **learning**: a refusal (429, 503) cuts the rate to ``CUT_FACTOR`` of itself (once per
  ``CUT_INTERVAL_SECONDS``), remembers the rate refused as the host's ``ceiling``, and honours
  ``Retry-After`` by pausing the host's timeline. While demand waits on the timeline and nothing
  was refused for ``GROW_INTERVAL_SECONDS``, the rate grows: fast until the first refusal, then
  back up to ``SAFE_SHARE`` of the ceiling, and past it only as a slow probe once nothing was
  refused for ``PROBE_AFTER_SECONDS``. So a host is served just under the rate it refused, not in
  a saw-tooth through its limit.
* **a refusing host**: ``breaker_refusals`` refusals in a row over at least
  ``breaker_seconds``, and no success reported since, mark the host as refusing: its lines then
  end ``rate_limited`` at once instead of waiting out their budget, but for one probe request
  every ``breaker_seconds`` (hostlimiter.py), whose success ends it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

# A refusal multiplies the rate by this; at most once an interval, so that one overshoot's
# burst of 429s (every request in flight) counts as one signal.
CUT_FACTOR = 0.7
CUT_INTERVAL_SECONDS = 2.0
# Growth while the timeline is the bottleneck: x GROW_FAST until the host first refuses, then
# x GROW_SLOW, each at most once an interval (after a cut, the rate stays below the limit found).
GROW_INTERVAL_SECONDS = 3.0
GROW_FAST = 1.5
GROW_BACK = 1.1  # after a cut, towards SAFE_SHARE of the ceiling
GROW_SLOW = 1.05  # past it: a probe
SAFE_SHARE = 0.85
PROBE_AFTER_SECONDS = 60.0
# Cuts this close after the last one are one episode (the fleet's turns granted before the first
# cut still going out): the ceiling stays the rate the episode began at.
EPISODE_SECONDS = 10.0
# A latency sample's weight in the host's moving average.
LATENCY_WEIGHT = 0.2
# Leases a second a host's item takes at most, whatever its rate: a lease at a rate above this
# is at least rate / MAX_LEASES_PER_SECOND requests (some may go unused), so with the conflicts'
# retries (hostlimiter.WRITE_TRIES) no host's item nears DynamoDB's 1,000 WCU/s per key.
MAX_LEASES_PER_SECOND = 100
# Retry-After past this is taken as this (a deferral then comes back and asks again).
MAX_RETRY_AFTER_SECONDS = 900.0

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class HostPolicy:
    """The politeness settings (config.host_policy): defaults for every host."""

    rps: float = 10.0  # HOST_RPS: a host's starting rate, fleet-wide
    max_rps: float = 100.0  # HOST_MAX_RPS: learning never goes above
    min_rps: float = 0.2  # cuts never go below (one request in 5 s)
    concurrency: int = 8  # HOST_CONCURRENCY: requests in flight at a host, fleet-wide
    lease_seconds: float = 1.0  # a lease takes at most this much of a host's timeline
    max_wait_seconds: float = 20.0  # HOST_MAX_WAIT_SECONDS: a line waits this long in its run
    defer_budget_seconds: float = 3600.0  # DEFER_BUDGET_SECONDS: a line's deferrals, in all
    refusals: int = 5  # RATE_LIMIT_REFUSALS: a line's own 429/503s before it fails
    breaker_refusals: int = 8
    breaker_seconds: float = 15.0


@dataclass(frozen=True)
class HostState:
    """One host's shared state; times are epoch seconds."""

    rate: float
    tat: float = 0.0  # the timeline's next free instant
    paused_until: float = 0.0  # Retry-After
    cut_at: float = 0.0  # last cut (0: never refused)
    ceiling: float = 0.0  # the rate last refused (0: none)
    grown_at: float = 0.0
    latency: float = 0.0  # moving average of answer times (0: none yet)
    refused_run: int = 0  # refusals in a row, fleet-wide
    refused_since: float = 0.0  # the first of them
    refused_at: float = 0.0  # the last of them
    probed_at: float = 0.0  # the last probe of a refusing host
    version: int = 0


@dataclass(frozen=True)
class Lease:
    """``count`` requests at ``start``, ``start + interval``, ..."""

    start: float
    interval: float
    count: int

    def slots(self) -> list[float]:
        return [self.start + i * self.interval for i in range(self.count)]


def host_key(url: str) -> str | None:
    """``host`` or ``host:port`` (a port other than the scheme's default), lower-case; None for
    URLs not fetched over HTTP (s3://: AWS's own scale, not a third party's server)."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    host = host.rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    return host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"


def new_state(policy: HostPolicy) -> HostState:
    return HostState(rate=policy.rps)


def usable_rate(state: HostState, policy: HostPolicy, job_rps: float | None) -> float:
    """The rate a lease is spaced at: the learned rate, the job's own limit, and what the
    concurrency limit allows at the host's latency."""
    rate = min(state.rate, job_rps or math.inf)
    if state.latency > 0:
        rate = min(rate, policy.concurrency / state.latency)
    return max(rate, policy.min_rps)


def next_start(state: HostState, now: float) -> float:
    return max(state.tat, state.paused_until, now)


def lease(
    state: HostState, policy: HostPolicy, now: float, want: int, job_rps: float | None = None
) -> tuple[HostState, Lease]:
    """Take up to ``want`` requests (at least one) from the timeline; grows the rate when the
    timeline is the bottleneck."""
    rate = usable_rate(state, policy, job_rps)
    start = next_start(state, now)
    least = max(1, math.ceil(rate / MAX_LEASES_PER_SECOND))
    count = max(least, min(want, math.floor(rate * policy.lease_seconds)))
    grown = _grown(state, policy, now)
    return replace(grown, tat=start + count / rate), Lease(start, 1.0 / rate, count)


def _grown(state: HostState, policy: HostPolicy, now: float) -> HostState:
    queued = state.tat > now  # demand is waiting on the timeline: the rate is what limits
    quiet = now - max(state.cut_at, state.grown_at) >= GROW_INTERVAL_SECONDS
    if not (queued and quiet) or state.rate >= policy.max_rps:
        return state
    if state.latency > 0 and state.rate >= policy.concurrency / state.latency:
        return state  # concurrency is what limits: more rate would only queue at the host
    if not state.ceiling:
        rate = state.rate * GROW_FAST
    elif state.rate < SAFE_SHARE * state.ceiling:
        rate = min(state.rate * GROW_BACK, SAFE_SHARE * state.ceiling)
    elif now - state.cut_at >= PROBE_AFTER_SECONDS:
        rate = state.rate * GROW_SLOW
    else:
        return state
    return replace(state, rate=min(policy.max_rps, rate), grown_at=now)


def refused(state: HostState, policy: HostPolicy, now: float, retry_after: float | None) -> HostState:
    """A 429 or 503: cut the rate (once an interval), pause for ``retry_after``."""
    if now - state.cut_at >= CUT_INTERVAL_SECONDS:
        cut = max(policy.min_rps, state.rate * CUT_FACTOR)
        episode = state.cut_at and now - state.cut_at < EPISODE_SECONDS
        ceiling = max(state.ceiling, state.rate) if episode else state.rate
        state = replace(state, rate=cut, cut_at=now, ceiling=ceiling)
    paused = max(state.paused_until, now + retry_after) if retry_after else state.paused_until
    since = state.refused_since if state.refused_run else now
    return replace(
        state,
        paused_until=paused,
        tat=max(state.tat, paused),
        refused_run=state.refused_run + 1,
        refused_since=since,
        refused_at=now,
    )


def reported(state: HostState, successes: int, latency: float | None) -> HostState:
    """What an invocation saw since its last report: answers (a success ends a refusal run)
    and their mean latency."""
    if latency is not None and latency > 0:
        mixed = (
            latency if not state.latency else (1 - LATENCY_WEIGHT) * state.latency + LATENCY_WEIGHT * latency
        )
        state = replace(state, latency=mixed)
    if successes:
        state = replace(state, refused_run=0, refused_since=0.0)
    return state


def refusing(state: HostState, policy: HostPolicy, now: float) -> bool:
    """The host has refused every request for a while, and none since: give up on its lines."""
    return (
        state.refused_run >= policy.breaker_refusals
        and state.refused_at - state.refused_since >= policy.breaker_seconds
    )


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` in seconds from ``now`` (epoch): delta-seconds or an HTTP date; None if
    absent or unreadable; at most ``MAX_RETRY_AFTER_SECONDS``, a date in the past is 0."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        seconds = float(int(text))
    else:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:  # RFC 9110 dates are GMT
            return None
        seconds = moment.timestamp() - now
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)
