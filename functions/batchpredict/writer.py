"""Writing one chunk's results: part file, IMG# rows, and the counted CHUNK# marker."""

from __future__ import annotations

import time
from collections.abc import Callable

from batchpredict.costs import ComputeMeter, write_units
from batchpredict.errors import ErrorCode
from batchpredict.itemlimits import item_problem
from batchpredict.jobs import CANCELLABLE_STATUSES, FINAL_STATUSES, JobStore
from batchpredict.messages import Chunk, finalize_body
from batchpredict.observability import logger
from batchpredict.options import TOLERATED_FAILURES_EXCEEDED, MaxFailures
from batchpredict.queues import Queue
from batchpredict.records import SUCCEEDED, ResultRecord, WorkItem, preview
from batchpredict.results import ResultStore

# The TTL JobStore.put_results may add: ten digits at most.
_LONGEST_EXPIRY = {"expires_at": 9_999_999_999}


class ChunkBusyError(RuntimeError):
    """Another delivery of the chunk holds its claim: this message comes back later."""


# Without a Lambda context (tests, tools): Lambda's longest invocation.
DEFAULT_LEASE_SECONDS = 900.0
# A claim outlives its writer's invocation by this much, so it never lapses mid-write.
LEASE_MARGIN_SECONDS = 5.0
# Throttled writes are retried until this long before the invocation ends; then the chunk goes
# back to its queue (its claim lapses with the invocation, and a later delivery takes over).
WRITE_SAFETY_SECONDS = 1.5
STOPPED_MESSAGE = "the job was stopped before this line was predicted"


def failed_chunk_records(chunk: Chunk, code: ErrorCode, message: str) -> list[ResultRecord]:
    """Every line of ``chunk`` as a FAILED result with ``code``; lines already invalid at split
    time keep their own, more useful error."""
    return [
        ResultRecord.failed(chunk.job_id, item, item.error["code"], item.error["message"])
        if item.error
        else ResultRecord.failed(chunk.job_id, item, code, message)
        for item in chunk.items
    ]


def stopped_records(chunk: Chunk) -> list[ResultRecord]:
    """A chunk of a cancelled, stopped or failed job: every line FAILED ``cancelled``, to be
    counted like any other chunk so the job's counts still close."""
    return failed_chunk_records(chunk, ErrorCode.CANCELLED, STOPPED_MESSAGE)


class ChunkWriter:
    """Part file + IMG# rows + counted marker; asks for finalize when the job is done."""

    def __init__(
        self,
        jobs: JobStore,
        results: ResultStore,
        finalize: Queue,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jobs = jobs
        self.results = results
        self.finalize = finalize
        self._clock = clock

    def write(
        self,
        chunk: Chunk,
        records: list[ResultRecord],
        model: str | None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        meter: ComputeMeter | None = None,
    ) -> bool:
        """Returns True if this call counted the chunk (False: counted by an earlier delivery).

        ``lease_seconds`` is the invocation's remaining time + ``LEASE_MARGIN_SECONDS``: the
        claim lasts that long, and throttled writes are retried until shortly before it ends.

        A chunk counted before keeps the part and rows written then: the job may already be
        finalized from them, and results.jsonl and the table must keep telling the same story.
        """
        if self.jobs.chunk_counted(chunk.job_id, chunk.chunk):
            self.request_finalize_if_done(chunk.job_id, chunk.chunk)
            return False
        deadline = self._clock() + lease_seconds - LEASE_MARGIN_SECONDS - WRITE_SAFETY_SECONDS
        if not self.jobs.claim_chunk(chunk.job_id, chunk.chunk, lease_seconds, deadline):
            raise ChunkBusyError(
                f"chunk {chunk.chunk} of {chunk.job_id} is being written by another delivery"
            )
        deferral = chunk.deferral
        if deferral is not None and deferral.saved:  # the lines it finished before it was deferred
            records += self.results.saved_records(chunk.job_id, chunk.chunk, deferral.saved)
            records.sort(key=lambda record: record.index)
        records[:] = [storable(record) for record in records]  # the caller's list: its metrics agree
        self.results.write_part(chunk.job_id, chunk.chunk, records)
        units = self.jobs.put_results(records, deadline) + write_units(0)  # + the claim
        succeeded = sum(1 for r in records if r.status == SUCCEEDED)
        usage = meter.take(units) if meter else None
        counted = self.jobs.count_chunk(
            chunk.job_id,
            chunk.chunk,
            succeeded,
            len(records) - succeeded,
            model,
            usage,
            deadline=deadline,
            undeferred=len(chunk.items) if deferral is not None else 0,
        )
        if meter is not None and usage is not None and not counted:
            meter.refund(usage)
        if counted and chunk.max_failures and succeeded < len(records):
            self._stop_if_too_many_failures(chunk)
        self.request_finalize_if_done(chunk.job_id, chunk.chunk)
        return counted

    def write_stopped(self, chunk: Chunk, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> bool:
        """A chunk of a cancelled, stopped or failed job, written without fetching anything."""
        return self.write(chunk, stopped_records(chunk), model=None, lease_seconds=lease_seconds)

    def request_finalize_if_done(self, job_id: str, chunk: int | None = None) -> None:
        """Send the finalize message if every chunk is counted. With ``chunk``, the job's counts
        are read in full only once that chunk's counter shard is complete (jobs.may_be_done)."""
        # Checked on every delivery, counted or not: a redelivery after a lost finalize
        # message still completes the job (finalize itself is idempotent).
        if chunk is not None and not self.jobs.may_be_done(job_id, chunk):
            return
        job = self.jobs.get(job_id)
        if job is not None and job.all_chunks_done and job.status not in FINAL_STATUSES:
            self.finalize.send(finalize_body(job_id))

    def _stop_if_too_many_failures(self, chunk: Chunk) -> None:
        """Past its max-failures (after MIN_FINISHED_FOR_THRESHOLD lines), a job stops through
        the cancel path and ends FAILED ``tolerated_failures_exceeded``. Judged after each
        counted chunk with failures of a job that has a threshold (the chunk carries it), so
        only those read the job's counts in full.

        Never raises because of the stored threshold: this runs after the chunk was counted, and
        an exception would only bring the chunk back on every delivery. One that cannot be read
        is logged and not judged."""
        job = self.jobs.get(chunk.job_id)
        if job is None or not job.max_failures or job.status not in CANCELLABLE_STATUSES:
            return
        threshold = MaxFailures.from_stored(job.max_failures)
        if threshold is None:
            logger.error(
                "unreadable max-failures on the job: its threshold is not judged",
                extra={"job_id": job.job_id, "max_failures": repr(job.max_failures)[:80]},
            )
            return
        finished = job.succeeded + job.failed
        if not threshold.exceeded(job.failed, finished):
            return
        detail = (
            f"{TOLERATED_FAILURES_EXCEEDED}: {job.failed} of {finished} finished lines failed,"
            f" more than max-failures {threshold}"
        )
        logger.warning("failure threshold passed: stopping", extra={"job_id": job.job_id, "detail": detail})
        self.jobs.cancel(job.job_id, TOLERATED_FAILURES_EXCEEDED, detail)


def storable(record: ResultRecord) -> ResultRecord:
    """``record``, or, if DynamoDB would refuse its row, the line FAILED without its metadata.

    Parse-time limits keep manifests from getting here; a chunk message written by other means
    (or limits changed between split and predict) still fails only its own line.
    """
    problem = item_problem(record.to_item() | _LONGEST_EXPIRY)
    if problem is None:
        return record
    item = WorkItem(
        index=record.index, url=preview(record.url), id=preview(record.id), fidelity=record.fidelity
    )
    message = f"the result row would be refused by DynamoDB ({problem}); its metadata is left out"
    return ResultRecord.failed(record.job_id, item, ErrorCode.INVALID_MANIFEST_LINE, message, record.model)
