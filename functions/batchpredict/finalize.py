"""finalize and reconcile logic.

finalize merges the parts into results.jsonl (merge.py: parallel ordered reads, a multipart
upload checkpointed after every part, continued in a new invocation before time runs out),
writes _summary.json and sets the final status. It is idempotent: a job that is already final
is left alone. A finalize message dead-lettered after failing every delivery ends its job
FAILED with the reason (``Finalizer.dead_lettered``, run by reconcile), and so does a
dead-lettered manifest message whose split never finished (``Finalizer.split_dead_lettered``).

reconcile turns a dead-lettered chunk into FAILED ``dead_lettered`` results, counted
like any other chunk, so the job still completes with every line accounted for.

Whoever ends a job (finalize, fail_job, the sweeper) does so with one conditional update first,
and only the winner then writes _summary.json and puts the event: a loser writes nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from batchpredict.costs import compute_summary
from batchpredict.deadlines import iso
from batchpredict.errors import ErrorCode
from batchpredict.events import JobEvents, announce
from batchpredict.fidelity import DEFAULT_FIDELITY
from batchpredict.jobs import FINAL_STATUSES, Job, JobStatus, JobStore, utc_now
from batchpredict.merge import MergeMismatchError, Merger, MergeSettings, MergeState
from batchpredict.merges import MergeCheckpoint, MergeStore
from batchpredict.messages import Chunk, ManifestMessage, ManifestObject, finalize_body
from batchpredict.observability import MetricUnit, logger, metrics
from batchpredict.queues import Queue
from batchpredict.results import ResultStore, results_key
from batchpredict.writer import DEFAULT_LEASE_SECONDS, ChunkWriter, failed_chunk_records


def fail_job(
    jobs: JobStore, results: ResultStore, job_id: str, reason: str, events: JobEvents | None
) -> Job | None:
    """Mark the job FAILED with ``reason``, on the JOB record and in _summary.json, and put its
    state change event (only if this call failed it: a job already final is left alone)."""
    logger.warning("job failed", extra={"job_id": job_id, "reason": reason})
    return ended(jobs, results, events, jobs.fail(job_id, reason))


def ended(jobs: JobStore, results: ResultStore, events: JobEvents | None, job: Job | None) -> Job | None:
    """What the winner of an unmerged ending writes after its status update (``job``; None: it
    lost, and writes nothing): _summary.json, then the event."""
    if job is not None:
        # The summary tells the user what happened even if they only look at the bucket.
        summary = record_summary(job)
        announce(jobs, events, job, summary, results.write_summary(job.job_id, summary))
    return job


def record_summary(job: Job) -> dict[str, Any]:
    """The _summary.json of a job that ended without a merge (failed, or ended by the sweeper):
    what its JOB record says. The same record gives the same summary, so a redelivery may write
    it again."""
    deadline = {"deadline_at": iso(job.deadline_at)} if job.deadline_at is not None else {}
    return (
        {
            "job_id": job.job_id,
            "manifest_uri": job.manifest_uri,
            "status": job.status.value,
            "error": job.error,
            "total": job.total,
            "succeeded": job.succeeded,
            "failed": job.failed,
            "started_at": job.created_at,
            "ended_at": job.completed_at,
        }
        | deadline
        | _named(job)
        | _stop(job)
    )


def _named(job: Job) -> dict[str, Any]:
    """The job's own options, for the summary: its name and tags if given, and its fidelity
    (``exact`` unless the job asked for ``fast``)."""
    named = {k: v for k, v in (("name", job.name), ("tags", job.tags)) if v}
    return named | {"fidelity": job.fidelity or DEFAULT_FIDELITY.value}


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


def _stop(job: Job) -> dict[str, Any]:
    """How a stopped job was stopped, for the summary: by whom or which threshold."""
    if not job.stop_requested_at:  # set by the cancel that made it CANCELLING
        return {}
    stop = {"reason": job.stop_reason or "cancelled", "requested_at": job.stop_requested_at}
    if job.max_failures and job.stop_reason:
        stop["threshold"] = f"max-failures {job.max_failures}"
    return {"stop": stop} | ({"error": job.error} if job.error else {})


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
            # A redelivery after the summary or the event could not be written (or while the
            # one who ended the job writes them): the same summary again, the event once.
            summary = self._summary(job, self.merges.get(job_id)) if job.results_uri else record_summary(job)
            announce(self.jobs, self.events, job, summary, self.results.write_summary(job_id, summary))
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

    def split_dead_lettered(
        self, message: ManifestMessage, message_id: str, receive_count: int | None = None
    ) -> list[Job | None]:
        """A manifest-queue message that failed every delivery (an S3 event, possibly of several
        objects, or a continuation): each of its jobs whose split never finished ends FAILED,
        naming the manifest. A job that split (it runs on, or it ended) is left alone. A job
        that was never created (split died before its first write) is created, then failed:
        every manifest upload ends as a job that says what happened."""
        tries = f" ({receive_count} receives)" if receive_count else ""
        if message.continuation is not None:
            targets = [(message.continuation.job_id, message.continuation.manifest, False)]
        else:
            targets = [(obj.job_id, obj, True) for obj in message.objects]
        return [self._split_failed(*target, message_id, tries) for target in targets]

    def _split_failed(
        self, job_id: str, obj: ManifestObject, creatable: bool, message_id: str, tries: str
    ) -> Job | None:
        reason = f"manifest {obj.uri} could not be split: split_manifest failed on every delivery{tries}"
        job = self.jobs.fail_split(job_id, reason)
        if (
            job is None
            and creatable
            and self.jobs.create(job_id, obj.uri, message_id, manifest_version=obj.version_id)
        ):
            metrics.add_metric(name="ManifestsNeverSplit", unit=MetricUnit.Count, value=1)
            job = self.jobs.fail_split(job_id, reason)
        if job is None:
            found = self.jobs.get(job_id)
            logger.info(
                "dead-lettered manifest: its job is left alone",
                extra={"job_id": job_id, "status": found and found.status},
            )
            return found
        logger.warning("job failed", extra={"job_id": job_id, "reason": reason})
        return ended(self.jobs, self.results, self.events, job)

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
        """The final status first (conditional): only if this finalize set it does it write
        _summary.json and put the event, so one that lost to another ending (the sweeper, a
        failure, a duplicate finalize) leaves the winner's summary as it is."""
        job_id = job.job_id
        status, error = final_status(job, merged.succeeded, merged.lines)
        results_uri = self.results.uri(merged.files[0].key)
        final = self.jobs.complete(job_id, status, results_uri, error)
        if final is None:
            logger.info("another ending got there first", extra={"job_id": job_id})
            return None
        summary = self._summary(final, merged)
        summary_uri = self.results.write_summary(job_id, summary)
        metrics.add_metric(name="JobsFinalized", unit=MetricUnit.Count, value=1)
        announce(self.jobs, self.events, final, summary, summary_uri)
        logger.info("job finalized", extra={"job_id": job_id, "status": status.value, "total": merged.lines})
        return final

    def _summary(self, job: Job, merged: MergeCheckpoint) -> dict[str, Any]:
        """The _summary.json of a job finalize ended (``job`` as its final update left it)."""
        files = [
            {
                "uri": self.results.uri(f.key),
                "first_index": f.first_index,
                "lines": f.lines,
                "bytes": f.bytes,
            }
            for f in merged.files
        ]
        ended = job.completed_at or utc_now()
        lines, succeeded = merged.lines, merged.succeeded
        seconds = _seconds_between(job.created_at, ended)
        models = Counter(merged.models)
        return (
            {
                "job_id": job.job_id,
                "manifest_uri": job.manifest_uri,
                "status": job.status.value,
                "total": lines,
                "succeeded": succeeded,
                "failed": lines - succeeded,
                "errors_by_code": dict(sorted(merged.errors.items())),
                "model": job.model or (models.most_common(1)[0][0] if models else None),
                "started_at": job.created_at,
                "ended_at": ended,
                "duration_seconds": round(seconds, 3),
                "images_per_second": round(lines / seconds, 2) if seconds else None,
                "results_uri": files[0]["uri"],
                "results_files": files,
                "chunks": job.chunks_total,
                "compute": compute_summary(lines, job.chunks_total, job.usage),
            }
            | _named(job)
            | _stop(job)
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
    records = failed_chunk_records(chunk, ErrorCode.DEAD_LETTERED, message)
    return writer.write(chunk, records, model=None, lease_seconds=lease_seconds)
