"""predict's side of the lines the split marked as sharing an earlier line's fetch
(``WorkItem.shares``, set by split.FirstLines; issue 19, "fetch each distinct image once").

* The original is in the same invocation (any chunk it has taken so far, this one included):
  the line goes to the predictor, which fetches the URL once for both (sharedwork.py) and
  gives the line the original's outcome. Nothing to read.
* The original is elsewhere (an earlier chunk, written before or still running in another
  invocation): the line copies the original's IMG# row, read with those of every other such
  line of the chunks that arrived together (one eventually consistent BatchGetItem a 100
  lines, 0.5 RCU a row). No fetch, no decode, no inference.
* The row is not there yet (its chunk still runs in another invocation):
  ``when_original_missing`` decides: with a deferrer (predict's) the line is deferred
  (``ORIGINAL_WAIT_SECONDS``, through deferral.py) to read the row again when it comes back, up
  to MAX_ORIGINAL_WAITS times; then, or without a deferrer, it is predicted itself.
* The row failed for a reason of its own line, not of its image (``NOT_COPIED``), or is of
  another URL: the line is predicted itself (waiting would not change the row).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from batchpredict.errors import ErrorCode
from batchpredict.messages import Chunk
from batchpredict.observability import logger
from batchpredict.pipeline import ImageResult
from batchpredict.predictor import Outcome
from batchpredict.records import ResultRecord, Timing, WorkItem
from batchpredict.urlkey import url_key

Line = tuple[str, int]  # (job id, index)
RowReader = Callable[[Iterable[Line]], dict[Line, ResultRecord]]  # jobs.JobStore.result_rows

# An original's row that failed for a reason of its own line, not of its image: its chunk was
# dead-lettered or its job stopped, a bug, or its own row was too large (writer.storable).
NOT_COPIED = frozenset(
    code.value
    for code in (
        ErrorCode.DEAD_LETTERED,
        ErrorCode.CANCELLED,
        ErrorCode.INTERNAL_ERROR,
        ErrorCode.INVALID_MANIFEST_LINE,
    )
)


# A deferred line comes back this much later (deferral.py spreads it), to find its original's row,
# at most MAX_ORIGINAL_WAITS times (about a minute): then it is predicted itself, so that a slow
# original (its host's turn, its own deferrals) never costs the shared line its result.
ORIGINAL_WAIT_SECONDS = 15.0
MAX_ORIGINAL_WAITS = 4


class OriginalMissing(Enum):
    PREDICT = "predict"  # fetch and predict the line itself: correct, just not deduped
    DEFER = "defer"  # come back later, when the original's row may be there


def when_original_missing(item: WorkItem, waits: int) -> OriginalMissing:
    """What a shared line does when its original's row is not written yet (its chunk still runs
    in another invocation), after its chunk has been deferred ``waits`` times: wait for it, up to
    MAX_ORIGINAL_WAITS times, then predict itself."""
    return OriginalMissing.DEFER if waits < MAX_ORIGINAL_WAITS else OriginalMissing.PREDICT


@dataclass
class SharedPlan:
    """One chunk's lines: to predict (in order), copied from their original's row, waiting for
    it (deferred results, for batch.py to hand to the deferrer with the predicted ones)."""

    predict: list[WorkItem] = field(default_factory=list)
    copied: list[ResultRecord] = field(default_factory=list)
    waiting: list[ImageResult] = field(default_factory=list)


def copied_record(job_id: str, item: WorkItem, original: ResultRecord) -> ResultRecord:
    """``item``'s result from its original's row: the same predictions, image and error, its
    own line (index, id, url, metadata), no time of its own, and the line whose fetch it
    shares named (the original, or the line the original shares its fetch with)."""
    return ResultRecord.for_item(
        job_id,
        item,
        model=original.model,
        error=original.error,
        predictions=original.predictions,
        image=original.image,
        timing=Timing(),
        shared_with=original.index if original.shared_with is None else original.shared_with,
    )


class SharedLines:
    """One invocation's shared lines: which originals it has, and the rows of those it has not."""

    def __init__(
        self, read_rows: RowReader, *, can_defer: bool = False, wall: Callable[[], float] = time.time
    ) -> None:
        self._read_rows = read_rows
        self._can_defer = can_defer
        self._wall = wall
        self._lines: set[Line] = set()  # every line of every chunk taken so far

    def plan(self, chunks: Sequence[Chunk]) -> list[SharedPlan]:
        """A plan for each of ``chunks``, which have just arrived (after every chunk before)."""
        self._lines.update((chunk.job_id, item.index) for chunk in chunks for item in chunk.items)
        elsewhere = [
            (chunk.job_id, item.shares)
            for chunk in chunks
            for item in chunk.items
            if item.shares is not None and (chunk.job_id, item.shares) not in self._lines
        ]
        rows = self._rows(elsewhere)
        return [self._plan(chunk, rows) for chunk in chunks]

    def _rows(self, lines: list[Line]) -> dict[Line, ResultRecord]:
        if not lines:
            return {}
        try:
            return self._read_rows(lines)
        except Exception:  # the lines are then predicted for themselves
            logger.exception("reading shared lines' originals failed", extra={"lines": len(lines)})
            return {}

    def _plan(self, chunk: Chunk, rows: dict[Line, ResultRecord]) -> SharedPlan:
        plan = SharedPlan()
        for item in chunk.items:
            if item.shares is None or (chunk.job_id, item.shares) in self._lines:
                plan.predict.append(item)
                continue
            original = rows.get((chunk.job_id, item.shares))
            if original is not None and _copyable(original, item):
                plan.copied.append(copied_record(chunk.job_id, item, original))
            elif (
                original is None
                and self._can_defer
                and when_original_missing(item, chunk.deferral.round if chunk.deferral else 0)
                is OriginalMissing.DEFER
            ):
                outcome = Outcome(deferred_until=self._wall() + ORIGINAL_WAIT_SECONDS)
                plan.waiting.append(ImageResult(item, outcome))
            else:
                plan.predict.append(item)
        return plan


def _copyable(original: ResultRecord, item: WorkItem) -> bool:
    # The URL check guards against anything but the split's own marking (a digest collision).
    failed_for_itself = original.error is not None and original.error.code in NOT_COPIED
    return not failed_for_itself and url_key(original.url or "") == url_key(item.url or "")
