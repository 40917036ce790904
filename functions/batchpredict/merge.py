"""Merging a job's parts into its results files: parallel ordered reads, checkpointed uploads.

Parts are read by ``read_concurrency`` threads over a window of ``prefetch_chunks`` chunks
ahead of the writer, and consumed strictly in chunk order; every line's index is checked.
Lines gather in a buffer that is cut into an upload part at the first chunk boundary past
``part_bytes``, so a checkpoint (merges.py) names exactly the next chunk to read: after every
uploaded part it records the upload id, the parts' ETags, the next chunk and the tally.
Memory stays at about one part plus the window, whatever the job's size.

An invocation always uploads at least one part before it may stop, so every invocation
moves the merge on; it stops (``CONTINUED``) after a part when less than
``time_reserve_seconds`` remain, and the next one resumes from the checkpoint. A job
smaller than one part is written with a single PUT. A results file holds at most
``file_parts`` parts; the lines after that continue in the next numbered file.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import NoReturn

from batchpredict.jobs import Job
from batchpredict.merges import MergeCheckpoint, MergeStore, ResultsFile
from batchpredict.observability import logger
from batchpredict.records import ResultRecord
from batchpredict.results import ResultStore, UploadGoneError, results_key

MIB = 1024 * 1024
S3_MIN_PART_BYTES = 5 * MIB  # every part but the last (S3 limit)
S3_MAX_PART_BYTES = 5 * 1024 * MIB
S3_MAX_PARTS = 10_000


@dataclass(frozen=True)
class MergeSettings:
    read_concurrency: int = 16
    prefetch_chunks: int = 128
    part_bytes: int = 16 * MIB
    # Parts a results file may have: 1,000 x 16 MiB = 16 GiB a file, and a checkpoint of 1,000
    # ETags (~40 KB) stays far under DynamoDB's 400 KB item limit.
    file_parts: int = 1000
    time_reserve_seconds: float = 60.0


class MergeMismatchError(RuntimeError):
    """The parts do not hold exactly one line per manifest line, in order."""


class MergeState(StrEnum):
    DONE = "done"  # every results file completed
    CONTINUED = "continued"  # out of time: a new invocation resumes from the checkpoint
    SUPERSEDED = "superseded"  # another finalizer of the job moved the merge on


@dataclass(frozen=True)
class MergeOutcome:
    state: MergeState
    checkpoint: MergeCheckpoint


class _StopError(Exception):
    def __init__(self, state: MergeState) -> None:
        self.state = state


@dataclass
class _Tally:
    lines: int
    succeeded: int
    errors: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, cp: MergeCheckpoint) -> _Tally:
        return cls(cp.lines, cp.succeeded, Counter(cp.errors), Counter(cp.models))

    def into(self, cp: MergeCheckpoint, next_chunk: int) -> MergeCheckpoint:
        return replace(
            cp,
            next_chunk=next_chunk,
            lines=self.lines,
            succeeded=self.succeeded,
            errors=dict(self.errors),
            models=dict(self.models),
        )


def ordered_prefetch(
    fetch: Callable[[int], bytes | None], keys: range, workers: int, window: int
) -> Generator[bytes | None, None, None]:
    """``fetch(k)`` for every key, ``workers`` at a time and at most ``window`` ahead, in order."""
    pending: deque[Future[bytes | None]] = deque()
    upcoming = iter(keys)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="merge-read") as pool:
        try:
            for key in upcoming:
                pending.append(pool.submit(fetch, key))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # stopped early: drop what was not started
            for future in pending:
                future.cancel()


class Merger:
    def __init__(self, results: ResultStore, merges: MergeStore, settings: MergeSettings) -> None:
        self.results = results
        self.merges = merges
        self.settings = settings

    def run(self, job: Job, remaining_seconds: Callable[[], float]) -> MergeOutcome:
        cp = self.merges.get(job.job_id)
        try:
            if cp.done:
                return MergeOutcome(MergeState.DONE, cp)
            if len(cp.etags) >= self.settings.file_parts and cp.next_chunk < job.chunks_total:
                cp = self._complete_file(
                    job, cp
                )  # the last run died between a full file's last part and its completion
            return self._merge(job, cp, remaining_seconds)
        except _StopError as stop:
            return MergeOutcome(stop.state, self.merges.get(job.job_id))

    def _merge(self, job: Job, cp: MergeCheckpoint, remaining_seconds: Callable[[], float]) -> MergeOutcome:
        tally = _Tally.of(cp)
        buffer = bytearray()
        chunks = range(cp.next_chunk, job.chunks_total)
        parts = ordered_prefetch(
            lambda c: self.results.read_part(job.job_id, c),
            chunks,
            self.settings.read_concurrency,
            self.settings.prefetch_chunks,
        )
        with closing(parts):
            for chunk, data in zip(chunks, parts, strict=True):
                buffer += _checked_lines(job, chunk, data, tally)
                if len(buffer) < self.settings.part_bytes:
                    continue
                cp = self._upload(job, tally.into(cp, chunk + 1), bytes(buffer))
                buffer.clear()
                if len(cp.etags) >= self.settings.file_parts and chunk + 1 < job.chunks_total:
                    cp = self._complete_file(job, cp)
                if remaining_seconds() < self.settings.time_reserve_seconds:
                    logger.info("merge continues in a new invocation", extra={"next_chunk": cp.next_chunk})
                    return MergeOutcome(MergeState.CONTINUED, cp)
        if tally.lines != job.total:
            raise MergeMismatchError(
                f"{job.job_id}: parts hold {tally.lines} lines, the manifest {job.total}"
            )
        return MergeOutcome(
            MergeState.DONE, self._finish(job, tally.into(cp, job.chunks_total), bytes(buffer))
        )

    def _upload(self, job: Job, cp: MergeCheckpoint, body: bytes) -> MergeCheckpoint:
        """Upload ``body`` as the open file's next part and save ``cp`` with it."""
        key = results_key(job.job_id, cp.file_number)
        created = cp.upload_id is None
        upload_id = cp.upload_id or self.results.start_upload(key)
        try:
            etag = self.results.upload_part(key, upload_id, len(cp.etags) + 1, body)
        except UploadGoneError:
            self._upload_gone(cp)
        saved = self.merges.save(
            replace(cp, upload_id=upload_id, etags=[*cp.etags, etag], file_bytes=cp.file_bytes + len(body))
        )
        if saved is None:
            if created:
                self.results.abort_upload(key, upload_id)
            raise _StopError(MergeState.SUPERSEDED)
        return saved

    def _complete_file(self, job: Job, cp: MergeCheckpoint, done: bool = False) -> MergeCheckpoint:
        key = results_key(job.job_id, cp.file_number)
        if cp.upload_id is not None:
            try:
                self.results.complete_upload(key, cp.upload_id, cp.etags)
            except UploadGoneError:
                self._upload_gone(cp)
        finished = ResultsFile(key, cp.file_first_index, cp.lines - cp.file_first_index, cp.file_bytes)
        nxt = replace(
            cp,
            files=[*cp.files, finished],
            file_number=cp.file_number + 1,
            file_first_index=cp.lines,
            file_bytes=0,
            upload_id=None,
            etags=[],
            done=done,
        )
        return self._save(replace(nxt, file_number=cp.file_number) if done else nxt)

    def _finish(self, job: Job, cp: MergeCheckpoint, tail: bytes) -> MergeCheckpoint:
        if cp.upload_id is None:  # nothing was cut from this file: one PUT
            self.results.put_file(results_key(job.job_id, cp.file_number), tail)
            cp = replace(cp, file_bytes=len(tail))
        elif tail:
            cp = self._upload(job, cp, tail)
        return self._complete_file(job, cp, done=True)

    def _save(self, cp: MergeCheckpoint) -> MergeCheckpoint:
        saved = self.merges.save(cp)
        if saved is None:
            raise _StopError(MergeState.SUPERSEDED)
        return saved

    def _upload_gone(self, cp: MergeCheckpoint) -> NoReturn:
        """Our upload vanished: another finalizer completed it (and moved on), or the output
        bucket's lifecycle rule aborted it (then the merge starts over)."""
        if self.merges.get(cp.job_id).version != cp.version:
            raise _StopError(MergeState.SUPERSEDED)
        logger.warning("results upload gone, merge starts over", extra={"upload_id": cp.upload_id})
        self._save(MergeCheckpoint(cp.job_id, version=cp.version))
        raise _StopError(MergeState.CONTINUED)


def _checked_lines(job: Job, chunk: int, data: bytes | None, tally: _Tally) -> bytes:
    """The part's lines, each ending in a newline, after checking they come in manifest order."""
    if data is None:
        raise MergeMismatchError(f"{job.job_id}: chunk {chunk} was counted but has no part")
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        record = ResultRecord.from_json(json.loads(line))
        if record.index != tally.lines:
            raise MergeMismatchError(
                f"{job.job_id}: chunk {chunk} holds line {record.index}, expected {tally.lines}"
            )
        tally.lines += 1
        if record.error is None:
            tally.succeeded += 1
        else:
            tally.errors[record.error.code] += 1
        if record.model:
            tally.models[record.model] += 1
        out.append(line)
    out.append(b"")
    return b"\n".join(out)
