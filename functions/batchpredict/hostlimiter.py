"""Per-host politeness at run time: the shared host states in DynamoDB, and each process's
leases of them (the rules are hostlimits.py's).

* ``HostStateStore``: one item a host in the jobs table (``pk = HOST#{host}``, ``sk = LIMIT``),
  changed by read, change, conditional put on its version (the rules need ``max`` and
  products, which an UpdateExpression cannot do). A lease is one consistent read and one
  write; a host sees at most ``1 / lease_seconds`` leases a second from a fleet that keeps it
  busy (each takes a second of its timeline), plus one per refusal, so no host's item comes
  near DynamoDB's 1,000 WCU/s a partition key.
* ``HostLimiter``: a process's leases, a host at a time. A request asks for its ``turn``: a
  slot of a lease this process holds, else a new lease sized to the lines of that host the run
  still has (never more than ``lease_seconds`` of the host's time), else a time past the run's
  horizon (the line is deferred). Answers are reported back (latency, successes, refusals).

A store that fails (DynamoDB throttled or down) falls back to a state of the process's own for
that host: politeness then holds per process, and the failure is logged.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from batchpredict import hostlimits
from batchpredict.hostlimits import HostPolicy, HostState
from batchpredict.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

T = TypeVar("T")
HOST_PK_PREFIX = "HOST#"
LIMIT_SK = "LIMIT"
# Conditional puts that lost to another writer are tried again this many times in all.
WRITE_TRIES = 6
# A granted slot this far in the past is dropped rather than used (it would overlap the next
# holder's lease).
STALE_SLOT_SECONDS = 0.25
# A process never sends to one host closer than this share of its lease's spacing: a fetch that
# started late (a busy pool, a loaded CPU) must not go out right beside the next one.
MIN_GAP_SHARE = 0.9
# While a process has lines waiting on turns it was granted, it reads the host's state at most this
# often to learn of a cut made elsewhere: turns granted before it are taken again at the new rate.
RECHECK_SECONDS = 1.0
# A host's item lives this long after its last change.
HOST_TTL_SECONDS = 86_400
_FIELDS = tuple(f for f in HostState.__dataclass_fields__ if f != "version")


@dataclass
class StoreUsage:
    """The store's calls, for the cost of politeness (benchmarks/politeness.py)."""

    reads: int = 0
    writes: int = 0
    conflicts: int = 0


class HostStateStore:
    def __init__(
        self, client: DynamoDBClient, table: str, policy: HostPolicy, wall: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.table = table
        self.policy = policy
        self._wall = wall
        self.usage = StoreUsage()

    def _key(self, host: str) -> dict[str, Any]:
        return {"pk": {"S": HOST_PK_PREFIX + host}, "sk": {"S": LIMIT_SK}}

    def read(self, host: str) -> HostState:
        self.usage.reads += 1
        item = self.client.get_item(TableName=self.table, Key=self._key(host), ConsistentRead=True).get(
            "Item"
        )
        if item is None:
            return hostlimits.new_state(self.policy)
        values = {name: float(item[name]["N"]) for name in _FIELDS if name in item}
        values["refused_run"] = int(values.get("refused_run", 0))
        return HostState(**values, version=int(item["version"]["N"]))  # type: ignore[arg-type]

    def change(self, host: str, change: Callable[[HostState], tuple[HostState | None, T]]) -> T:
        """Apply ``change`` (state -> new state or None for no write, result) atomically."""
        for _ in range(WRITE_TRIES):
            state = self.read(host)
            new, result = change(state)
            if new is None or self._put(host, new, state.version):
                return result
            self.usage.conflicts += 1
        raise RuntimeError(f"the limit of host {host} kept changing under us ({WRITE_TRIES} tries)")

    def _put(self, host: str, state: HostState, version: int) -> bool:
        item = self._key(host) | {name: {"N": repr(float(getattr(state, name)))} for name in _FIELDS}
        item["version"] = {"N": str(version + 1)}
        item["expires_at"] = {"N": str(int(self._wall()) + HOST_TTL_SECONDS)}
        self.usage.writes += 1
        try:
            if version:
                self.client.put_item(
                    TableName=self.table,
                    Item=item,
                    ConditionExpression="version = :v",
                    ExpressionAttributeValues={":v": {"N": str(version)}},
                )
            else:
                self.client.put_item(
                    TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
                )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True


@dataclass(frozen=True)
class Turn:
    """When a request may go: ``at`` (epoch; now or later, within the horizon asked), or
    ``defer_until`` (past the horizon: the line comes back then), or ``refusing``."""

    at: float
    defer_until: float | None = None
    refusing: bool = False
    epoch: int = 0  # the host's epoch in this process when granted (HostLimiter.valid)


@dataclass
class _Host:
    lock: threading.Lock = field(default_factory=threading.Lock)
    slots: dict[float | None, deque[float]] = field(default_factory=dict)  # by the job's host-rps
    successes: int = 0
    latency_sum: float = 0.0
    answers: int = 0
    local: HostState | None = None  # the fallback when the store fails
    gap: float = 0.0  # the spacing of this process's last lease
    last_sent: float = 0.0
    epoch: int = 0  # turns of an older epoch were granted before a cut: taken again
    leased_at: float = 0.0
    checked_at: float = 0.0

    def take_report(self) -> tuple[int, float | None]:
        report = self.successes, (self.latency_sum / self.answers if self.answers else None)
        self.successes, self.latency_sum, self.answers = 0, 0.0, 0
        return report


class HostLimiter:
    """A process's side of per-host politeness; safe to share between threads."""

    def __init__(
        self, store: HostStateStore | None, policy: HostPolicy, wall: Callable[[], float] = time.time
    ) -> None:
        self.store = store  # None: each process keeps its own states (tests, predict_api)
        self.policy = policy
        self._wall = wall
        self._hosts: dict[str, _Host] = {}
        self._lock = threading.Lock()

    def _host(self, key: str) -> _Host:
        with self._lock:
            return self._hosts.setdefault(key, _Host())

    def turn(self, url: str, job_rps: float | None, horizon: float, pending: int = 1) -> Turn:
        """The request's slot: at once for URLs not fetched over HTTP; else a slot held, or one
        of a new lease of up to ``pending`` requests, starting by ``horizon``."""
        key = hostlimits.host_key(url)
        now = self._wall()
        if key is None:
            return Turn(now)
        host = self._host(key)
        with host.lock:
            slots = host.slots.setdefault(job_rps, deque())
            while slots and slots[0] < now - STALE_SLOT_SECONDS:
                slots.popleft()
            if slots:
                return Turn(max(slots.popleft(), now), epoch=host.epoch)
            report = host.take_report()
            got = self._change(key, host, lambda s: self._lease(s, now, horizon, pending, job_rps, report))
            if isinstance(got, Turn):
                return got
            slots.extend(got.slots())
            host.gap, host.leased_at = got.interval, now
            return Turn(max(slots.popleft(), now), epoch=host.epoch)

    def _lease(
        self,
        state: HostState,
        now: float,
        horizon: float,
        pending: int,
        job_rps: float | None,
        report: tuple[int, float | None],
    ) -> tuple[HostState | None, hostlimits.Lease | Turn]:
        state = hostlimits.reported(state, *report)
        if hostlimits.refusing(state, self.policy, now):
            if now - state.probed_at < self.policy.breaker_seconds:
                return None, Turn(now, refusing=True)
            state, pending = replace(state, probed_at=now), 1  # one probe: its success ends it
        start = hostlimits.next_start(state, now)
        if start > max(horizon, now):  # a host free now is always taken
            return None, Turn(start, defer_until=start)
        return hostlimits.lease(state, self.policy, now, max(pending, 1), job_rps)

    def valid(self, url: str, turn: Turn) -> bool:
        """Whether a turn granted earlier still stands: not if the host was cut since (here, or,
        read at most every RECHECK_SECONDS, by another process), so that turns granted at a rate
        the host refused are not all sent anyway."""
        key = hostlimits.host_key(url)
        if key is None:
            return True
        host = self._host(key)
        now = self._wall()
        with host.lock:
            if turn.epoch != host.epoch:
                return False
            if self.store is None or now - host.checked_at < RECHECK_SECONDS:
                return True
            host.checked_at = now
            try:
                cut_at = self.store.read(key).cut_at
            except Exception:  # the turn stands; the next check may read it
                logger.exception("host limit store failed", extra={"host": key})
                return True
            if cut_at <= host.leased_at:
                return True
            host.epoch += 1
            host.slots.clear()
            return False

    def hold(self, url: str) -> float:
        """Seconds to wait before sending to ``url``'s host now, so that this process's requests
        stay at least ``MIN_GAP_SHARE`` of their spacing apart however late each one started."""
        key = hostlimits.host_key(url)
        if key is None:
            return 0.0
        host = self._host(key)
        now = self._wall()
        with host.lock:
            wait = max(0.0, host.last_sent + MIN_GAP_SHARE * host.gap - now)
            host.last_sent = now + wait
        return wait

    def answered(self, url: str, seconds: float) -> None:
        """An answer that was not a refusal (whatever its status): the host is serving us."""
        key = hostlimits.host_key(url)
        if key is None:
            return
        host = self._host(key)
        with host.lock:
            host.successes += 1
            host.latency_sum += seconds
            host.answers += 1

    def refused(self, url: str, retry_after: float | None) -> None:
        """A 429 or 503 (``retry_after``: seconds, parsed): cut and pause the host fleet-wide, and
        drop this process's slots (they were granted at the rate just found too high)."""
        key = hostlimits.host_key(url)
        if key is None:
            return
        host = self._host(key)
        now = self._wall()
        with host.lock:
            host.slots.clear()
            host.epoch += 1
            report = host.take_report()

            def change(state: HostState) -> tuple[HostState, None]:
                state = hostlimits.reported(state, *report)
                return hostlimits.refused(state, self.policy, now, retry_after), None

            self._change(key, host, change)

    def _change(self, key: str, host: _Host, change: Callable[[HostState], tuple[HostState | None, T]]) -> T:
        if self.store is not None:
            try:
                return self.store.change(key, change)
            except Exception:  # politeness then holds per process, until the store answers again
                logger.exception("host limit store failed: this process limits alone", extra={"host": key})
        state = host.local or hostlimits.new_state(self.policy)
        new, result = change(state)
        host.local = new or state
        return result
