"""The sweeper: no job stays SPLITTING, RUNNING or CANCELLING past its deadline.

Run on a schedule (every minute on AWS, every few seconds locally). It finds the open jobs
through the by-status index (one Query per open status, never a scan), reads their JOB records
back consistently, and ends each one past its ``deadline_at`` (deadlines.py) the way finalize
would have: FAILED ``timed_out: ...``, or CANCELLED for a user's cancel that never finished
(``finalize.final_status``: a job stopped by its max-failures ends FAILED, the threshold named).

It races nothing it should not win: the ending is one conditional update on the status it read
and the deadline being past (``JobStore.expire``), so a finalize, a cancel or a split that moved
the job first wins, and the sweeper then writes nothing. Only the winner writes _summary.json
and puts the one event (``finalize.ended``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batchpredict.deadlines import TIMED_OUT, DeadlineSettings, epoch, iso
from batchpredict.events import JobEvents
from batchpredict.finalize import ended
from batchpredict.jobs import OPEN_STATUSES, Job, JobStatus, JobStore
from batchpredict.observability import MetricUnit, logger, metrics
from batchpredict.results import ResultStore

# Stop looking at more jobs once the invocation has less than this left, or less than this share
# of the time it started with (the local stack's timeouts are a few seconds).
RESERVE_SECONDS = 5.0
RESERVE_SHARE = 0.2


@dataclass
class SweepReport:
    """What one sweep saw: open jobs looked at, the ones it ended, the overdue ones another
    writer ended (or moved on) first, and whether it stopped early for time."""

    looked_at: int = 0
    ended: list[Job] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    out_of_time: bool = False


def deadline_of(job: Job, settings: DeadlineSettings) -> int:
    """The job's deadline: its own, or (a job written before deadlines existed) its split and
    run from its creation, or its timeout option."""
    if job.deadline_at is not None:
        return job.deadline_at
    created = epoch(job.created_at)
    if job.timeout_seconds:
        return math.ceil(created + job.timeout_seconds)
    return settings.fallback(created, job.chunks_total)


def ending(job: Job, deadline: int) -> tuple[JobStatus, str]:
    """The final status and error of an overdue ``job`` (as read): a user's cancel ends
    CANCELLED, anything else FAILED; the error says ``timed_out``, when and why."""
    why = f"its timeout of {job.timeout_seconds} s" if job.timeout_at is not None else _limit(job)
    error = f"{TIMED_OUT}: still {job.status.value} at its deadline {iso(deadline)} ({why})"
    if job.status == JobStatus.CANCELLING:
        if not job.stop_reason:
            return JobStatus.CANCELLED, error + "; cancelled, its results were not merged"
        return JobStatus.FAILED, f"{error}; stopping for {job.stop_detail or job.stop_reason}"
    return JobStatus.FAILED, error


def _limit(job: Job) -> str:
    if job.split_done:
        return f"the longest {job.chunks_total} chunks may take on this stack"
    return "the longest a split may take on this stack"


class Sweeper:
    """``now``: epoch seconds (a fake clock in tests)."""

    def __init__(
        self,
        jobs: JobStore,
        results: ResultStore,
        events: JobEvents | None,
        settings: DeadlineSettings | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.jobs = jobs
        self.results = results
        self.events = events
        self.settings = settings or jobs.deadlines
        self._now = now

    def sweep(self, remaining_seconds: Callable[[], float] = lambda: math.inf) -> SweepReport:
        report = SweepReport()
        reserve = min(RESERVE_SECONDS, RESERVE_SHARE * remaining_seconds())
        for status in OPEN_STATUSES:
            for job in self.jobs.open_jobs(status):
                if remaining_seconds() < reserve:
                    report.out_of_time = True  # the next sweep goes on
                    return report
                report.looked_at += 1
                self._judge(job, report)
        return report

    def _judge(self, job: Job, report: SweepReport) -> None:
        now = self._now()
        deadline = deadline_of(job, self.settings)
        if deadline >= now:
            return
        status, error = ending(job, deadline)
        final = self.jobs.expire(job, status, error, now, deadline)
        if final is None:
            logger.info("overdue job moved on first", extra={"job_id": job.job_id, "read": job.status})
            report.lost.append(job.job_id)
            return
        logger.warning("job timed out", extra={"job_id": job.job_id, "status": status, "error": error})
        metrics.add_metric(name="JobsTimedOut", unit=MetricUnit.Count, value=1)
        ended(self.jobs, self.results, self.events, final)
        report.ended.append(final)
