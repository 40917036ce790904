"""A job's deadline: the longest it can legitimately take on this stack, or its ``timeout`` option.

No job may stay SPLITTING, RUNNING or CANCELLING for ever: every JOB record carries
``deadline_at`` (epoch seconds), and the sweeper (sweep.py) ends a job still open past it.
The deadline is generous (every stage's every retry at its full timeout) but finite:

* while splitting (set at create, pushed on at each continuation's checkpoint):
  ``now + split_seconds``: one split message and its redeliveries (the manifest queue's
  maxReceiveCount x its visibility timeout);
* once the split is done and the chunk count ``n`` known: ``now + run_seconds(n)`` =
  ``ceil(n / parallel_chunks) x predict_seconds x attempts`` (every wave of predict invocations
  at its full timeout, each chunk delivered the most times the work queue allows;
  ``parallel_chunks`` = WorkBatchSize x PredictMaxConcurrency) ``+ retry_seconds`` (the last
  chunk's redeliveries, each held back the longer of the queue's visibility timeout and
  RETRY_HOLD_FACTOR x predict's timeout, then reconcile's first try) ``+ finalize_seconds``
  (finalize and its redeliveries) ``+ n / MERGE_PARTS_PER_SECOND`` (a merge continued over
  several invocations) ``+ defer_seconds`` (lines waiting for their hosts' turns: deferral.py);
* a job uploaded with ``x-amz-meta-timeout: T``: ``created + T`` from the start, never moved.

The defaults cover the template's numbers (``tests/infra`` derives what the template lets a job
take, through ``local.template.deadline_environment``, and checks the defaults are no shorter);
the local stack provisions its own, from its capped timeouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

# The reason a job the sweeper ended carries (its error starts with it).
TIMED_OUT = "timed_out"
# The slowest merge allowed for: parts of 16 lines, read 16 at a time, go faster than this.
MERGE_PARTS_PER_SECOND = 10.0
# The longest a failed chunk may be held back before its next delivery, in predict timeouts.
RETRY_HOLD_FACTOR = 8
# The template's WorkBatchSize and PredictMaxConcurrency defaults.
DEFAULT_WORK_BATCH_SIZE = 8
DEFAULT_PREDICT_CONCURRENCY = 20


@dataclass(frozen=True)
class DeadlineSettings:
    """The stack's timeouts and retry budgets that bound a job (seconds)."""

    split_seconds: float = 5 * 1800  # ManifestQueue: maxReceiveCount x VisibilityTimeout
    predict_seconds: float = 90  # PredictFunction's timeout: one wave of invocations
    attempts: int = 10  # WorkQueue's maxReceiveCount: deliveries of one chunk
    # WorkBatchSize x PredictMaxConcurrency: chunks in flight (an invocation that refills takes
    # more in a wave, so a job's waves are fewer: the deadline stays a bound)
    parallel_chunks: int = DEFAULT_WORK_BATCH_SIZE * DEFAULT_PREDICT_CONCURRENCY
    # WorkQueue's redeliveries, each held back max(its visibility, RETRY_HOLD_FACTOR x predict's
    # timeout), then reconcile's first try (WorkDeadLetterQueue's visibility)
    retry_seconds: float = 10 * RETRY_HOLD_FACTOR * 90 + 360
    finalize_seconds: float = 10 * 300  # FinalizeQueue: maxReceiveCount x VisibilityTimeout
    defer_seconds: float = 3600  # DEFER_BUDGET_SECONDS: the longest a line waits for its host

    def run_seconds(self, chunks: int) -> float:
        """From the end of the split to the end of finalize, for a job of ``chunks`` chunks."""
        waves = math.ceil(chunks / max(self.parallel_chunks, 1))
        predict = waves * self.predict_seconds * self.attempts + self.retry_seconds
        return predict + self.finalize_seconds + chunks / MERGE_PARTS_PER_SECOND + self.defer_seconds

    def splitting(self, now: float) -> int:
        """The provisional deadline of a job that is (still) splitting."""
        return math.ceil(now + self.split_seconds)

    def running(self, now: float, chunks: int) -> int:
        """The deadline of a job whose split just ended with ``chunks`` chunks."""
        return math.ceil(now + self.run_seconds(chunks))

    def fallback(self, created: float, chunks: int) -> int:
        """For a job written before deadlines existed: its split and its run, from its creation."""
        return math.ceil(created + self.split_seconds + self.run_seconds(chunks))


def timeout_deadline(created: float, timeout_seconds: int) -> int:
    """A job's ``timeout`` option as its fixed deadline."""
    return math.ceil(created + timeout_seconds)


def epoch(iso: str) -> float:
    """An ISO 8601 timestamp of ours (``...Z``) as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def iso(seconds: float) -> str:
    """Epoch seconds as our ISO 8601 form (what created_at looks like)."""
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")
