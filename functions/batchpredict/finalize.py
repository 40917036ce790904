"""finalize and reconcile logic.

finalize merges the parts into results.jsonl (merge.py: parallel ordered reads, a multipart
upload checkpointed after every part, continued in a new invocation before time runs out),
writes _summary.json and sets the final status. It is idempotent: a job that is already final
is left alone. A finalize message dead-lettered after failing every delivery ends its job
FAILED with the reason (``Finalizer.dead_lettered``, run by reconcile).

reconcile turns a dead-lettered chunk into FAILED ``dead_lettered`` results, counted
like any other chunk, so the job still completes with every line accounted for.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from batchpredict.costs import compute_summary
from batchpredict.errors import ErrorCode
from batchpredict.events import JobEvents, announce
from batchpredict.jobs import FINAL_STATUSES, Job, JobStatus, JobStore, utc_now
from batchpredict.merge import MergeMismatchError, Merger, MergeSettings, MergeState
from batchpredict.merges import MergeCheckpoint, MergeStore
from batchpredict.messages import Chunk, finalize_body
from batchpredict.observability import MetricUnit, logger, metrics
from batchpredict.queues import Queue
from batchpredict.results import ResultStore, results_key, summary_key
from batchpredict.writer import DEFAULT_LEASE_SECONDS, ChunkWriter, failed_chunk_records


def fail_job(
    jobs: JobStore, results: ResultStore, job_id: str, reason: str, events: JobEvents | None
) -> Job | None:
    """Mark the job FAILED with ``reason``, on the JOB record and in _summary.json, and put its
    state change event."""
    logger.warning("job failed", extra={"job_id": job_id, "reason": reason})
    job = jobs.fail(job_id, reason)
    if job is not None:
        # The summary tells the user what happened even if they only look at the bucket.
        summary = {
            "job_id": job_id,
            "manifest_uri": job.manifest_uri,
            "status": job.status.value,
            "error": reason,
            "total": job.total,
            "succeeded": job.succeeded,
            "failed": job.failed,
            "started_at": job.created_at,
            "ended_at": job.completed_at,
        } | _named(job)
        announce(jobs, events, job, summary, results.write_summary(job_id, summary))
    return job


def _named(job: Job) -> dict[str, Any]:
    """The job's own options, for the summary."""
    return {k: v for k, v in (("name", job.name), ("tags", job.tags)) if v}


def final_status(job: Job, tally_succeeded: int, tally_lines: int) -> tuple[JobStatus, str | None]:
    """The status finalize ends a job with, and the error it records (None: no error).

    A stopped (CANCELLING) job ends CANCELLED, or FAILED with the reason that stopped it."""
    if job.status == JobStatus.CANCELLING:
        if job.stop_reason:
            return JobStatus.FAILED, job.stop_detail or job.stop_reason
        return JobStatus.CANCELLED, None
    if tally_succeeded == tally_lines:
        return JobStatus.COMPLETED, None
    return JobStatus.COMPLETED_WITH_ERRORS, None


def _stop(job: Job, error: str | None) -> dict[str, Any]:
    """How a stopped job was stopped, for the summary: by whom or which threshold."""
    if job.status != JobStatus.CANCELLING:
        return {}
    stop = {"reason": job.stop_reason or "cancelled", "requested_at": job.stop_requested_at}
    if job.max_failures and job.stop_reason:
        stop["threshold"] = f"max-failures {job.max_failures}"
    return {"stop": stop} | ({"error": error} if error else {})


def _seconds_between(start: str, end: str) -> float:
    parse = datetime.fromisoformat
    return max((parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds(), 0.0)


def _unbounded() -> float:
    return math.inf


class Finalizer:
    """Merges a finished job's parts (merge.py, resumable across invocations), then writes
    _summary.json and the final status. ``finalize`` queue: where it asks for its own
    continuation."""

    def __init__(
        self,
        jobs: JobStore,
        results: ResultStore,
        merges: MergeStore,
        finalize: Queue,
        settings: MergeSettings | None = None,
        events: JobEvents | None = None,
    ) -> None:
        self.jobs = jobs
        self.results = results
        self.merges = merges
        self.finalize_queue = finalize
        self.merger = Merger(results, merges, settings or MergeSettings())
        self.events = events

    def finalize(self, job_id: str, remaining_seconds: Callable[[], float] = _unbounded) -> Job | None:
        job = self.jobs.get(job_id)
        if job is not None and job.status in FINAL_STATUSES and job.event_due == job.status.value:
            # A redelivery after the event could not be put: put it now (once, see events.py).
            key = summary_key(job_id)
            announce(self.jobs, self.events, job, self.results.read_json(key), self.results.uri(key))
            return job
        if job is None or job.status in FINAL_STATUSES or not job.all_chunks_done:
            logger.info("nothing to finalize", extra={"job_id": job_id, "status": job and job.status})
            return job
        try:
            outcome = self.merger.run(job, remaining_seconds)
        except MergeMismatchError as exc:
            # Retrying cannot mend missing or misplaced lines: say so on the job, do not loop.
            return self._give_up(job_id, f"results could not be merged: {exc}")
        except Exception as exc:
            self._record_error(job_id, exc)
            raise
        if outcome.state == MergeState.CONTINUED:
            # Sent before this message is deleted: the merge always has a message on its way.
            self.finalize_queue.send(finalize_body(job_id))
            metrics.add_metric(name="FinalizeContinued", unit=MetricUnit.Count, value=1)
            return job
        if outcome.state == MergeState.SUPERSEDED:
            logger.info("another finalizer moved this merge on", extra={"job_id": job_id})
            return job
        return self._complete(job, outcome.checkpoint)

    def dead_lettered(self, job_id: str, receive_count: int | None = None) -> Job | None:
        """A finalize message that failed every delivery: the job ends FAILED, with the reason."""
        job = self.jobs.get(job_id)
        if job is None or job.status in FINAL_STATUSES:
            return job
        tries = f" ({receive_count} receives)" if receive_count else ""
        last = self.merges.get(job_id).last_error
        reason = f"results could not be merged: finalize failed on every delivery{tries}" + (
            f"; last error: {last}" if last else ""
        )
        return self._give_up(job_id, reason)

    def _give_up(self, job_id: str, reason: str) -> Job | None:
        checkpoint = self.merges.get(job_id)
        if checkpoint.upload_id:  # the lifecycle rule would, days later
            self.results.abort_upload(results_key(job_id, checkpoint.file_number), checkpoint.upload_id)
        return fail_job(self.jobs, self.results, job_id, reason, self.events)

    def _record_error(self, job_id: str, exc: Exception) -> None:
        try:
            self.merges.record_error(job_id, f"{type(exc).__name__}: {exc}")
        except Exception:  # the original error matters more
            logger.exception("could not record the merge error", extra={"job_id": job_id})

    def _complete(self, job: Job, merged: MergeCheckpoint) -> Job | None:
        job_id = job.job_id
        files = [
            {
                "uri": self.results.uri(f.key),
                "first_index": f.first_index,
                "lines": f.lines,
                "bytes": f.bytes,
            }
            for f in merged.files
        ]
        results_uri = files[0]["uri"]
        ended = utc_now()
        lines, succeeded = merged.lines, merged.succeeded
        status, error = final_status(job, succeeded, lines)
        seconds = _seconds_between(job.created_at, ended)
        models = Counter(merged.models)
        summary: dict[str, Any] = (
            {
                "job_id": job_id,
                "manifest_uri": job.manifest_uri,
                "status": status.value,
                "total": lines,
                "succeeded": succeeded,
                "failed": lines - succeeded,
                "errors_by_code": dict(sorted(merged.errors.items())),
                "model": job.model or (models.most_common(1)[0][0] if models else None),
                "started_at": job.created_at,
                "ended_at": ended,
                "duration_seconds": round(seconds, 3),
                "images_per_second": round(lines / seconds, 2) if seconds else None,
                "results_uri": results_uri,
                "results_files": files,
                "chunks": job.chunks_total,
                "compute": compute_summary(lines, job.chunks_total, job.usage),
            }
            | _named(job)
            | _stop(job, error)
        )
        summary_uri = self.results.write_summary(job_id, summary)
        final = self.jobs.complete(job_id, status, str(results_uri), error)
        if final is not None:  # None: another finalize completed it first
            metrics.add_metric(name="JobsFinalized", unit=MetricUnit.Count, value=1)
            announce(self.jobs, self.events, final, summary, summary_uri)
        logger.info("job finalized", extra={"job_id": job_id, "status": status.value, "total": lines})
        return final


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
    records = failed_chunk_records(chunk, ErrorCode.DEAD_LETTERED, message)
    return writer.write(chunk, records, model=None, lease_seconds=lease_seconds)
