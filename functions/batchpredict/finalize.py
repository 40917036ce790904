"""finalize and reconcile logic.

finalize merges the parts into results.jsonl (streamed, multipart: memory does not grow
with the job), writes _summary.json and sets the final status. It is idempotent: a job
that is already final is left alone.

reconcile turns a dead-lettered chunk into FAILED ``dead_lettered`` results, counted
like any other chunk, so the job still completes with every line accounted for.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from batchpredict.costs import compute_summary
from batchpredict.errors import ErrorCode
from batchpredict.jobs import FINAL_STATUSES, Job, JobStatus, JobStore, utc_now
from batchpredict.messages import Chunk
from batchpredict.observability import MetricUnit, logger, metrics
from batchpredict.records import SUCCEEDED, failed_record
from batchpredict.results import ResultStore
from batchpredict.writer import DEFAULT_LEASE_SECONDS, ChunkWriter


def fail_job(jobs: JobStore, results: ResultStore, job_id: str, reason: str) -> Job | None:
    """Mark the job FAILED with ``reason``, on the JOB record and in _summary.json."""
    logger.warning("job failed", extra={"job_id": job_id, "reason": reason})
    job = jobs.fail(job_id, reason)
    if job is not None:
        # The summary tells the user what happened even if they only look at the bucket.
        results.write_summary(
            job_id,
            {
                "job_id": job_id,
                "manifest_uri": job.manifest_uri,
                "status": job.status.value,
                "error": reason,
                "total": job.total,
                "succeeded": job.succeeded,
                "failed": job.failed,
                "started_at": job.created_at,
                "ended_at": job.completed_at,
            },
        )
    return job


class MergeMismatchError(RuntimeError):
    """The parts do not hold exactly one line per manifest line, in order."""


@dataclass
class _Tally:
    lines: int = 0
    succeeded: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)


def _seconds_between(start: str, end: str) -> float:
    parse = datetime.fromisoformat
    return max((parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds(), 0.0)


class Finalizer:
    def __init__(self, jobs: JobStore, results: ResultStore) -> None:
        self.jobs = jobs
        self.results = results

    def finalize(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.status in FINAL_STATUSES or not job.all_chunks_done:
            logger.info("nothing to finalize", extra={"job_id": job_id, "status": job and job.status})
            return job
        tally = _Tally()
        try:
            results_uri = self.results.merge(job_id, self._checked_lines(job, tally))
        except MergeMismatchError as exc:
            # Retrying cannot mend missing or misplaced lines: say so on the job, do not loop.
            return fail_job(self.jobs, self.results, job_id, f"results could not be merged: {exc}")
        ended = utc_now()
        status = JobStatus.COMPLETED if tally.succeeded == tally.lines else JobStatus.COMPLETED_WITH_ERRORS
        seconds = _seconds_between(job.created_at, ended)
        summary: dict[str, Any] = {
            "job_id": job_id,
            "manifest_uri": job.manifest_uri,
            "status": status.value,
            "total": tally.lines,
            "succeeded": tally.succeeded,
            "failed": tally.lines - tally.succeeded,
            "errors_by_code": dict(sorted(tally.errors.items())),
            "model": job.model or (tally.models.most_common(1)[0][0] if tally.models else None),
            "started_at": job.created_at,
            "ended_at": ended,
            "duration_seconds": round(seconds, 3),
            "images_per_second": round(tally.lines / seconds, 2) if seconds else None,
            "results_uri": results_uri,
            "chunks": job.chunks_total,
            "compute": compute_summary(tally.lines, job.chunks_total, job.usage),
        }
        self.results.write_summary(job_id, summary)
        final = self.jobs.complete(job_id, status, results_uri)
        if final is not None:  # None: another finalize completed it first
            metrics.add_metric(name="JobsFinalized", unit=MetricUnit.Count, value=1)
        logger.info("job finalized", extra={"job_id": job_id, "status": status.value, "total": tally.lines})
        return final

    def _checked_lines(self, job: Job, tally: _Tally) -> Iterator[bytes]:
        expected_index = 0
        for chunk in range(job.chunks_total):
            for line in self.results.part_lines(job.job_id, chunk):
                record = json.loads(line)
                if record["index"] != expected_index:
                    raise MergeMismatchError(
                        f"{job.job_id}: chunk {chunk} holds line {record['index']}, expected {expected_index}"
                    )
                expected_index += 1
                tally.lines += 1
                if record["status"] == SUCCEEDED:
                    tally.succeeded += 1
                else:
                    tally.errors[record["error"]["code"]] += 1
                if record.get("model"):
                    tally.models[record["model"]] += 1
                yield line
        if expected_index != job.total:
            raise MergeMismatchError(
                f"{job.job_id}: parts hold {expected_index} lines, the manifest {job.total}"
            )


def reconcile_dead_letter(
    chunk: Chunk,
    writer: ChunkWriter,
    receive_count: int | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> bool:
    """Write a dead-lettered chunk as FAILED results, unless it was counted after all."""
    if writer.jobs.chunk_counted(chunk.job_id, chunk.chunk):
        writer.request_finalize_if_done(chunk.job_id)
        return False
    tries = f" after {receive_count} deliveries" if receive_count else ""
    message = f"chunk {chunk.chunk} could not be processed{tries}"
    records = [
        # Lines already invalid at split time keep their own, more useful error.
        failed_record(chunk.job_id, item, item.error["code"], item.error["message"])
        if item.error
        else failed_record(chunk.job_id, item, ErrorCode.DEAD_LETTERED, message)
        for item in chunk.items
    ]
    return writer.write(chunk, records, model=None, lease_seconds=lease_seconds)
