"""predict logic: a batch of chunk messages -> the streaming predictor -> each chunk written,
counted and charged as soon as its last image is done.

A chunk is the unit of exactly-once (claim, part, rows, count): a chunk whose images were
not all done by the invocation's deadline, or whose write failed, is reported as a batch
item failure and comes back; every other chunk of the batch is unaffected.

Refill: while the run's fetches stall (a server that accepts and never answers holds its
line up to FETCH_TOTAL_TIMEOUT), the invocation takes more chunks from the work queue itself,
at most as many as its event brought and as many chunks of the function's CHUNK_SIZE as its
free fetch threads can fetch in the time left (pipeline.StreamingPredictor decides when and how
many lines). A chunk it received that holds more lines than are left (a job split with a larger
CHUNK_SIZE) is made visible again at once, unstarted. It deletes those it has written, and the
others come back like the event's failures. The cores work instead of waiting, and Lambda bills
work, not idle time. The claim and marker keep a chunk counted once however it arrived.

Heartbeat: while the invocation lives, the messages it works on (the event's and the refilled
ones) are kept hidden ``heartbeat_seconds`` at a time (at most until just after it ends),
renewed every third of that. A worker that crashes (out of memory, killed) frees its messages
within ``heartbeat_seconds``, however long the queue's own visibility timeout. A chunk that
failed (not done in time, its write failed, its claim held by another delivery) is hidden for
a delay that grows with its receives (``retry_delay``), so a stage that is down is not retried
into the dead-letter queue within minutes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field, replace
from typing import Any

from batchpredict.config import DEFAULT_CHUNK_SIZE, DEFAULT_HEARTBEAT_SECONDS
from batchpredict.costs import ComputeMeter
from batchpredict.cpu_gate import UNGATED, CpuGate
from batchpredict.deferral import ChunkDeferrer
from batchpredict.errors import ErrorCode
from batchpredict.fidelity import DEFAULT_FIDELITY, Fidelity
from batchpredict.jobs import STOPPED_STATUSES
from batchpredict.messages import Chunk
from batchpredict.observability import MetricUnit, logger, metrics
from batchpredict.pipeline import ImageResult, StreamingPredictor
from batchpredict.queues import Heartbeat, Queue, Received
from batchpredict.records import SUCCEEDED, ImageInfo, ResultError, ResultRecord, Timing, WorkItem
from batchpredict.sharing import SharedLines, SharedPlan
from batchpredict.writer import LEASE_MARGIN_SECONDS, ChunkWriter, stopped_records

WRITER_THREADS = 4  # chunks written at once: S3 and DynamoDB calls, not CPU
WRITE_RESERVE_SHARE = 0.2  # at most this share of the invocation's time is kept back for writes
# A failed chunk's delay before its next delivery: the heartbeat's step after its first receive,
# doubling with every receive, at most RETRY_MAX_FACTOR steps.
RETRY_MAX_FACTOR = 16


def retry_delay(receive_count: int, step: float) -> int:
    """Seconds a chunk that failed on its ``receive_count``-th receive stays hidden: 1, 2, 4, 8,
    then 16 heartbeat steps. With the template's 30 s and maxReceiveCount 10, a chunk that keeps
    failing (a stage down) is tried over about 50 minutes before it is dead-lettered; a crashed
    invocation's chunks are not delayed (they come back when the heartbeat's step ends)."""
    factor = min(1 << min(max(receive_count, 1) - 1, 30), RETRY_MAX_FACTOR)
    return max(1, math.ceil(step * factor))


def event_messages(event: Mapping[str, Any]) -> list[Received]:
    """The messages of an SQS event: id, receipt handle, body and receive count."""
    records: list[dict[str, Any]] = event.get("Records") or []
    return [
        Received(
            r["messageId"],
            r["receiptHandle"],
            r["body"],
            int((r.get("attributes") or {}).get("ApproximateReceiveCount", 1)),
        )
        for r in records
    ]


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
        image=None
        if image is None
        else ImageInfo(image.width, image.height, image.bytes, image.sha256, image.format),
        timing=Timing(
            round(result.fetch_ms, 2), round(outcome.preprocess_ms, 2), round(outcome.inference_ms, 2)
        ),
        shared_with=result.shared_with,
    )


class ChunkUnfinishedError(RuntimeError):
    """The invocation ran out of time before every image of the chunk was done."""

    def __init__(self, chunk: Chunk) -> None:
        super().__init__(f"chunk {chunk.chunk} of {chunk.job_id} not done in time")


@dataclass
class ChunkOutcome:
    """What became of one message: counted, counted before (``counted`` False), or an error."""

    chunk: Chunk | None
    records: list[ResultRecord] = field(default_factory=list)
    counted: bool = False
    error: BaseException | None = None
    deferred: bool = False  # sent back for lines whose host said "not now" (deferral.py)

    def raise_for_failure(self) -> None:
        if self.error is not None:
            raise self.error


class ChunkBatch:
    """One invocation's chunks through the stream; each chunk written the moment it is done."""

    def __init__(
        self,
        predictor: StreamingPredictor | Callable[[], StreamingPredictor],
        writer: ChunkWriter,
        *,
        memory_mb: int,
        write_reserve_seconds: float,
        work_queue: Queue | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
        gate: CpuGate = UNGATED,
        deferrer: ChunkDeferrer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The predictor, or how to build it (the model load of a cold start): built in the first
        # run, once the heartbeat keeps its messages hidden.
        self._predictor = predictor
        self.writer = writer
        self.work_queue = work_queue  # None: no refill, no heartbeat
        self.chunk_size = chunk_size  # the function's CHUNK_SIZE: the lines a refill budgets a chunk at
        self.heartbeat_seconds = heartbeat_seconds
        self.memory_mb = memory_mb
        self.write_reserve_seconds = write_reserve_seconds
        self.gate = gate  # the predictor's: the time it waits for CPUs is not billed (costs.py)
        # Sends deferred lines back for later (None: they are written FAILED rate_limited).
        self.deferrer = deferrer
        self._clock = clock
        self._writes = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="write")

    @property
    def predictor(self) -> StreamingPredictor:
        if not isinstance(self._predictor, StreamingPredictor):
            self._predictor = self._predictor()
        return self._predictor

    def run(
        self, messages: Sequence[Received | tuple[str, str]], remaining: Callable[[], float]
    ) -> dict[str, ChunkOutcome]:
        """``messages``: the event's (``event_messages``: their receipt handles are kept hidden
        while the run lives), or (message id, body) pairs; ``remaining``: seconds the invocation
        has left."""
        left = remaining()
        # A short invocation keeps a share of its time for writes, never all of it.
        deadline = self._clock() + left - min(self.write_reserve_seconds, left * WRITE_RESERVE_SHARE)
        run = _Invocation(
            self, [m if isinstance(m, Received) else Received(m[0], "", m[1]) for m in messages], remaining
        )
        try:
            if run.heartbeat is not None:
                run.heartbeat.keep({m.message_id: m.receipt_handle for m in run.event})
            first = run.admit(run.event)
            unfinished = self.predictor.run(
                [chunk.items for chunk in first],
                deadline,
                run.predicted,
                self._top_k(first),
                run.refill if self.work_queue is not None and run.event else None,
            )
            for group in unfinished:
                message_id, chunk = run.chunks[group]
                run.outcomes[message_id] = ChunkOutcome(chunk, error=ChunkUnfinishedError(chunk))
            with self.gate.idle():  # the last writes wait on S3 and DynamoDB, not on the CPU
                self._wait_for_writes(run.writes, run.outcomes, remaining)
        finally:
            if run.heartbeat is not None:
                run.heartbeat.stop()
        finish_by = self._clock() + max(remaining() - 0.5, 0.1)
        step = run.heartbeat.step if run.heartbeat is not None else self.heartbeat_seconds
        self._retry_later(run.received.values(), run.outcomes, step, finish_by)
        self._delete_taken({m: run.received[m].receipt_handle for m in run.taken}, run.outcomes, finish_by)
        return run.outcomes

    @staticmethod
    def _wait_for_writes(
        writes: dict[str, Future[bool | None]],
        outcomes: dict[str, ChunkOutcome],
        remaining: Callable[[], float],
    ) -> None:
        wait_for(writes.values(), timeout=max(remaining() - 1.0, 0.1))
        for message_id, future in writes.items():
            outcome = outcomes[message_id]
            if not future.done():
                outcome.error = TimeoutError("the chunk's write did not finish before the invocation ends")
            elif future.exception() is not None:
                outcome.error = future.exception()
                logger.error("chunk write failed", extra={"message_id": message_id}, exc_info=outcome.error)
            else:
                written = future.result()
                outcome.counted, outcome.deferred = bool(written), written is None

    def _release(self, unstarted: Sequence[Received], heartbeat: Heartbeat | None) -> None:
        """Refilled chunks with more lines than the run has room for: visible again at once, so
        another invocation takes them whole (their receive counted; none of their work done)."""
        if not unstarted or self.work_queue is None:
            return
        if heartbeat is not None:
            heartbeat.release(m.message_id for m in unstarted)
        logger.info("refill: chunks too long for the time left released", extra={"messages": len(unstarted)})
        try:
            self.work_queue.change_visibility([m.receipt_handle for m in unstarted], 0)
        except Exception:  # they come back when their visibility ends
            logger.exception("releasing refilled messages failed", extra={"messages": len(unstarted)})

    def _retry_later(
        self, received: Iterable[Received], outcomes: dict[str, ChunkOutcome], step: float, deadline: float
    ) -> None:
        """A chunk that failed (not done in time, its write failed, its claim held by another
        delivery) stays hidden for its retry delay (``retry_delay``). A malformed message is left
        to come back: it fails on every delivery, and reconcile reports it from the dead-letter
        queue."""
        if self.work_queue is None:
            return
        delays: dict[int, list[str]] = {}
        for message in received:
            outcome = outcomes.get(message.message_id)
            if (
                outcome is None
                or outcome.error is None
                or outcome.chunk is None
                or not message.receipt_handle
            ):
                continue
            delay = retry_delay(message.receive_count, step)
            delays.setdefault(delay, []).append(message.receipt_handle)
        for delay, handles in delays.items():
            try:
                self.work_queue.change_visibility(handles, delay, deadline)
            except Exception:  # they come back sooner, when the heartbeat's visibility ends
                logger.exception("hiding failed chunks failed", extra={"messages": len(handles)})

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
        ``deadline``; the others come back like an event's batch item failures."""
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

    def _defer(
        self,
        chunk: Chunk,
        records: list[ResultRecord],
        deferred: list[ImageResult],
        remaining: Callable[[], float],
        meter: ComputeMeter,
    ) -> bool | None:
        """Send the deferred lines back (None), or write the chunk if none is left in budget."""
        assert self.deferrer is not None
        ended = self.deferrer.defer(chunk, records, deferred, self.predictor.model_id)
        if ended is None:
            return None
        records[:] = ended
        return self._write(chunk, records, remaining, meter)

    def _write(
        self, chunk: Chunk, records: list[ResultRecord], remaining: Callable[[], float], meter: ComputeMeter
    ) -> bool:
        # The claim on the chunk lasts as long as this invocation can (plus a margin).
        lease = remaining() + LEASE_MARGIN_SECONDS
        return self.writer.write(chunk, records, self.predictor.model_id, lease, meter)


class _Invocation:
    """One ``ChunkBatch.run``: its messages, the predictor's groups, the writes under way."""

    def __init__(self, batch: ChunkBatch, event: list[Received], remaining: Callable[[], float]) -> None:
        self.batch = batch
        self.event = event
        self.remaining = remaining
        self.meter = ComputeMeter(batch.memory_mb, batch._clock, batch.gate.waited_seconds)
        self.outcomes: dict[str, ChunkOutcome] = {}
        self.chunks: list[tuple[str, Chunk]] = []  # the predictor's groups, in order
        self.plans: list[SharedPlan] = []  # each group's shared lines (sharing.py)
        # Looked up when a shared line's original is elsewhere, not before: a writer without a
        # job store (tests) has none to read.
        self.shared = SharedLines(
            lambda lines: batch.writer.jobs.result_rows(lines),  # noqa: PLW0108
            can_defer=batch.deferrer is not None,
        )
        self.received = {m.message_id: m for m in event}  # the event's and the refilled messages
        self.taken: list[str] = []  # refill: message ids
        self.writes: dict[str, Future[bool | None]] = {}
        queue = batch.work_queue
        self.heartbeat = Heartbeat(queue, batch.heartbeat_seconds, remaining) if queue is not None else None

    def write(self, message_id: str, chunk: Chunk, records: list[ResultRecord]) -> None:
        self.outcomes[message_id] = ChunkOutcome(chunk, records)
        self.writes[message_id] = self.batch._writes.submit(
            self.batch._write, chunk, records, self.remaining, self.meter
        )

    def admit(self, arrived: Sequence[Received], lines: float = math.inf) -> list[Chunk]:
        """Parse; chunks of a cancelled, stopped or failed job are not fetched: written at once,
        cancelled. The rest become the predictor's next groups, as many as ``lines`` hold; the
        others are made visible again, unstarted. Returned as the predictor takes them: without
        the lines copied from their original's row (sharing.py)."""
        parsed = self.batch._parse([(m.message_id, m.body) for m in arrived], self.outcomes)
        stopped = self.batch._stopped_jobs({chunk.job_id for _, chunk in parsed})
        live, unstarted = [], []
        for message_id, chunk in parsed:
            if chunk.job_id in stopped:
                self.write(message_id, chunk, stopped_records(chunk))
            elif len(chunk.items) <= lines:
                lines -= len(chunk.items)
                live.append((message_id, chunk))
            else:
                unstarted.append(self.received[message_id])
        self.batch._release(unstarted, self.heartbeat)
        self.chunks.extend(live)
        plans = self.shared.plan([chunk for _, chunk in live])
        self.plans.extend(plans)
        return [replace(chunk, items=plan.predict) for (_, chunk), plan in zip(live, plans, strict=True)]

    def predicted(self, group: int, results: list[ImageResult]) -> None:
        message_id, chunk = self.chunks[group]
        predictor = self.batch.predictor
        model, top_k = predictor.model_id, chunk.top_k or predictor.top_k
        plan = self.plans[group]
        deferring = self.batch.deferrer is not None  # without one, a deferred line is written failed
        results = [*results, *plan.waiting]
        deferred = [r for r in results if deferring and r.outcome.deferred_until is not None]
        records = [
            image_record(chunk.job_id, r, model, top_k)
            for r in results
            if not (deferring and r.outcome.deferred_until is not None)
        ]
        records = sorted(records + plan.copied, key=lambda record: record.index)
        if not deferred:
            self.write(message_id, chunk, records)
            return
        self.outcomes[message_id] = ChunkOutcome(chunk, records)
        self.writes[message_id] = self.batch._writes.submit(
            self.batch._defer, chunk, records, deferred, self.remaining, self.meter
        )

    def refill(self, lines: int) -> tuple[list[list[WorkItem]], int | None]:
        """At most as many chunks as the event brought, and as many chunks of the function's
        CHUNK_SIZE as ``lines`` hold (an event's short chunk, a job's last, is no measure of the
        next ones); a chunk longer than the room left is released unstarted."""
        queue = self.batch.work_queue
        count = min(len(self.event), lines // self.batch.chunk_size)
        if count < 1 or queue is None or self.heartbeat is None:
            return [], None
        got = queue.receive(count, self.heartbeat.visibility())
        self.received.update({r.message_id: r for r in got})
        self.taken.extend(r.message_id for r in got)
        self.heartbeat.keep({r.message_id: r.receipt_handle for r in got})
        new = self.admit(got, lines)
        return [chunk.items for chunk in new], self.batch._top_k(new)


def predict_urls(
    predictor: StreamingPredictor,
    urls: Sequence[str],
    deadline: float,
    fidelity: Fidelity = DEFAULT_FIDELITY,
    *,
    honour_robots: bool = True,
) -> list[ResultRecord]:
    """predict_api's path: the same stream for a few URLs; records without a job, in order.

    Each URL is a group of its own, so an image done before the deadline keeps its result
    and one that is not fails alone, as ``fetch_timeout``.
    """
    items = [
        WorkItem(index=i, url=url, fidelity=fidelity, honour_robots=honour_robots)
        for i, url in enumerate(urls)
    ]
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
        if outcome.deferred:
            metrics.add_metric(name="ChunksDeferred", unit=MetricUnit.Count, value=1)
            continue
        if not outcome.counted:
            # Counted by an earlier delivery: its images are in the metrics already.
            metrics.add_metric(name="ChunksRedelivered", unit=MetricUnit.Count, value=1)
            continue
        succeeded = sum(1 for r in outcome.records if r.status == SUCCEEDED)
        metrics.add_metric(name="ImagesSucceeded", unit=MetricUnit.Count, value=succeeded)
        metrics.add_metric(name="ImagesFailed", unit=MetricUnit.Count, value=len(outcome.records) - succeeded)
