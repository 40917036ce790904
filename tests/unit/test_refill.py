"""Refill: while an invocation's fetches stall, it takes more chunks from the work queue itself
(pipeline.StreamingPredictor's ``refill``, batch.ChunkBatch's queue), with fakes."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from batchpredict.batch import ChunkBatch
from batchpredict.errors import ErrorCode
from batchpredict.messages import Chunk
from batchpredict.pipeline import ImageResult
from batchpredict.queues import Queue
from batchpredict.records import FAILED, SUCCEEDED, WorkItem
from tests.unit.fakes import HANG, FakeSQS, ScriptedFetcher
from tests.unit.test_pipeline_stream import RecordingWriter, _img, _items, _stream, _url

QUEUE_URL = "https://sqs.local/work"


class Refills:
    """A refill handing out ``batches`` one call at a time, then nothing; records its calls."""

    def __init__(self, *batches: tuple[Sequence[Sequence[WorkItem]], int | None]) -> None:
        self.batches = list(batches)
        self.calls: list[float] = []

    def __call__(self) -> tuple[Sequence[Sequence[WorkItem]], int | None]:
        self.calls.append(time.monotonic())
        return self.batches.pop(0) if self.batches else ([], None)


def test_a_stalled_run_takes_more_groups_and_finishes_them_while_the_stall_lasts() -> None:
    scripts = {_url(0): [HANG]} | {_url(i): [_img(i)] for i in range(1, 4)}
    predictor, engine = _stream(
        ScriptedFetcher(scripts), linger=0.01, total_timeout=1.0, refill_after=0.05, decode_seconds=0.1
    )
    refill = Refills(([_items(range(1, 4))], 7))
    done: dict[int, list[ImageResult]] = {}
    order: list[int] = []

    def on_done(group: int, results: list[ImageResult]) -> None:
        done[group] = results
        order.append(group)

    started = time.monotonic()
    unfinished = predictor.run([_items(range(1))], started + 5.0, on_done, 5, refill)

    assert unfinished == set()
    assert order == [1, 0]  # the refilled group was done while line 0's server stalled
    assert [r.outcome.error is None for r in done[1]] == [True, True, True]
    assert done[0][0].outcome.error is not None
    assert done[0][0].outcome.error.code is ErrorCode.FETCH_TIMEOUT  # its own deadline (1 s), not the run's
    assert refill.calls[0] - started == pytest.approx(0.05, abs=0.2)
    assert len(refill.calls) >= 2  # asked again after getting work, at most every refill_after
    assert all(b - a >= 0.045 for a, b in zip(refill.calls, refill.calls[1:], strict=False))
    assert engine.top_ks == [7]  # the refilled groups asked for 7 classes


def test_no_refill_without_the_time_for_a_whole_fetch_and_decode() -> None:
    predictor, _ = _stream(ScriptedFetcher({_url(0): [HANG]}), total_timeout=1.0, refill_after=0.05)
    refill = Refills(([_items(range(1, 2))], None))

    # 1.5 s left: less than the fetch deadline (1 s) plus the decode budget (10 s)
    unfinished = predictor.run([_items(range(1))], time.monotonic() + 1.5, lambda g, r: None, None, refill)

    assert refill.calls == []
    assert unfinished == set()  # line 0 failed fetch_timeout by its own deadline


def test_no_refill_while_every_fetch_thread_is_taken() -> None:
    predictor, _ = _stream(
        ScriptedFetcher({_url(i): [HANG] for i in range(2)}),
        total_timeout=0.5,
        concurrency=2,
        refill_after=0.05,
        decode_seconds=0.1,
    )
    refill = Refills()

    predictor.run([_items(range(2))], time.monotonic() + 3.0, lambda g, r: None, None, refill)

    assert refill.calls == []  # new fetches would only queue behind the stalled ones


def _body(chunk: int, items: list[WorkItem], top_k: int | None = None) -> str:
    return Chunk("job-1", chunk, items, top_k=top_k).body()


def test_chunk_batch_refills_from_its_queue_and_deletes_only_what_it_wrote() -> None:
    scripts = {_url(0): [HANG]} | {_url(i): [_img(i)] for i in range(1, 5)}
    predictor, _ = _stream(
        ScriptedFetcher(scripts), linger=0.01, total_timeout=1.0, refill_after=0.05, decode_seconds=0.1
    )
    writer = RecordingWriter(fail_for=2)
    taken = [_body(1, _items(range(1, 3)), top_k=3), _body(2, _items(range(3, 5))), "{not json"]
    sqs = FakeSQS(receive=(taken,))
    batch = ChunkBatch(
        predictor,
        writer,  # type: ignore[arg-type]
        memory_mb=1024,
        write_reserve_seconds=0.5,
        work_queue=Queue(sqs, QUEUE_URL),
    )
    ends = time.monotonic() + 6.0

    outcomes = batch.run([("m0", _body(0, _items(range(1))))], lambda: ends - time.monotonic())

    assert outcomes["m0"].error is None
    (stalled,) = outcomes["m0"].records
    assert (stalled.status, stalled.error and stalled.error.code) == (FAILED, "fetch_timeout")
    ones = outcomes[f"m-{taken[0]}"]
    assert ones.error is None and [r.status for r in ones.records] == [SUCCEEDED, SUCCEEDED]
    assert sorted(c for c, _ in writer.written) == [0, 1]  # chunk 2's write failed
    # Written (or counted before): deleted. Failed write, malformed: left to come back.
    assert sqs.deleted == [f"r-{taken[0]}"]
    first = sqs.receives[0]
    assert first["QueueUrl"] == QUEUE_URL and first["MaxNumberOfMessages"] == 1  # as many as the event
    assert first["WaitTimeSeconds"] == 0
    # hidden until just after this invocation ends (its remaining time + the lease margin)
    assert 6 <= first["VisibilityTimeout"] <= 12


def test_chunk_batch_without_a_queue_waits_out_the_stall() -> None:
    predictor, _ = _stream(
        ScriptedFetcher({_url(0): [HANG]}), total_timeout=0.5, refill_after=0.05, decode_seconds=0.1
    )
    batch = ChunkBatch(predictor, RecordingWriter(), memory_mb=1024, write_reserve_seconds=0.5)  # type: ignore[arg-type]
    ends = time.monotonic() + 3.0

    outcomes = batch.run([("m0", _body(0, _items(range(1))))], lambda: ends - time.monotonic())

    assert outcomes.keys() == {"m0"}
    assert [r.error and r.error.code for r in outcomes["m0"].records] == ["fetch_timeout"]
