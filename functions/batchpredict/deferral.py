"""Lines whose host said "not now", sent back to the work queue for later, within a budget.

A chunk is the unit of exactly-once (claim, part, rows, count), so a chunk with deferred lines
is not written: its finished lines are saved in S3 (``results.deferred_key``, one object a
round), and a copy of the chunk holding only the deferred lines goes back to the work queue
with a delay (``DelaySeconds``) and a ``Deferral`` saying since when, how often, which rounds
are saved and each line's refusals. The copy is the same chunk (same number, claim and marker):
when its last line is done, the writer writes the saved and the new records as one part and
counts the chunk once (writer.py). The job's ``deferred_lines`` counter says how many lines wait.

The budget (hostlimits.HostPolicy), per line:

* ``refusals`` answers of 429/503 to the line itself, or
* ``defer_budget_seconds`` since its chunk was first deferred, or
* ``MAX_ROUNDS`` deferrals of its chunk,

and the line ends FAILED ``rate_limited``. A host that refuses everything ends its lines sooner,
through hostlimits.refusing. So no job waits forever on one host.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from batchpredict.errors import ErrorCode
from batchpredict.hostlimits import HostPolicy
from batchpredict.messages import Chunk, Deferral
from batchpredict.observability import logger
from batchpredict.records import ResultRecord

if TYPE_CHECKING:
    from batchpredict.jobs import JobStore
    from batchpredict.pipeline import ImageResult
    from batchpredict.queues import Queue
    from batchpredict.results import ResultStore

MAX_ROUNDS = 200  # a chunk's deferrals, whatever their cause (bounds its message's size too)
SQS_MAX_DELAY_SECONDS = 900
# A refusal without Retry-After waits this long, doubled with each of the line's refusals.
REFUSAL_DELAY_SECONDS = 5.0
REFUSAL_DELAY_CAP_SECONDS = 300.0
# Lines refused by their host come back once it allows, spread by up to this share, so that the
# chunks deferred together do not all ask at once.
SPREAD = 0.25
# Lines that only wait for a busy host's turn come back after this share of the wait (spread as
# above): while the turns booked before them still run, so the host's timeline never runs dry
# waiting for them (they book the turns after; the horizon keeps a run from booking too far).
EARLY_SHARE = 0.5


def refusal_delay(refusals: int) -> float:
    return float(min(REFUSAL_DELAY_SECONDS * 2 ** max(refusals - 1, 0), REFUSAL_DELAY_CAP_SECONDS))


class ChunkDeferrer:
    def __init__(
        self,
        results: ResultStore,
        jobs: JobStore,
        queue: Queue,
        policy: HostPolicy,
        *,
        wall: Callable[[], float] = time.time,
        spread: Callable[[], float] = random.random,
    ) -> None:
        self.results = results
        self.jobs = jobs
        self.queue = queue
        self.policy = policy
        self._wall = wall
        self._spread = spread

    def defer(
        self, chunk: Chunk, done: list[ResultRecord], deferred: Sequence[ImageResult], model: str | None
    ) -> list[ResultRecord] | None:
        """Send the deferred lines back (None), or, when none is left within its budget, the
        chunk's records to write now (``done`` and those lines FAILED ``rate_limited``)."""
        now = self._wall()
        prior = chunk.deferral
        first_at = prior.first_at if prior else now
        round_ = (prior.round if prior else 0) + 1
        refusals = prior.refusals if prior else {}
        waiting: list[ImageResult] = []
        counts: dict[int, int] = {}
        ended = list(done)
        for result in deferred:
            index = result.item.index
            count = refusals.get(index, 0) + (1 if result.outcome.refused else 0)
            why = self._spent(count, now - first_at, round_)
            if why:
                error = result.outcome.error
                said = f"{error.message}; " if error is not None else ""
                ended.append(
                    ResultRecord.failed(chunk.job_id, result.item, ErrorCode.RATE_LIMITED, said + why, model)
                )
                continue
            waiting.append(result)
            if count:
                counts[index] = count
        ended.sort(key=lambda record: record.index)  # a part holds its lines in manifest order
        if not waiting:
            return ended
        saved = prior.saved if prior else ()
        if ended:
            self.results.save_deferred(chunk.job_id, chunk.chunk, round_, ended)
            saved = (*saved, round_)
        again = replace(
            chunk,
            items=[r.item for r in waiting],
            deferral=Deferral(round_, first_at, saved, counts),
        )
        delay = self._delay(waiting, counts, now)
        # Its job's message group, as split sent it: the work queue is a fair queue (queues.py).
        self.queue.send(again.body(), delay_seconds=delay, group_id=chunk.job_id)
        logger.info(
            "lines deferred",
            extra={
                "job_id": chunk.job_id,
                "chunk": chunk.chunk,
                "lines": len(waiting),
                "delay": delay,
                "round": round_,
            },
        )
        try:  # the counter is what watch shows; a miss must not send the chunk back twice
            self.jobs.add_deferred(
                chunk.job_id, chunk.chunk, len(waiting) - (len(chunk.items) if prior else 0)
            )
        except Exception:
            logger.exception("deferred counter not updated", extra={"job_id": chunk.job_id})
        return None

    def _spent(self, refusals: int, waited: float, round_: int) -> str | None:
        """Why the line's budget is spent (None: it is not)."""
        if refusals >= self.policy.refusals:
            return f"refused {refusals} times (the budget is {self.policy.refusals})"
        if waited >= self.policy.defer_budget_seconds:
            return f"deferred for {waited:.0f} s (the budget is {self.policy.defer_budget_seconds:g} s)"
        if round_ > MAX_ROUNDS:
            return f"deferred {MAX_ROUNDS} times"
        return None

    def _delay(self, waiting: Sequence[ImageResult], refusals: dict[int, int], now: float) -> int:
        """The soonest any of the lines is due, spread, in SQS's whole seconds (1..900)."""
        due = []
        for result in waiting:
            until = (result.outcome.deferred_until or now) - now
            if result.outcome.refused:
                until = max(until, refusal_delay(refusals.get(result.item.index, 1)))
            else:
                until *= EARLY_SHARE
            due.append(until)
        soonest = min(due) * (1 + SPREAD * self._spread())
        return max(1, min(SQS_MAX_DELAY_SECONDS, math.ceil(soonest)))
