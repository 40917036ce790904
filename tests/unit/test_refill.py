"""Refill: while an invocation's fetches stall, it takes more chunks from the work queue itself
(pipeline.StreamingPredictor's ``refill``, batch.ChunkBatch's queue), with fakes."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from batchpredict import queues as queues_module
from batchpredict.batch import ChunkBatch, ChunkUnfinishedError, event_messages, retry_delay
from batchpredict.errors import ErrorCode
from batchpredict.jobs import JobStatus
from batchpredict.messages import Chunk
from batchpredict.pipeline import ImageResult, StreamingPredictor
from batchpredict.queues import Heartbeat, Queue, Received
from batchpredict.records import FAILED, SUCCEEDED, Prediction, WorkItem
from batchpredict.writer import ChunkBusyError
from tests.unit.fakes import HANG, FakeSQS, ScriptedFetcher
from tests.unit.test_pipeline_stream import (
    FakeDecoder,
    FakeEngine,
    RecordingWriter,
    _img,
    _items,
    _stream,
    _url,
)

QUEUE_URL = "https://sqs.local/work"


class Refills:
    """A refill handing out ``batches`` one call at a time, then nothing; records its calls
    (when, and how many lines it was allowed)."""

    def __init__(self, *batches: tuple[Sequence[Sequence[WorkItem]], int | None]) -> None:
        self.batches = list(batches)
        self.calls: list[float] = []
        self.lines: list[int] = []

    def __call__(self, lines: int) -> tuple[Sequence[Sequence[WorkItem]], int | None]:
        self.calls.append(time.monotonic())
        self.lines.append(lines)
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
    # 7 free fetch threads (of 8), each with time for 4 whole fetch deadlines (1 s) and a decode
    assert refill.lines[0] == 7 * 4
    assert len(refill.calls) >= 2  # asked again after getting work, at most every refill_after
    assert all(b - a >= 0.045 for a, b in zip(refill.calls, refill.calls[1:], strict=False))
    # after a refill that found nothing, the next waits 5 x refill_after
    assert all(b - a >= 0.24 for a, b in zip(refill.calls[1:], refill.calls[2:], strict=False))
    assert engine.top_ks == [7]  # the refilled groups asked for 7 classes


def _two_threads_two_hangs(total_timeout: float, refill_after: float) -> StreamingPredictor:
    """Two fetch threads for lines 0 and 1, which both hang until their deadline."""
    predictor, _ = _stream(
        ScriptedFetcher({_url(i): [HANG] for i in range(2)}),
        total_timeout=total_timeout,
        concurrency=2,
        refill_after=refill_after,
        decode_seconds=0.1,
    )
    return predictor


def test_a_stalled_run_waits_for_notifications_not_in_a_busy_loop() -> None:
    """While fetches stall and no refill may run (every thread taken), the engine loop sleeps
    until something finishes or the deadline: it reads its clock a handful of times."""
    reads = 0

    def clock() -> float:
        nonlocal reads
        reads += 1
        return time.monotonic()

    predictor = _two_threads_two_hangs(total_timeout=1.0, refill_after=0.01)
    predictor._clock = clock  # the engine loop's clock; the fetches keep their own

    predictor.run([_items(range(2))], time.monotonic() + 3.0, lambda g, r: None, None, Refills())

    assert reads < 50  # a 1 ms spin over the 1 s stall would read it ~1,000 times


def test_no_refill_without_the_time_for_a_whole_fetch_and_decode() -> None:
    predictor, _ = _stream(ScriptedFetcher({_url(0): [HANG]}), total_timeout=1.0, refill_after=0.05)
    refill = Refills(([_items(range(1, 2))], None))

    # 1.5 s left: less than the fetch deadline (1 s) plus the decode budget (10 s)
    unfinished = predictor.run([_items(range(1))], time.monotonic() + 1.5, lambda g, r: None, None, refill)

    assert refill.calls == []
    assert unfinished == set()  # line 0 failed fetch_timeout by its own deadline


def test_no_refill_while_every_fetch_thread_is_taken() -> None:
    predictor = _two_threads_two_hangs(total_timeout=0.5, refill_after=0.05)
    refill = Refills()
    started = time.monotonic()

    predictor.run([_items(range(2))], started + 3.0, lambda g, r: None, None, refill)

    # Not while both threads hang (new fetches would only queue behind them): at the earliest
    # when the first hang ends, at its deadline (0.5 s), and frees a thread.
    assert all(call - started >= 0.45 for call in refill.calls)


class TopKEngine(FakeEngine):
    """Answers ``top_k`` classes for each image, as the real engine does."""

    def run_inference(self, batch: Any, top_k: int) -> list[list[Prediction]]:
        ids = [p[0].class_index for p in super().run_inference(batch, top_k)]
        return [
            [Prediction(r, i, f"n{i:08d}", f"label {i}", 0.9 / r) for r in range(1, top_k + 1)] for i in ids
        ]


def _body(chunk: int, items: list[WorkItem], top_k: int | None = None, job_id: str = "job-1") -> str:
    return Chunk(job_id, chunk, items, top_k=top_k).body()


class StatusJobs:
    """The job statuses ChunkBatch reads before predicting a job's chunks."""

    def __init__(self, statuses: dict[str, JobStatus]) -> None:
        self.statuses = statuses

    def status(self, job_id: str) -> JobStatus:
        return self.statuses.get(job_id, JobStatus.RUNNING)


def _refilling_batch(
    predictor: StreamingPredictor, sqs: FakeSQS, writer: RecordingWriter | None = None
) -> tuple[ChunkBatch, RecordingWriter]:
    writer = writer or RecordingWriter()
    writer.jobs = StatusJobs({"job-stopped": JobStatus.CANCELLED})  # type: ignore[attr-defined]
    batch = ChunkBatch(
        predictor,
        writer,  # type: ignore[arg-type]
        memory_mb=1024,
        write_reserve_seconds=0.5,
        work_queue=Queue(sqs, QUEUE_URL),  # type: ignore[arg-type]
    )
    return batch, writer


def _stalling_stream(engine: FakeEngine | None = None, **scripts: Any) -> StreamingPredictor:
    """Line 0 hangs (its deadline: 1 s); lines 1-9 are images."""
    fetcher = ScriptedFetcher({_url(0): [HANG]} | {_url(i): [_img(i)] for i in range(1, 10)})
    predictor, _ = _stream(
        fetcher,
        engine=engine,
        linger=0.01,
        total_timeout=1.0,
        refill_after=0.05,
        decode_seconds=0.1,
        **scripts,
    )
    return predictor


def _run_batch(batch: ChunkBatch, messages: list[tuple[str, str]], seconds: float = 6.0) -> Any:
    ends = time.monotonic() + seconds
    return batch.run(messages, lambda: ends - time.monotonic())


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


def test_each_chunk_gets_its_own_top_k_however_it_arrived() -> None:
    queued = _body(2, _items(range(3, 4)), top_k=7)
    sqs = FakeSQS(receive=([queued],))
    batch, _ = _refilling_batch(_stalling_stream(TopKEngine()), sqs)
    event = [("a", _body(0, _items(range(2)), top_k=2)), ("b", _body(1, _items(range(2, 3))))]

    outcomes = _run_batch(batch, event)

    refilled = outcomes[f"m-{queued}"]
    assert [len(r.predictions) for r in outcomes["a"].records] == [0, 2]  # line 0 failed
    assert [len(r.predictions) for r in outcomes["b"].records] == [5]  # the function's TOP_K
    assert [len(r.predictions) for r in refilled.records] == [7]


def test_refilled_chunks_of_a_stopped_job_are_written_cancelled_and_deleted() -> None:
    stopped = _body(5, _items(range(5, 7)), job_id="job-stopped")
    sqs = FakeSQS(receive=([stopped],))
    batch, writer = _refilling_batch(_stalling_stream(), sqs)

    outcomes = _run_batch(batch, [("m0", _body(0, _items(range(1))))])

    cancelled = outcomes[f"m-{stopped}"]
    assert [(r.status, r.error and r.error.code) for r in cancelled.records] == [(FAILED, "cancelled")] * 2
    assert sorted(c for c, _ in writer.written) == [0, 5]
    assert sqs.deleted == [f"r-{stopped}"]


def test_unfinished_and_malformed_refills_are_left_to_come_back() -> None:
    refilled = [_body(1, _items(range(1, 2))), "[]", "{not json"]
    sqs = FakeSQS(receive=(refilled,))
    batch, writer = _refilling_batch(_stalling_stream(FakeEngine(fail=True)), sqs)

    outcomes = _run_batch(batch, [("m0", _body(0, _items(range(1))))])

    assert outcomes["m0"].error is None  # its one line failed by its own deadline: written
    assert all(outcomes[f"m-{body}"].error is not None for body in refilled)  # forward pass failed; malformed
    assert [c for c, _ in writer.written] == [0]
    assert sqs.deleted == []


def test_no_receive_when_the_lines_allowed_hold_no_whole_chunk() -> None:
    sqs = FakeSQS(receive=([_body(1, _items(range(4, 8)))],))
    # 2 fetch threads, 1 stalled: 1 free thread x 2 deadlines of 1 s in the 3 s left < 4 lines
    batch, _ = _refilling_batch(_stalling_stream(concurrency=2), sqs)

    outcomes = _run_batch(batch, [("m0", _body(0, _items(range(4))))], seconds=3.5)

    assert outcomes["m0"].error is None
    assert sqs.receives == []


# --- refill budgets in the function's chunk size; the heartbeat; failed chunks' retry delay ----


class VisibilitySQS(FakeSQS):
    """FakeSQS that also takes ChangeMessageVisibilityBatch: ``visibility`` holds every entry set
    (receipt handle, seconds), in order; ``refuse`` names receipt handles SQS refuses (as for a
    deleted message's). The queue's own visibility timeout is ``queue_visibility``."""

    def __init__(self, *, refuse: Sequence[str] = (), queue_visibility: int = 150, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.visibility: list[tuple[str, int]] = []
        self.refuse = set(refuse)
        self.queue_visibility = queue_visibility

    def get_queue_attributes(self, *, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        assert QueueUrl == QUEUE_URL and AttributeNames == ["VisibilityTimeout"]
        return {"Attributes": {"VisibilityTimeout": str(self.queue_visibility)}}

    def change_message_visibility_batch(
        self, *, QueueUrl: str, Entries: list[dict[str, Any]]
    ) -> dict[str, Any]:
        assert QueueUrl == QUEUE_URL and 1 <= len(Entries) <= 10
        refused = [e for e in Entries if e["ReceiptHandle"] in self.refuse]
        self.visibility += [(e["ReceiptHandle"], e["VisibilityTimeout"]) for e in Entries if e not in refused]
        return {
            "Successful": [{"Id": e["Id"]} for e in Entries if e not in refused],
            "Failed": [
                {"Id": e["Id"], "SenderFault": True, "Code": "ReceiptHandleIsInvalid", "Message": "gone"}
                for e in refused
            ],
        }

    def last_visibility(self) -> dict[str, int]:
        return dict(self.visibility)


def _hanging_stream(
    hanging: range, images: range, *, concurrency: int = 8, total_timeout: float = 1.0
) -> Any:
    fetcher = ScriptedFetcher({_url(i): [HANG] for i in hanging} | {_url(i): [_img(i)] for i in images})
    predictor, _ = _stream(
        fetcher,
        linger=0.01,
        total_timeout=total_timeout,
        refill_after=0.05,
        decode_seconds=0.1,
        concurrency=concurrency,
    )
    return predictor, fetcher


def _queued_batch(
    predictor: StreamingPredictor, sqs: FakeSQS, writer: Any = None, **options: Any
) -> ChunkBatch:
    writer = writer or RecordingWriter()
    writer.jobs = StatusJobs({})
    return ChunkBatch(
        predictor,
        writer,
        memory_mb=1024,
        write_reserve_seconds=0.5,
        work_queue=Queue(sqs, QUEUE_URL),  # type: ignore[arg-type]
        **options,
    )


def test_a_refill_after_a_short_chunk_budgets_in_the_functions_chunk_size() -> None:
    # The event: a job's last chunk, 1 line, at a server that hangs (its deadline: 1 s). The queue
    # holds a full chunk (CHUNK_SIZE 16) of lines at a slow server. 7 free fetch threads x 2 whole
    # deadlines before the run ends = 14 lines: not a whole chunk, so nothing is taken. Budgeted in
    # the event's largest chunk (1 line), 14 chunks would fit, and the 16 lines taken could not
    # all be fetched in time: a receive spent for nothing, towards the dead-letter queue.
    predictor, _ = _hanging_stream(hanging=range(1 + 16), images=range(0))
    sqs = VisibilitySQS(receive=([_body(1, _items(range(1, 17)))],))
    batch = _queued_batch(predictor, sqs)

    outcomes = _run_batch(batch, [("m0", _body(0, _items(range(1))))], seconds=3.5)

    assert sqs.receives == []
    assert outcomes.keys() == {"m0"}
    assert outcomes["m0"].error is None  # its line failed fetch_timeout by its own deadline: written


def test_a_refilled_chunk_longer_than_the_room_left_is_released_unstarted() -> None:
    # CHUNK_SIZE 4: room for 14 lines takes 2 chunks (as many as the event brought); one of them
    # holds 16 lines (its job was split with a larger CHUNK_SIZE), more than the 10 left once the
    # first is admitted: visible again at once (ChangeMessageVisibility 0), none of it fetched.
    predictor, fetcher = _hanging_stream(hanging=[0, *range(10, 26)], images=range(1, 6))
    fits, too_long = _body(2, _items(range(2, 6))), _body(3, _items(range(10, 26)))
    sqs = VisibilitySQS(receive=([fits, too_long],))
    batch = _queued_batch(predictor, sqs, chunk_size=4)
    event = [("m0", _body(0, _items(range(1)))), ("m1", _body(1, _items(range(1, 2))))]

    outcomes = _run_batch(batch, event, seconds=3.5)

    assert sqs.receives[0]["MaxNumberOfMessages"] == 2
    assert (f"r-{too_long}", 0) in sqs.visibility
    assert not any(_url(i) in fetcher.deadlines for i in range(10, 26))
    assert f"m-{too_long}" not in outcomes
    assert [r.status for r in outcomes[f"m-{fits}"].records] == [SUCCEEDED] * 4
    assert sqs.deleted == [f"r-{fits}"]


def test_the_heartbeat_keeps_the_event_and_refilled_messages_hidden_while_the_run_lives() -> None:
    predictor, _ = _hanging_stream(hanging=[0], images=range(1, 4))
    queued = _body(1, _items(range(1, 4)))
    sqs = VisibilitySQS(receive=([queued],))
    batch = _queued_batch(predictor, sqs, heartbeat_seconds=0.3, chunk_size=1)  # a beat every 0.1 s
    event = [Received("m0", "h0", _body(0, _items(range(1))), 1)]

    outcomes = _run_batch(batch, event, seconds=3.0)  # line 0 holds the run ~1 s
    beats = list(sqs.visibility)
    time.sleep(0.3)

    assert outcomes["m0"].error is None and outcomes[f"m-{queued}"].error is None
    kept = [handle for handle, _ in beats]
    assert kept[0] == "h0" and kept.count("h0") >= 3
    assert f"r-{queued}" in kept  # the refilled message from the beat after it arrived
    assert {seconds for _, seconds in beats} == {1}  # 0.3 s, whole seconds to SQS
    assert sqs.receives[0]["VisibilityTimeout"] == 1  # taken with the heartbeat's visibility
    assert sqs.visibility == beats  # no beat after the run ended
    assert sqs.deleted == [f"r-{queued}"]


def test_a_cold_start_loads_its_model_after_the_first_heartbeat_and_once() -> None:
    # A worker that dies loading the model (a cold start) frees its messages as soon as one that
    # dies predicting: they are the heartbeat's before the predictor is built.
    predictor, _ = _hanging_stream(hanging=[], images=[0, 1])
    sqs = VisibilitySQS()
    seen_at_build: list[list[tuple[str, int]]] = []

    def build() -> StreamingPredictor:
        seen_at_build.append(list(sqs.visibility))
        return predictor

    batch = _queued_batch(build, sqs)  # type: ignore[arg-type]
    first = _run_batch(batch, [Received("m0", "h0", _body(0, _items(range(1))), 1)])
    second = _run_batch(batch, [Received("m1", "h1", _body(1, _items(range(1, 2))), 1)])

    assert seen_at_build == [[("h0", 7)]]  # 6 s left + 1: built once, after the first beat
    assert first["m0"].error is None and second["m1"].error is None


def test_no_heartbeat_hides_a_message_past_the_invocations_end() -> None:
    predictor, _ = _hanging_stream(hanging=[0], images=range(0), total_timeout=0.5)
    sqs = VisibilitySQS()
    batch = _queued_batch(predictor, sqs)  # a 30 s step

    _run_batch(batch, [Received("m0", "h0", _body(0, _items(range(1))), 1)], seconds=2.0)

    assert sqs.visibility and all(seconds <= 3 for _, seconds in sqs.visibility)  # 2 s left + 1


def test_a_heartbeat_never_hides_a_message_longer_than_its_queue_would() -> None:
    # A queue whose own visibility timeout is 5 s (a short test stack's): the beats hide its
    # messages 5 s, not 30, and a failed chunk's retry delay counts in those steps.
    predictor, _ = _hanging_stream(hanging=[0], images=range(0), total_timeout=30.0)
    sqs = VisibilitySQS(queue_visibility=5)
    batch = _queued_batch(predictor, sqs)  # a 30 s step

    outcomes = _run_batch(batch, [Received("m0", "h0", _body(0, _items(range(1))), 2)], seconds=2.0)

    assert isinstance(outcomes["m0"].error, ChunkUnfinishedError)
    beats, (retry,) = sqs.visibility[:-1], sqs.visibility[-1:]
    assert beats and all(seconds <= 3 for _, seconds in beats)  # 2 s left + 1, under the 5 s step
    assert retry == ("h0", retry_delay(2, 5.0)) == ("h0", 10)  # its second receive: 2 steps of 5 s


def test_a_refused_receipt_handle_is_dropped_from_the_beats() -> None:
    sqs = VisibilitySQS(refuse=["gone"])
    heartbeat = Heartbeat(Queue(sqs, QUEUE_URL), 30.0, lambda: 60.0)  # type: ignore[arg-type]
    heartbeat.keep({"a": "ha", "b": "gone", "c": "hc"})
    heartbeat.stop()  # after its first beat

    heartbeat.beat(time.monotonic() + 1)

    assert sqs.visibility == [("ha", 30), ("hc", 30), ("ha", 30), ("hc", 30)]


def test_a_beat_that_hangs_does_not_hold_the_end_of_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queues_module, "STOP_WAIT_SECONDS", 0.1)
    hanging, release = threading.Event(), threading.Event()

    class HangingSQS(VisibilitySQS):
        def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
            if self.visibility:  # the first beat (at keep) answers; the next hangs until released
                hanging.set()
                release.wait(30)
            return super().change_message_visibility_batch(**kwargs)

    heartbeat = Heartbeat(Queue(HangingSQS(), QUEUE_URL), 0.3, lambda: 60.0)  # type: ignore[arg-type]
    heartbeat.keep({"a": "ha"})
    assert hanging.wait(10)
    stopping = threading.Thread(target=heartbeat.stop)

    stopping.start()
    stopping.join(10)
    stopped = not stopping.is_alive()
    release.set()

    assert stopped  # stop() returned while the beat still hung


class BusyWriter(RecordingWriter):
    def write(self, chunk: Chunk, records: list[Any], model: str | None, lease: float, meter: Any) -> bool:
        if chunk.chunk == 1:
            raise ChunkBusyError("chunk 1 is being written by another delivery")
        return super().write(chunk, records, model, lease, meter)


def test_failed_chunks_wait_a_retry_delay_growing_with_their_receives() -> None:
    # Line 0's fetch deadline (30 s) outlasts the run (2 s): chunk 0 is not done in time, on its
    # third receive. Chunk 1's claim is held by another delivery, on its first. The third message
    # is malformed.
    predictor, _ = _hanging_stream(hanging=[0], images=[1], total_timeout=30.0)
    sqs = VisibilitySQS()
    batch = _queued_batch(predictor, sqs, writer=BusyWriter(), heartbeat_seconds=3.0)
    event = [
        Received("late", "h-late", _body(0, _items(range(1))), 3),
        Received("busy", "h-busy", _body(1, _items(range(1, 2))), 1),
        Received("bad", "h-bad", "{not json", 1),
    ]

    outcomes = _run_batch(batch, event, seconds=2.0)

    assert isinstance(outcomes["late"].error, ChunkUnfinishedError)
    assert isinstance(outcomes["busy"].error, ChunkBusyError)
    last = sqs.last_visibility()
    assert last["h-late"] == retry_delay(3, 3.0) == 12  # its third receive: 4 heartbeat steps
    assert last["h-busy"] == retry_delay(1, 3.0) == 3  # its first: 1 step
    # The malformed one had only the beats (the others one more entry, their delay): it comes back
    # soon, on its way to the dead-letter queue.
    entries = Counter(handle for handle, _ in sqs.visibility)
    assert entries["h-bad"] == entries["h-late"] - 1 == entries["h-busy"] - 1 >= 1
    assert last["h-bad"] <= 3


def test_the_retry_delay_doubles_with_each_receive_up_to_sixteen_steps() -> None:
    assert [retry_delay(n, 30.0) for n in range(1, 8)] == [30, 60, 120, 240, 480, 480, 480]
    assert retry_delay(1, 0.2) == 1  # at least a second


def test_event_messages_carry_receipt_handles_and_receive_counts() -> None:
    event = {
        "Records": [
            {
                "messageId": "a",
                "receiptHandle": "ra",
                "body": "{}",
                "attributes": {"ApproximateReceiveCount": "3"},
            },
            {"messageId": "b", "receiptHandle": "rb", "body": "[]", "attributes": {}},
        ]
    }

    assert event_messages(event) == [Received("a", "ra", "{}", 3), Received("b", "rb", "[]", 1)]


def _computing_run(images: int, total_timeout: float) -> tuple[StreamingPredictor, FakeEngine]:
    """Every fetch answers at once; decodes take 50 ms: the run's tail is its compute."""
    return _stream(
        ScriptedFetcher({_url(i): [_img(i)] for i in range(images)}),
        decoder=FakeDecoder(delay=0.05),
        linger=0.01,
        total_timeout=total_timeout,
        refill_after=0.05,
        decode_seconds=0.1,
    )


def test_at_the_tail_of_its_compute_a_run_takes_more_groups_without_a_stall() -> None:
    predictor, engine = _computing_run(8, total_timeout=1.0)
    refill = Refills(([_items(range(4, 8))], None))
    done_at: dict[int, float] = {}

    def on_done(group: int, results: list[ImageResult]) -> None:
        done_at[group] = time.monotonic()

    unfinished = predictor.run([_items(range(4))], time.monotonic() + 5.0, on_done, 5, refill)

    assert unfinished == set() and sorted(done_at) == [0, 1]
    assert sorted(i for p in engine.passes for i in p) == list(range(8))
    # Taken while the first group was still computing, so its fetches overlapped that compute;
    # then one more ask found nothing, and the run ended without waiting for another.
    assert refill.calls[0] < done_at[0]
    assert len(refill.calls) == 2


def test_no_refill_at_the_tail_without_the_time_for_a_whole_fetch_and_decode() -> None:
    predictor, _ = _computing_run(4, total_timeout=10.0)  # 5 s left: no room for a 10 s fetch
    refill = Refills(([_items(range(4, 8))], None))
    unfinished = predictor.run([_items(range(4))], time.monotonic() + 5.0, lambda g, r: None, 5, refill)
    assert unfinished == set() and refill.calls == []
