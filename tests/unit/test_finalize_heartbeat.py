"""finalize keeps its message hidden with the heartbeat (queues.Heartbeat) while it merges: a
crashed merge resumes from its checkpoint within the heartbeat's step, not after the finalize
queue's visibility timeout."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from batchpredict.config import DEFAULT_HEARTBEAT_SECONDS
from batchpredict.handlers import finalize as handler
from batchpredict.messages import finalize_body
from batchpredict.queues import Queue
from tests.unit.test_refill import QUEUE_URL, VisibilitySQS


class MergingFinalizer:
    """Records, as each merge starts, the visibility its message was given so far; raises
    ``fails`` if given (an S3 outage, say)."""

    def __init__(self, sqs: VisibilitySQS, fails: Exception | None = None) -> None:
        self.sqs = sqs
        self.finalize_queue = Queue(sqs, QUEUE_URL)  # type: ignore[arg-type]
        self.seen: list[list[tuple[str, int]]] = []
        self.fails = fails

    def finalize(self, job_id: str, remaining: Any) -> None:
        assert job_id == "job-1" and remaining() == 300.0
        self.seen.append(list(self.sqs.visibility))
        if self.fails is not None:
            raise self.fails


def _record() -> SQSRecord:
    return SQSRecord({"messageId": "m1", "receiptHandle": "h1", "body": finalize_body("job-1")})


CONTEXT = SimpleNamespace(get_remaining_time_in_millis=lambda: 300_000)


def test_finalize_keeps_its_message_hidden_while_it_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = VisibilitySQS(queue_visibility=300)
    merging = MergingFinalizer(sqs)
    monkeypatch.setattr(handler, "finalizer", lambda: merging)

    handler.record_handler(_record(), CONTEXT)  # type: ignore[arg-type]

    assert merging.seen == [[("h1", int(DEFAULT_HEARTBEAT_SECONDS))]]  # hidden 30 s before it merged


def test_a_failed_merge_waits_the_queues_visibility_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # A crash frees the message within the heartbeat's step; a failure does not come back before
    # the queue's 300 s, as without a heartbeat: a stage that is down is not retried into the
    # dead-letter queue within minutes.
    sqs = VisibilitySQS(queue_visibility=300)
    monkeypatch.setattr(handler, "finalizer", lambda: MergingFinalizer(sqs, RuntimeError("S3 is down")))

    with pytest.raises(RuntimeError, match="S3 is down"):
        handler.record_handler(_record(), CONTEXT)  # type: ignore[arg-type]

    assert sqs.visibility[0] == ("h1", 30) and sqs.visibility[-1] == ("h1", 300)
