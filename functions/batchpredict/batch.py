"""predict logic: a batch of chunk messages -> the streaming predictor -> each chunk written,
counted and charged as soon as its last image is done.

A chunk is the unit of exactly-once (claim, part, rows, count): a chunk whose images were
not all done by the invocation's deadline, or whose write failed, is reported as a batch
item failure and comes back; every other chunk of the batch is unaffected.

Refill: while the run's fetches stall (a server that accepts and never answers holds its
line up to FETCH_TOTAL_TIMEOUT), the invocation takes more chunks from the work queue itself,
at most as many as its event brought and as its free fetch threads can fetch in the time
left (pipeline.StreamingPredictor decides when and how many lines), hidden until just
after it ends; it deletes those it has
written, and the others come back then. The cores work instead of waiting, and Lambda bills
work, not idle time. The claim and marker keep a chunk counted once however it arrived.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field

from batchpredict.costs import ComputeMeter
from batchpredict.errors import ErrorCode
from batchpredict.jobs import STOPPED_STATUSES
from batchpredict.messages import Chunk
from batchpredict.observability import MetricUnit, logger, metrics
from batchpredict.pipeline import ImageResult, StreamingPredictor
from batchpredict.queues import Queue
from batchpredict.records import SUCCEEDED, ImageInfo, ResultError, ResultRecord, Timing, WorkItem
from batchpredict.writer import LEASE_MARGIN_SECONDS, ChunkWriter, stopped_records

WRITER_THREADS = 4  # chunks written at once: S3 and DynamoDB calls, not CPU
WRITE_RESERVE_SHARE = 0.2  # at most this share of the invocation's time is kept back for writes


def image_record(
    job_id: str | None, result: ImageResult, model: str, top_k: int | None = None
) -> ResultRecord:
    """The result record of one line: failed at split time, or through fetch, decode, predict.
    ``top_k``: the job's option, when it asks for fewer classes than this run inferred."""
    item, outcome = result.item, result.outcome
    if item.error is not None or not item.url:  # no fetch, no model
        error = item.error or {"code": ErrorCode.INVALID_MANIFEST_LINE.value, "message": "no url"}
        return ResultRecord.failed(job_id, item, error["code"], error["message"])
    image = outcome.image
    return ResultRecord.for_item(
        job_id,
        item,
        model=model,
        error=None if outcome.error is None else ResultError(str(outcome.error.code), outcome.error.message),
        predictions=tuple(outcome.predictions[:top_k]),
        image=None if image is None else ImageInfo(image.width, image.height, image.bytes),
        timing=Timing(
            round(result.fetch_ms, 2), round(outcome.preprocess_ms, 2), round(outcome.inference_ms, 2)
        ),
    )


class ChunkUnfinishedError(RuntimeError):
    """The invocation ran out of time before every image of the chunk was done."""


@dataclass
class ChunkOutcome:
    """What became of one message: counted, counted before (``counted`` False), or an error."""

    chunk: Chunk | None
    records: list[ResultRecord] = field(default_factory=list)
    counted: bool = False
    error: BaseException | None = None

    def raise_for_failure(self) -> None:
        if self.error is not None:
            raise self.error


class ChunkBatch:
    """One invocation's chunks through the stream; each chunk written the moment it is done."""

    def __init__(
        self,
        predictor: StreamingPredictor,
        writer: ChunkWriter,
        *,
        memory_mb: int,
        write_reserve_seconds: float,
        work_queue: Queue | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.predictor = predictor
        self.writer = writer
        self.work_queue = work_queue  # None: no refill
        self.memory_mb = memory_mb
        self.write_reserve_seconds = write_reserve_seconds
        self._clock = clock
        self._writes = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="write")

    def run(
        self, messages: Sequence[tuple[str, str]], remaining: Callable[[], float]
    ) -> dict[str, ChunkOutcome]:
        """``messages``: (message id, body); ``remaining``: seconds the invocation has left."""
        meter = ComputeMeter(self.memory_mb, self._clock)
        left = remaining()
        # A short invocation keeps a share of its time for writes, never all of it.
        deadline = self._clock() + left - min(self.write_reserve_seconds, left * WRITE_RESERVE_SHARE)
        outcomes: dict[str, ChunkOutcome] = {}
        chunks: list[tuple[str, Chunk]] = []  # the predictor's groups, in order
        taken: dict[str, str] = {}  # refill: message id -> receipt handle
        writes: dict[str, Future[bool]] = {}

        def write(message_id: str, chunk: Chunk, records: list[ResultRecord]) -> None:
            outcomes[message_id] = ChunkOutcome(chunk, records)
            writes[message_id] = self._writes.submit(self._write, chunk, records, remaining, meter)

        def admit(received: Sequence[tuple[str, str]]) -> list[Chunk]:
            """Parse; chunks of a cancelled, stopped or failed job are not fetched: written at
            once, cancelled. The rest become the predictor's next groups."""
            parsed = self._parse(received, outcomes)
            stopped = self._stopped_jobs({chunk.job_id for _, chunk in parsed})
            for message_id, chunk in parsed:
                if chunk.job_id in stopped:
                    write(message_id, chunk, stopped_records(chunk))
            live = [(message_id, chunk) for message_id, chunk in parsed if chunk.job_id not in stopped]
            chunks.extend(live)
            return [chunk for _, chunk in live]

        def predicted(group: int, results: list[ImageResult]) -> None:
            message_id, chunk = chunks[group]
            model, top_k = self.predictor.model_id, chunk.top_k or self.predictor.top_k
            write(message_id, chunk, [image_record(chunk.job_id, r, model, top_k) for r in results])

        def refill(lines: int) -> tuple[list[list[WorkItem]], int | None]:
            # At most as many chunks as the event brought, and as the lines allowed hold (the
            # event's chunks are the measure: a chunk's size is the job's, known on arrival).
            count = min(len(messages), lines // chunk_lines)
            if count < 1 or self.work_queue is None:
                return [], None
            hidden = math.ceil(remaining() + LEASE_MARGIN_SECONDS)  # back soon if this run fails
            received = self.work_queue.receive(count, hidden)
            taken.update({r.message_id: r.receipt_handle for r in received})
            new = admit([(r.message_id, r.body) for r in received])
            return [chunk.items for chunk in new], self._top_k(new)

        first = admit(messages)
        chunk_lines = max([len(chunk.items) for chunk in first] + [1])
        unfinished = self.predictor.run(
            [chunk.items for chunk in first],
            deadline,
            predicted,
            self._top_k(first),
            refill if self.work_queue is not None and messages else None,
        )
        for group in unfinished:
            message_id, chunk = chunks[group]
            error = ChunkUnfinishedError(f"chunk {chunk.chunk} of {chunk.job_id} not done in time")
            outcomes[message_id] = ChunkOutcome(chunk, error=error)
        wait_for(writes.values(), timeout=max(remaining() - 1.0, 0.1))
        for message_id, future in writes.items():
            outcome = outcomes[message_id]
            if not future.done():
                outcome.error = TimeoutError("the chunk's write did not finish before the invocation ends")
            elif future.exception() is not None:
                outcome.error = future.exception()
                logger.error("chunk write failed", extra={"message_id": message_id}, exc_info=outcome.error)
            else:
                outcome.counted = future.result()
        self._delete_taken(taken, outcomes, self._clock() + max(remaining() - 0.5, 0.1))
        return outcomes

    def _top_k(self, chunks: Sequence[Chunk]) -> int | None:
        return max((chunk.top_k or self.predictor.top_k for chunk in chunks), default=None)

    @staticmethod
    def _parse(
        received: Sequence[tuple[str, str]], outcomes: dict[str, ChunkOutcome]
    ) -> list[tuple[str, Chunk]]:
        chunks = []
        for message_id, body in received:
            try:
                chunks.append((message_id, Chunk.parse(body)))
            except Exception as exc:  # whatever a body holds, it fails only its own message
                # -> DLQ -> reconcile, which reports what it cannot parse
                logger.exception("malformed chunk message", extra={"message_id": message_id})
                outcomes[message_id] = ChunkOutcome(None, error=ValueError(f"not a chunk message: {exc}"))
        return chunks

    def _delete_taken(
        self, taken: dict[str, str], outcomes: dict[str, ChunkOutcome], deadline: float
    ) -> None:
        """The refill's messages that are written (or were before) leave the queue, by
        ``deadline``; the others come back when their visibility ends, like an event's batch
        item failures."""
        done = [
            handle
            for message_id, handle in taken.items()
            if (outcome := outcomes.get(message_id)) is not None and outcome.error is None
        ]
        if not done or self.work_queue is None:
            return
        try:
            self.work_queue.delete(done, deadline)
        except Exception:  # they come back, and the chunk markers make them no-ops
            logger.exception("deleting refilled messages failed", extra={"messages": len(done)})

    def _stopped_jobs(self, job_ids: set[str]) -> set[str]:
        """The jobs (of these chunks) no longer to predict: one consistent read of the status of
        each, as the chunks arrive. A read that fails predicts the chunk (harmless: it is
        written and counted like any other)."""
        stopped = set()
        for job_id in job_ids:
            try:
                if self.writer.jobs.status(job_id) in STOPPED_STATUSES:
                    stopped.add(job_id)
            except Exception:
                logger.exception("job status unavailable: predicting its chunks", extra={"job_id": job_id})
        return stopped

    def _write(
        self, chunk: Chunk, records: list[ResultRecord], remaining: Callable[[], float], meter: ComputeMeter
    ) -> bool:
        # The claim on the chunk lasts as long as this invocation can (plus a margin).
        lease = remaining() + LEASE_MARGIN_SECONDS
        return self.writer.write(chunk, records, self.predictor.model_id, lease, meter)


def predict_urls(predictor: StreamingPredictor, urls: Sequence[str], deadline: float) -> list[ResultRecord]:
    """predict_api's path: the same stream for a few URLs; records without a job, in order.

    Each URL is a group of its own, so an image done before the deadline keeps its result
    and one that is not fails alone, as ``fetch_timeout``.
    """
    items = [WorkItem(index=i, url=url) for i, url in enumerate(urls)]
    done: dict[int, ImageResult] = {}
    predictor.run([[item] for item in items], deadline, lambda g, results: done.update({g: results[0]}))
    late = "not done before the request's deadline"
    return [
        image_record(None, done[i], predictor.model_id)
        if i in done
        else ResultRecord.failed(None, item, ErrorCode.FETCH_TIMEOUT, late)
        for i, item in enumerate(items)
    ]


def publish_metrics(outcomes: dict[str, ChunkOutcome]) -> None:
    for outcome in outcomes.values():
        if outcome.error is not None:
            if isinstance(outcome.error, ChunkUnfinishedError):
                metrics.add_metric(name="ChunksUnfinished", unit=MetricUnit.Count, value=1)
            continue
        if not outcome.counted:
            # Counted by an earlier delivery: its images are in the metrics already.
            metrics.add_metric(name="ChunksRedelivered", unit=MetricUnit.Count, value=1)
            continue
        succeeded = sum(1 for r in outcome.records if r.status == SUCCEEDED)
        metrics.add_metric(name="ImagesSucceeded", unit=MetricUnit.Count, value=succeeded)
        metrics.add_metric(name="ImagesFailed", unit=MetricUnit.Count, value=len(outcome.records) - succeeded)
