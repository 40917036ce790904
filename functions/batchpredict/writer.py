"""Writing one chunk's results: part file, IMG# rows, and the counted CHUNK# marker."""

from __future__ import annotations

from typing import Any

from batchpredict.costs import ComputeMeter, write_units
from batchpredict.jobs import FINAL_STATUSES, JobStore
from batchpredict.messages import Chunk, finalize_body
from batchpredict.queues import Queue
from batchpredict.records import SUCCEEDED
from batchpredict.results import ResultStore


class ChunkBusyError(RuntimeError):
    """Another delivery of the chunk holds its claim: this message comes back later."""


# Without a Lambda context (tests, tools): Lambda's longest invocation.
DEFAULT_LEASE_SECONDS = 900.0


class ChunkWriter:
    """Part file + IMG# rows + counted marker; asks for finalize when the job is done."""

    def __init__(self, jobs: JobStore, results: ResultStore, finalize: Queue) -> None:
        self.jobs = jobs
        self.results = results
        self.finalize = finalize

    def write(
        self,
        chunk: Chunk,
        records: list[dict[str, Any]],
        model: str | None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        meter: ComputeMeter | None = None,
    ) -> bool:
        """Returns True if this call counted the chunk (False: counted by an earlier delivery).

        A chunk counted before keeps the part and rows written then: the job may already be
        finalized from them, and results.jsonl and the table must keep telling the same story.
        """
        if self.jobs.chunk_counted(chunk.job_id, chunk.chunk):
            self.request_finalize_if_done(chunk.job_id)
            return False
        if not self.jobs.claim_chunk(chunk.job_id, chunk.chunk, lease_seconds):
            raise ChunkBusyError(
                f"chunk {chunk.chunk} of {chunk.job_id} is being written by another delivery"
            )
        self.results.write_part(chunk.job_id, chunk.chunk, records)
        units = self.jobs.put_results(records) + write_units(0)  # + the claim
        succeeded = sum(1 for r in records if r["status"] == SUCCEEDED)
        usage = meter.take(units) if meter else None
        counted = self.jobs.count_chunk(
            chunk.job_id, chunk.chunk, succeeded, len(records) - succeeded, model, usage
        )
        if meter is not None and usage is not None and not counted:
            meter.refund(usage)
        self.request_finalize_if_done(chunk.job_id)
        return counted

    def request_finalize_if_done(self, job_id: str) -> None:
        # Checked on every delivery, counted or not: a redelivery after a lost finalize
        # message still completes the job (finalize itself is idempotent).
        job = self.jobs.get(job_id)
        if job is not None and job.all_chunks_done and job.status not in FINAL_STATUSES:
            self.finalize.send(finalize_body(job_id))
