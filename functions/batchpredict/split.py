"""split_manifest logic: one manifest-queue message -> a job record and chunk messages.

Chunks are numbered by item index (chunk k holds items k*C .. k*C+C-1), so the number
of chunks follows from the line count alone and a re-split of the same range produces
the same chunks, which the chunk markers then count once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchpredict.finalize import fail_job
from batchpredict.inputs import ManifestStore, ManifestUnreadableError
from batchpredict.jobs import JobStatus, JobStore
from batchpredict.manifest import (
    ImageLine,
    InvalidLine,
    ManifestError,
    ManifestItem,
    Position,
    detect_format,
    iter_manifest,
)
from batchpredict.messages import Chunk, Continuation, ManifestObject, finalize_body, parse_manifest_message
from batchpredict.observability import logger
from batchpredict.queues import SEND_BATCH_LIMIT, Queue
from batchpredict.records import WorkItem
from batchpredict.results import ResultStore


@dataclass(frozen=True)
class SplitSettings:
    chunk_size: int = 16
    max_manifest_lines: int = 1_000_000
    # Bombs: a 1 MB .gz can expand to 1 GB of newlines, which no item count would see.
    max_physical_lines: int = 2_000_000  # blank lines and comments included
    max_manifest_bytes: int = 2 * 1024**3  # decompressed
    # Stop and hand over to a continuation when less than this much invocation time is left.
    time_reserve_ms: int = 20_000


@dataclass(frozen=True)
class SplitOutcome:
    job_id: str | None
    action: str  # "split", "continued", "duplicate", "failed", "skipped", "stale"
    items: int = 0


def work_item(item: ManifestItem) -> WorkItem:
    if isinstance(item, InvalidLine):
        return WorkItem(
            index=item.index,
            url=item.raw,
            id=item.id,
            error={"code": item.code.value, "message": item.message},
        )
    assert isinstance(item, ImageLine)
    return WorkItem(index=item.index, url=item.url, id=item.id, metadata=item.metadata)


class _OutOfTimeError(Exception):
    """The split must hand over to a continuation at ``position``."""

    def __init__(self, position: Position) -> None:
        super().__init__(position)
        self.position = position


class Splitter:
    def __init__(
        self,
        jobs: JobStore,
        s3: Any,
        work: Queue,
        manifests: Queue,
        finalize: Queue,
        settings: SplitSettings,
        results: ResultStore,
    ) -> None:
        self.jobs = jobs
        self.results = results
        self.inputs = ManifestStore(s3)
        self.work = work
        self.manifests = manifests
        self.finalize = finalize
        self.settings = settings

    def handle(self, message_id: str, body: str, remaining_ms: Callable[[], int]) -> list[SplitOutcome]:
        message = parse_manifest_message(body)
        if message.continuation is not None:
            return [self._continue(message.continuation, remaining_ms)]
        if not message.objects:
            logger.info(
                "no ObjectCreated record in message (e.g. s3:TestEvent)", extra={"message_id": message_id}
            )
            return [SplitOutcome(None, "skipped")]
        return [self._start(obj, message_id, remaining_ms) for obj in message.objects]

    def _start(self, obj: ManifestObject, message_id: str, remaining_ms: Callable[[], int]) -> SplitOutcome:
        job_id = obj.job_id
        logger.append_keys(job_id=job_id, manifest=obj.uri)
        position = Position()
        if not self.jobs.create(job_id, obj.uri, message_id):
            job = self.jobs.get(job_id)
            # The same SQS message again means our earlier attempt died mid-split: resume.
            # Any other message for the same object version is a duplicate S3 event.
            if job is None or job.status != JobStatus.SPLITTING or job.split_message_id != message_id:
                logger.info("duplicate event for an existing job", extra={"status": job and job.status})
                return SplitOutcome(job_id, "duplicate")
            position = Position.from_dict(job.position) if job.position else Position()
        return self._split(job_id, obj, position, remaining_ms)

    def _continue(self, continuation: Continuation, remaining_ms: Callable[[], int]) -> SplitOutcome:
        logger.append_keys(job_id=continuation.job_id, manifest=continuation.manifest.uri)
        job = self.jobs.get(continuation.job_id)
        if job is None or job.status != JobStatus.SPLITTING:
            return SplitOutcome(continuation.job_id, "stale")
        return self._split(
            continuation.job_id,
            continuation.manifest,
            Position.from_dict(continuation.position),
            remaining_ms,
        )

    def _open(self, obj: ManifestObject, gzipped: bool, start: Position) -> tuple[Any, bool]:
        at_offset = not gzipped and start.byte_offset > 0  # gzip cannot start mid-stream: re-read and skip
        body = self.inputs.open(obj.bucket, obj.key, obj.version_id, start.byte_offset if at_offset else 0)
        return body, at_offset

    def _split(
        self, job_id: str, obj: ManifestObject, start: Position, remaining_ms: Callable[[], int]
    ) -> SplitOutcome:
        try:
            fmt, gzipped = detect_format(obj.key)
            body, at_offset = self._open(obj, gzipped, start)
        except (ManifestError, ManifestUnreadableError) as exc:
            return self._fail(job_id, str(exc))
        size = self.settings.chunk_size
        chunk_items: list[WorkItem] = []
        bodies: list[str] = []
        position = whole = start  # whole: just after the last whole chunk
        settings = self.settings

        def tick(at: Position) -> None:
            # Lines that yield no item (blank, comments) pass here too, every so many.
            if remaining_ms() < settings.time_reserve_ms:
                raise _OutOfTimeError(at)

        try:
            for item, position in iter_manifest(
                body,
                fmt,
                gzipped,
                start=start,
                stream_is_at_offset=at_offset,
                max_lines=settings.max_manifest_lines,
                max_physical_lines=settings.max_physical_lines,
                max_bytes=settings.max_manifest_bytes,
                tick=tick,
            ):
                chunk_items.append(work_item(item))
                if len(chunk_items) < size:
                    continue
                bodies.append(Chunk(job_id, item.index // size, chunk_items).body())
                chunk_items = []
                whole = position
                if len(bodies) == SEND_BATCH_LIMIT:
                    self.work.send_batch(bodies)
                    bodies = []
                    if remaining_ms() < settings.time_reserve_ms:
                        return self._hand_over(job_id, obj, position, position.index - start.index)
        except ManifestError as exc:
            return self._fail(job_id, f"manifest {obj.uri} cannot be read: {exc}")
        except _OutOfTimeError as late:
            self.work.send_batch(bodies)
            return self._out_of_time(job_id, obj, start, whole if chunk_items else late.position)
        finally:
            body.close()
        if chunk_items:
            bodies.append(Chunk(job_id, chunk_items[0].index // size, chunk_items).body())
        self.work.send_batch(bodies)
        total = position.index
        job = self.jobs.finish_split(job_id, total, math.ceil(total / size))
        logger.info("manifest split", extra={"total": total, "chunks": math.ceil(total / size)})
        if job is not None and job.all_chunks_done:
            # Empty manifest, or every chunk finished before the split did.
            self.finalize.send(finalize_body(job_id))
        return SplitOutcome(job_id, "split", total - start.index)

    def _out_of_time(
        self, job_id: str, obj: ManifestObject, start: Position, resume: Position
    ) -> SplitOutcome:
        """Time ran short between items (the whole chunks are sent): continue from ``resume``.

        A partial chunk is not sent (the continuation would send its number again, fuller):
        ``resume`` is then just after the last whole chunk, and its lines are read again. When
        that is no further than ``start`` (or time ran out while a .gz was re-read up to it), a
        continuation would only do the same again: the job fails instead.
        """
        if resume.line <= start.line:
            return self._fail(
                job_id,
                f"manifest {obj.uri} cannot be split: an invocation ran out of time before it could "
                f"send a chunk past line {start.line} (a .gz is re-read from its start)",
            )
        return self._hand_over(job_id, obj, resume, resume.index - start.index)

    def _hand_over(self, job_id: str, obj: ManifestObject, position: Position, items: int) -> SplitOutcome:
        checkpoint = position.to_dict()
        self.jobs.checkpoint(job_id, checkpoint)
        self.manifests.send(Continuation(job_id, obj, checkpoint).body())
        logger.info("split continues in a new invocation", extra={"position": checkpoint})
        return SplitOutcome(job_id, "continued", items)

    def _fail(self, job_id: str, reason: str) -> SplitOutcome:
        fail_job(self.jobs, self.results, job_id, reason)
        return SplitOutcome(job_id, "failed")
