"""split_manifest logic: one manifest-queue message -> a job record and chunk messages.

Chunks are numbered by item index (chunk k holds items k*C .. k*C+C-1), so the number
of chunks follows from the line count alone and a re-split of the same range produces
the same chunks, which the chunk markers then count once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from batchpredict.errors import ErrorCode
from batchpredict.events import JobEvents
from batchpredict.fidelity import Fidelity
from batchpredict.finalize import fail_job
from batchpredict.inputs import ManifestBody, ManifestStore, ManifestUnreadableError
from batchpredict.jobs import STOPPED_STATUSES, JobStatus, JobStore
from batchpredict.manifest import (
    InvalidLine,
    ManifestError,
    ManifestItem,
    Position,
    detect_format,
    iter_manifest,
)
from batchpredict.messages import (
    MAX_WORK_ITEM_BYTES,
    Chunk,
    Continuation,
    ManifestObject,
    finalize_body,
    parse_manifest_message,
    work_item_bytes,
)
from batchpredict.observability import logger
from batchpredict.options import ROBOTS_IGNORE, JobOptions, OptionError, parse_options
from batchpredict.queues import SEND_BATCH_LIMIT, Queue
from batchpredict.records import WorkItem, preview
from batchpredict.results import ResultStore
from batchpredict.throttling import is_transient
from batchpredict.urlkey import url_digest
from batchpredict.writer import ChunkWriter

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class SplitSettings:
    chunk_size: int = 16
    max_manifest_lines: int = 1_000_000
    # Bombs: a 1 MB .gz can expand to 1 GB of newlines, which no item count would see.
    max_physical_lines: int = 2_000_000  # blank lines and comments included
    max_manifest_bytes: int = 2 * 1024**3  # decompressed
    # Stop and hand over to a continuation when less than this much invocation time is left.
    time_reserve_ms: int = 20_000
    # How often a split asks whether its job was cancelled meanwhile.
    status_check_seconds: float = 1.0
    # Distinct URLs a split invocation remembers to mark later duplicates (FirstLines): ~125
    # bytes each, 500,000 ~ 62 MB of the splitter's 512 MB; 0 turns marking off.
    dedupe_max_urls: int = 500_000


@dataclass(frozen=True)
class SplitOutcome:
    job_id: str | None
    action: str  # "split", "continued", "duplicate", "failed", "skipped", "stale"
    items: int = 0


def work_item(item: ManifestItem) -> WorkItem:
    """The line as it travels in its chunk message; a line that would not fit one (escaping can
    grow it), or holds text UTF-8 cannot carry, becomes an invalid line of its own."""
    if isinstance(item, InvalidLine):
        carried = WorkItem(
            index=item.index,
            url=item.raw,
            id=item.id,
            error={"code": item.code.value, "message": item.message},
        )
    else:
        carried = WorkItem(index=item.index, url=item.url, id=item.id, metadata=item.metadata)
    try:
        size = work_item_bytes(carried)
    except UnicodeEncodeError:
        return _unsendable(item, "holds text UTF-8 cannot carry (a lone surrogate)")
    if size > MAX_WORK_ITEM_BYTES:
        return _unsendable(
            item, f"is {size} bytes as a work item (escapes included), over {MAX_WORK_ITEM_BYTES}"
        )
    return carried


def _unsendable(item: ManifestItem, why: str) -> WorkItem:
    """A failed line in place of ``item``, its url and id cut to a preview (bounded whatever they hold)."""
    url = item.raw if isinstance(item, InvalidLine) else item.url
    return WorkItem(
        index=item.index,
        url=preview(url),
        id=preview(item.id),
        error={"code": ErrorCode.INVALID_MANIFEST_LINE.value, "message": f"line {item.line}: the line {why}"},
    )


class FirstLines:
    """The first line of each distinct URL (urlkey.py) a split has sent, so that a later line
    with the same URL is marked ``shares`` = that line (predict then fetches it once: sharing.py).

    Bounded: a 16-byte digest and the index per URL, at most ``limit`` URLs; past that, new URLs
    are not remembered (their duplicates are fetched for themselves), while those remembered
    still mark theirs. One map per split invocation: a continuation (a long manifest's next
    invocation) starts an empty one, so a duplicate across that boundary is not marked.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._first: dict[bytes, int] = {}

    def mark(self, item: WorkItem) -> WorkItem:
        """``item``, marked if an earlier line had its URL; remembered if it is the first."""
        if item.error is not None or not item.url or not self.limit:
            return item
        digest = url_digest(item.url)
        first = self._first.get(digest)
        if first is not None:
            # ~20 bytes more in the message: within the slack messages.py's size bound leaves.
            return replace(item, shares=first)
        if len(self._first) < self.limit:
            self._first[digest] = item.index
        return item


class _OutOfTimeError(Exception):
    """The split must hand over to a continuation at ``position``."""

    def __init__(self, position: Position) -> None:
        super().__init__(position)
        self.position = position


class Splitter:
    def __init__(
        self,
        jobs: JobStore,
        s3: S3Client,
        work: Queue,
        manifests: Queue,
        finalize: Queue,
        settings: SplitSettings,
        results: ResultStore,
        events: JobEvents | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jobs = jobs
        self.results = results
        self.events = events
        self.inputs = ManifestStore(s3)
        self.work = work
        self.manifests = manifests
        self.finalize = finalize
        self.settings = settings
        # Chunks of a job cancelled mid-split are written here as cancelled instead of sent.
        self.writer = ChunkWriter(jobs, results, finalize)
        self._clock = clock

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
        options, bad_option = self._options(obj)
        stored_options = options.as_item()
        created = self.jobs.create(
            job_id, obj.uri, message_id, manifest_version=obj.version_id, options=stored_options
        )
        checkpoint: dict[str, Any] = {}
        if not created:
            job = self.jobs.get(job_id)
            # The same SQS message again means our earlier attempt died mid-split: resume.
            # Any other message for the same object version is a duplicate S3 event.
            resumable = job is not None and job.status in (JobStatus.SPLITTING, JobStatus.CANCELLING)
            if job is None or not resumable or job.split_message_id != message_id:
                logger.info("duplicate event for an existing job", extra={"status": job and job.status})
                return SplitOutcome(job_id, "duplicate")
            checkpoint = job.position
        if bad_option:
            # Never silently ignored: the job fails at once, naming the option.
            return self._fail(job_id, f"manifest {obj.uri}: {bad_option}")
        chunk_options = _chunk_options(
            stored_options.get("top_k"),
            stored_options.get("max_failures"),
            stored_options.get("fidelity"),
            stored_options.get("host_rps"),
            robots=stored_options.get("robots"),
        )
        return self._guarded(
            job_id,
            obj,
            lambda: self._split(job_id, obj, _resume_at(checkpoint), remaining_ms, chunk_options),
        )

    def _options(self, obj: ManifestObject) -> tuple[JobOptions, str | None]:
        """The job's options from the manifest's user metadata, read once, and what is wrong with
        them. A manifest that cannot be read has none: the split then fails it with the reason."""
        try:
            return parse_options(self.inputs.metadata(obj.bucket, obj.key, obj.version_id)), None
        except OptionError as exc:
            return JobOptions(), str(exc)
        except ManifestUnreadableError:
            return JobOptions(), None

    def _continue(self, continuation: Continuation, remaining_ms: Callable[[], int]) -> SplitOutcome:
        logger.append_keys(job_id=continuation.job_id, manifest=continuation.manifest.uri)
        job = self.jobs.get(continuation.job_id)
        # A job cancelled mid-split is split to the end all the same: its lines are written cancelled.
        if job is None or job.status not in (JobStatus.SPLITTING, JobStatus.CANCELLING):
            return SplitOutcome(continuation.job_id, "stale")
        return self._guarded(
            job.job_id,
            continuation.manifest,
            lambda: self._split(
                job.job_id,
                continuation.manifest,
                Position.from_dict(continuation.position),
                remaining_ms,
                _chunk_options(job.top_k, job.max_failures, job.fidelity, job.host_rps, robots=job.robots),
            ),
        )

    def _guarded(self, job_id: str, obj: ManifestObject, split: Callable[[], SplitOutcome]) -> SplitOutcome:
        """``split()``, with the job FAILED, naming the error, if it raises anything but a transient
        AWS error: one that will raise again must not leave the job SPLITTING while its message
        is redelivered into the dead-letter queue. A transient one is redelivered and resumes
        at the checkpoint (the manifest dead-letter queue's consumer fails the job if it never
        gets through)."""
        try:
            return split()
        except Exception as exc:
            if is_transient(exc):
                raise
            logger.exception("split failed")
            return self._fail(job_id, f"manifest {obj.uri} could not be split: {_described(exc)}")

    def _open(self, obj: ManifestObject, gzipped: bool, start: Position) -> tuple[ManifestBody, bool]:
        at_offset = not gzipped and start.byte_offset > 0  # gzip cannot start mid-stream: re-read and skip
        body = self.inputs.open(obj.bucket, obj.key, obj.version_id, start.byte_offset if at_offset else 0)
        return body, at_offset

    def _split(
        self,
        job_id: str,
        obj: ManifestObject,
        start: Position,
        remaining_ms: Callable[[], int],
        chunk_options: dict[str, Any],
    ) -> SplitOutcome:
        try:
            fmt, gzipped = detect_format(obj.key)
            body, at_offset = self._open(obj, gzipped, start)
        except (ManifestError, ManifestUnreadableError) as exc:
            return self._fail(job_id, str(exc))
        size = self.settings.chunk_size
        chunk_items: list[WorkItem] = []
        chunks: list[Chunk] = []
        position = whole = start  # whole: just after the last whole chunk
        settings = self.settings
        dispatch = _Dispatcher(self, job_id, remaining_ms)
        first_lines = FirstLines(settings.dedupe_max_urls)

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
                chunk_items.append(first_lines.mark(work_item(item)))
                if len(chunk_items) < size:
                    continue
                chunks.append(Chunk(job_id, item.index // size, chunk_items, **chunk_options))
                chunk_items = []
                whole = position
                if len(chunks) == SEND_BATCH_LIMIT:
                    dispatch(chunks)
                    chunks = []
                    if remaining_ms() < settings.time_reserve_ms:
                        return self._hand_over(job_id, obj, position, position.index - start.index)
        except ManifestError as exc:
            return self._fail(job_id, f"manifest {obj.uri} cannot be read: {exc}")
        except _OutOfTimeError as late:
            dispatch(chunks)
            return self._out_of_time(job_id, obj, start, whole if chunk_items else late.position)
        finally:
            body.close()
        if chunk_items:
            chunks.append(Chunk(job_id, chunk_items[0].index // size, chunk_items, **chunk_options))
        dispatch(chunks)
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
        fail_job(self.jobs, self.results, job_id, reason, self.events)
        return SplitOutcome(job_id, "failed")


def _chunk_options(
    top_k: int | None,
    max_failures: str | None,
    fidelity: str | None,
    host_rps: str | None = None,
    *,
    robots: str | None = None,
) -> dict[str, Any]:
    """The job's options every chunk message carries, so predict needs no lookup for them."""
    return {
        "top_k": top_k,
        "max_failures": max_failures,
        "fidelity": Fidelity(fidelity) if fidelity is not None else None,
        "host_rps": float(host_rps) if host_rps is not None else None,
        "ignore_robots": robots == ROBOTS_IGNORE,
    }


def _resume_at(checkpoint: dict[str, Any]) -> Position:
    return Position.from_dict(checkpoint) if checkpoint else Position()


def _described(exc: Exception, limit: int = 500) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "…"


class _Dispatcher:
    """Sends a split's chunks to the work queue until the job is found cancelled (asked at most
    once per ``status_check_seconds``); from then on writes them as cancelled, so every line
    still ends as one result and predict never sees them."""

    def __init__(self, splitter: Splitter, job_id: str, remaining_ms: Callable[[], int]) -> None:
        self.splitter = splitter
        self.job_id = job_id
        self.remaining_ms = remaining_ms
        self.stopped = False
        self._next_check = 0.0

    def __call__(self, chunks: list[Chunk]) -> None:
        if not chunks:
            return
        if self._stopped():
            for chunk in chunks:
                # The claim lasts as long as this invocation can, as predict's does.
                self.splitter.writer.write_stopped(chunk, self.remaining_ms() / 1000 + 5.0)
            return
        # The job's id as MessageGroupId: SQS fair queues deliver other jobs' chunks ahead of a
        # large job's backlog (queues.py).
        self.splitter.work.send_batch([chunk.body() for chunk in chunks], group_id=self.job_id)

    def _stopped(self) -> bool:
        now = self.splitter._clock()
        if not self.stopped and now >= self._next_check:
            self._next_check = now + self.splitter.settings.status_check_seconds
            self.stopped = self.splitter.jobs.status(self.job_id) in STOPPED_STATUSES
            if self.stopped:
                logger.info("job stopped mid-split: the rest of its lines are written cancelled")
        return self.stopped
