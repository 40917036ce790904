"""Deadlines and the sweeper, with a fake clock: the formula (deadlines.py, its settings from the
environment), and which open job the sweeper ends, how, and what it leaves when it loses a race.

The store is an in-memory stand-in with JobStore's conditions (open_jobs by status, expire
conditional on the status read and the deadline being past); the same conditions against
DynamoDB Local and moto: tests/integration/test_jobstore_contract.py, and the race with a real
finalize: tests/integration/test_sweep.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from batchpredict.config import deadline_settings
from batchpredict.deadlines import RETRY_HOLD_FACTOR, DeadlineSettings, epoch, iso, timeout_deadline
from batchpredict.events import JobEvents
from batchpredict.jobs import FINAL_STATUSES, Job, JobStatus
from batchpredict.local.schedules import rate_seconds
from batchpredict.results import ResultStore, summary_key
from batchpredict.sweep import RESERVE_SECONDS, Sweeper, deadline_of
from tests.unit.fakes import FakeEvents, FakeS3

OUT = "out"
CREATED = "2025-01-01T00:00:00.000Z"
T0 = epoch(CREATED)


# --- the formula --------------------------------------------------------------------------------


def test_a_job_may_take_a_split_then_every_wave_at_its_worst_then_finalize() -> None:
    d = DeadlineSettings()
    assert d.splitting(T0) == T0 + 5 * 1800
    # The tail, finalize, and the longest a line may wait for its host (DEFER_BUDGET_SECONDS).
    tail = 7560 + 3000 + 3600
    assert d.run_seconds(0) == tail  # an empty job
    assert d.run_seconds(1) == pytest.approx(1 * 90 * 10 + tail + 0.1)
    assert d.run_seconds(160) == 1 * 90 * 10 + tail + 16  # 8 x 20 chunks in flight at once
    assert d.run_seconds(161) == pytest.approx(2 * 90 * 10 + tail + 16.1)
    # The largest job the splitter takes (1,000,000 lines in chunks of 16): finite, about 4 days.
    assert d.running(T0, 62_500) - T0 == pytest.approx(391 * 900 + tail + 6250, abs=1)
    assert d.fallback(T0, 3) == math.ceil(T0 + 9000 + d.run_seconds(3))
    assert timeout_deadline(T0, 10) == T0 + 10


def test_a_failed_chunk_is_never_held_back_longer_than_the_deadline_allows() -> None:
    # predict holds a failed chunk back a delay growing with its receives (batch.retry_delay, in
    # heartbeat steps); the deadline's retry tail counts RETRY_HOLD_FACTOR predict timeouts a receive.
    from batchpredict.batch import retry_delay
    from batchpredict.config import DEFAULT_HEARTBEAT_SECONDS

    d = DeadlineSettings()
    longest = max(retry_delay(n, DEFAULT_HEARTBEAT_SECONDS) for n in range(1, d.attempts + 1))
    assert longest <= RETRY_HOLD_FACTOR * d.predict_seconds


def test_the_deadline_settings_follow_the_environment() -> None:
    assert deadline_settings({}) == DeadlineSettings()
    env = {
        "WORK_BATCH_SIZE": "3",
        "PREDICT_MAX_CONCURRENCY": "7",
        "DEADLINE_SPLIT_SECONDS": "150",
        "DEADLINE_PREDICT_SECONDS": "5",
        "DEADLINE_ATTEMPTS": "4",
        "DEADLINE_RETRY_SECONDS": "185",
        "DEADLINE_FINALIZE_SECONDS": "150.5",
    }
    assert deadline_settings(env) == DeadlineSettings(150, 5, 4, 21, 185, 150.5)


# --- the sweeper --------------------------------------------------------------------------------


class OpenJobs:
    """JobStore's open_jobs, expire and event mark in memory, with the same conditions.
    ``before_expire``: runs just before an expire is evaluated (another writer, in between)."""

    def __init__(self, *jobs: Job) -> None:
        self.jobs = {job.job_id: job for job in jobs}
        self.deadlines = DeadlineSettings()
        self.before_expire: Callable[[Job], None] = lambda job: None
        self.expires = 0

    def open_jobs(self, status: JobStatus) -> Iterator[Job]:
        yield from [job for job in self.jobs.values() if job.status == status]

    def expire(
        self, job: Job, status: JobStatus, error: str, now: float, deadline: int | None = None
    ) -> Job | None:
        self.before_expire(job)
        self.expires += 1
        current = self.jobs[job.job_id]
        if current.status != job.status:
            return None
        if current.deadline_at is None:
            current = replace(current, deadline_at=deadline)
        elif not current.deadline_at < now:
            return None
        ended = replace(
            current,
            status=status,
            error=error,
            event_due=status.value,
            completed_at=iso(now),
            updated_at=iso(now),
        )
        self.jobs[job.job_id] = ended
        return ended

    def claim_event(self, job_id: str, status: JobStatus) -> bool:
        job = self.jobs[job_id]
        if job.event_due != status.value:
            return False
        self.jobs[job_id] = replace(job, event_due=None)
        return True


def _job(job_id: str, status: JobStatus, deadline: float | None, **fields: Any) -> Job:
    at = int(deadline) if deadline is not None else None
    return Job(
        job_id, status, f"s3://in/manifests/{job_id}.txt", created_at=CREATED, deadline_at=at, **fields
    )


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _sweeper(store: OpenJobs, now: float) -> tuple[Sweeper, FakeS3, FakeEvents, Clock]:
    s3, events, clock = FakeS3(), FakeEvents(), Clock(now)
    sweeper = Sweeper(store, ResultStore(s3, OUT), JobEvents(events, "bus"), now=clock)  # type: ignore[arg-type]
    return sweeper, s3, events, clock


def _summary(s3: FakeS3, job_id: str) -> dict[str, Any]:
    return json.loads(s3.objects[OUT][summary_key(job_id)])  # type: ignore[no-any-return]


def test_only_jobs_past_their_deadline_end_failed_timed_out_with_a_summary_and_one_event() -> None:
    store = OpenJobs(
        _job("job-early", JobStatus.RUNNING, T0 + 100, split_done=True, chunks_total=3),
        _job("job-due", JobStatus.RUNNING, T0 + 60, split_done=True, chunks_total=3, total=40, succeeded=12),
        _job("job-now", JobStatus.SPLITTING, T0 + 60),
    )
    sweeper, s3, events, clock = _sweeper(store, T0 + 60)

    assert sweeper.sweep().ended == []  # a deadline is the last moment the job may still be open
    clock.now = T0 + 61
    report = sweeper.sweep()

    assert sorted(job.job_id for job in report.ended) == ["job-due", "job-now"]
    due = store.jobs["job-due"]
    assert due.status == JobStatus.FAILED and due.error is not None
    assert due.error == (
        "timed_out: still RUNNING at its deadline 2025-01-01T00:01:00Z "
        "(the longest 3 chunks may take on this stack)"
    )
    assert store.jobs["job-now"].error == (
        "timed_out: still SPLITTING at its deadline 2025-01-01T00:01:00Z "
        "(the longest a split may take on this stack)"
    )
    assert store.jobs["job-early"].status == JobStatus.RUNNING
    summary = _summary(s3, "job-due")
    assert (summary["status"], summary["error"], summary["deadline_at"]) == (
        "FAILED",
        due.error,
        iso(T0 + 60),
    )
    assert (summary["total"], summary["succeeded"]) == (40, 12)
    assert sorted((e["job_id"], e["status"]) for e in events.details) == [
        ("job-due", "FAILED"),
        ("job-now", "FAILED"),
    ]
    assert events.details[0]["reason"].startswith("timed_out: ")
    # Ended jobs are no longer open: the next sweep ends nothing and puts no event.
    clock.now = T0 + 100
    assert sweeper.sweep().ended == [] and len(events.details) == 2


def test_an_overdue_cancel_ends_cancelled_and_a_stopped_job_failed_naming_its_threshold() -> None:
    cancelled = _job("job-c", JobStatus.CANCELLING, T0, split_done=True, stop_requested_at=CREATED)
    stopped = _job(
        "job-s",
        JobStatus.CANCELLING,
        T0,
        max_failures="5%",
        stop_reason="tolerated_failures_exceeded",
        stop_detail="tolerated_failures_exceeded: 12 of 104 finished lines failed, more than max-failures 5%",
        stop_requested_at=CREATED,
    )
    store = OpenJobs(cancelled, stopped)
    sweeper, s3, events, _ = _sweeper(store, T0 + 1)

    sweeper.sweep()

    c, s = store.jobs["job-c"], store.jobs["job-s"]
    assert c.status == JobStatus.CANCELLED and c.error is not None
    assert c.error.startswith("timed_out: still CANCELLING") and "results were not merged" in c.error
    assert s.status == JobStatus.FAILED and s.error is not None
    assert s.error.startswith("timed_out: ") and s.error.endswith("more than max-failures 5%")
    assert _summary(s3, "job-c")["stop"] == {"reason": "cancelled", "requested_at": CREATED}
    assert _summary(s3, "job-s")["stop"]["threshold"] == "max-failures 5%"
    assert sorted(e["status"] for e in events.details) == ["CANCELLED", "FAILED"]


def test_a_timeout_option_is_named_and_a_job_without_a_deadline_gets_one() -> None:
    timed = _job("job-t", JobStatus.RUNNING, T0 + 10, timeout_seconds=10, timeout_at=int(T0) + 10)
    legacy = _job("job-old", JobStatus.RUNNING, None, split_done=True, chunks_total=1)
    store = OpenJobs(timed, legacy)
    legacy_deadline = DeadlineSettings().fallback(T0, 1)
    assert deadline_of(legacy, store.deadlines) == legacy_deadline
    sweeper, _, _, clock = _sweeper(store, T0 + 11)

    assert [job.job_id for job in sweeper.sweep().ended] == ["job-t"]
    assert store.jobs["job-t"].error == (
        "timed_out: still RUNNING at its deadline 2025-01-01T00:00:10Z (its timeout of 10 s)"
    )
    clock.now = legacy_deadline + 1
    assert [job.job_id for job in sweeper.sweep().ended] == ["job-old"]
    assert store.jobs["job-old"].deadline_at == legacy_deadline  # written with the ending


@pytest.mark.parametrize("winner", [JobStatus.COMPLETED, JobStatus.FAILED])
def test_a_sweeper_that_loses_the_race_writes_nothing(winner: JobStatus) -> None:
    store = OpenJobs(_job("job-1", JobStatus.RUNNING, T0, split_done=True))

    def finished_first(job: Job) -> None:  # a finalize (or a failure) between the read and the write
        store.jobs[job.job_id] = replace(store.jobs[job.job_id], status=winner)

    store.before_expire = finished_first
    sweeper, s3, events, _ = _sweeper(store, T0 + 5)

    report = sweeper.sweep()

    assert (report.ended, report.lost) == ([], ["job-1"])
    assert store.jobs["job-1"].status == winner
    assert s3.objects == {} and events.details == []


def test_a_sweep_short_of_time_stops_and_leaves_the_rest_to_the_next() -> None:
    store = OpenJobs(*(_job(f"job-{n}", JobStatus.RUNNING, T0) for n in range(3)))
    sweeper, _, _, _ = _sweeper(store, T0 + 5)
    left = iter([60.0, 60.0, RESERVE_SECONDS - 0.1])  # at the start, then before each job

    report = sweeper.sweep(lambda: next(left))

    assert report.out_of_time and len(report.ended) == 1
    assert len(sweeper.sweep().ended) == 2
    assert all(job.status in FINAL_STATUSES for job in store.jobs.values())


def test_a_sweep_given_a_few_seconds_keeps_a_share_of_them() -> None:
    # The local stack's functions run a few seconds: a whole RESERVE_SECONDS would leave none.
    store = OpenJobs(*(_job(f"job-{n}", JobStatus.RUNNING, T0) for n in range(3)))
    sweeper, _, _, _ = _sweeper(store, T0 + 5)

    report = sweeper.sweep(lambda: RESERVE_SECONDS - 1)  # a 4 s invocation

    assert not report.out_of_time and len(report.ended) == 3


def test_a_schedule_rate_is_played_locally_in_seconds() -> None:
    assert [rate_seconds(r) for r in ("rate(1 minute)", "rate(5 minutes)", "rate(2 hours)")] == [
        60,
        300,
        7200,
    ]
    with pytest.raises(ValueError, match="only rate"):
        rate_seconds("cron(0 12 * * ? *)")
