"""In-memory stand-ins shared by the pipeline unit tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from batchpredict.costs import ChunkUsage
from batchpredict.jobs import FINAL_STATUSES, Job, JobStatus


class FakeJobs:
    """The JobStore calls ChunkWriter makes, in memory, with the same counted-once semantics."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.markers: set[int] = set()
        self.rows: list[dict[str, Any]] = []
        self.count_calls: list[tuple[int, int, int, str | None]] = []
        self.claims: set[int] = set()
        self.usages: list[ChunkUsage | None] = []

    def chunk_counted(self, job_id: str, chunk: int) -> bool:
        return chunk in self.markers

    def claim_chunk(
        self, job_id: str, chunk: int, lease_seconds: float, deadline: float | None = None
    ) -> bool:
        if chunk in self.claims:
            return False
        self.claims.add(chunk)
        return True

    def put_results(self, records: list[dict[str, Any]], deadline: float | None = None) -> int:
        self.rows.extend(records)
        return len(records)  # a write unit a row

    def count_chunk(
        self,
        job_id: str,
        chunk: int,
        succeeded: int,
        failed: int,
        model: str | None,
        usage: ChunkUsage | None = None,
        deadline: float | None = None,
    ) -> bool:
        self.count_calls.append((chunk, succeeded, failed, model))
        self.usages.append(usage)
        if chunk in self.markers:
            return False
        self.markers.add(chunk)
        self.job = replace(
            self.job,
            succeeded=self.job.succeeded + succeeded,
            failed=self.job.failed + failed,
            chunks_done=self.job.chunks_done + 1,
            model=self.job.model or model,
        )
        return True

    def may_be_done(self, job_id: str, chunk: int) -> bool:
        return True  # the writer then reads the whole job, as it does when a shard is complete

    def get(self, job_id: str) -> Job | None:
        return self.job if job_id == self.job.job_id else None

    def complete(self, job_id: str, status: JobStatus, results_uri: str) -> Job | None:
        if self.job.status != JobStatus.RUNNING:
            return None
        self.job = replace(self.job, status=status, results_uri=results_uri, completed_at="now")
        return self.job

    def fail(self, job_id: str, message: str) -> Job | None:
        if self.job.status in FINAL_STATUSES:
            return None
        self.job = replace(self.job, status=JobStatus.FAILED, error=message, completed_at="now")
        return self.job
