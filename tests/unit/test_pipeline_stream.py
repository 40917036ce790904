"""Unit tests for the streaming predictor (pipeline.py) and ChunkBatch (batch.py), with fakes.

The fetcher is scripted per URL (bytes, an exception, or a hang that honours the deadline it
is given, as the real one does); the decoder turns b"img:N" into a tensor carrying N; the
engine answers class N for it and records every forward pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from batchpredict.batch import ChunkBatch, ChunkUnfinishedError, predict_urls
from batchpredict.budget import MemoryBudget
from batchpredict.config import StreamSettings
from batchpredict.errors import ErrorCode, PredictionError
from batchpredict.fetch import FetchPolicy
from batchpredict.fetching import ImageFetcher
from batchpredict.fidelity import Fidelity
from batchpredict.images import DecodedImage
from batchpredict.jobs import Job, JobStatus
from batchpredict.messages import Chunk
from batchpredict.model import Prediction
from batchpredict.pipeline import ImageResult, StreamingPredictor
from batchpredict.records import FAILED, SUCCEEDED, ResultRecord, WorkItem
from tests.unit.fakes import HANG, ScriptedFetcher

MODEL = "efficientnet-lite0@1"


class FakeDecoder:
    """b"img:N" -> a 1-pixel tensor holding N; anything else raises what the payload names."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.reserved: list[int] = []

    def memory_bytes(self, payload: bytes, fidelity: Fidelity) -> int:
        self.reserved.append(len(payload))
        return len(payload)

    def decode(self, payload: bytes, deadline: float, fidelity: Fidelity) -> DecodedImage:
        time.sleep(self.delay)
        kind, _, value = payload.decode().partition(":")
        if kind == "img":
            return DecodedImage(np.full((3, 1, 1), float(value), np.float32), 64, 48, len(payload))
        if kind == "bad":
            raise PredictionError(ErrorCode.NOT_AN_IMAGE, "cannot identify image format")
        if kind == "slow":
            raise PredictionError(ErrorCode.DECODE_TIMEOUT, "decoding took over 10 s")
        raise {"value": ValueError, "os": OSError, "zero": ZeroDivisionError, "memory": MemoryError}[kind](
            "boom"
        )


@dataclass
class FakeEngine:
    max_batch: int = 8
    model_id: str = MODEL
    spec: Any = field(default_factory=lambda: SimpleNamespace(preprocess=None))
    passes: list[list[int]] = field(default_factory=list)
    top_ks: list[int] = field(default_factory=list)
    fail: bool = False

    def run_inference(self, batch: Any, top_k: int) -> list[list[Prediction]]:
        ids = [int(t[0, 0, 0]) for t in batch]
        self.passes.append(ids)
        self.top_ks.append(top_k)
        if self.fail:
            raise RuntimeError("engine broke")
        return [[Prediction(1, i, f"n{i:08d}", f"label {i}", 0.9)] for i in ids]


def _img(i: int) -> bytes:
    return f"img:{i}".encode()


def _url(i: int | str) -> str:
    return f"https://img.example/{i}.jpg"


def _stream(
    fetcher: ScriptedFetcher,
    *,
    engine: FakeEngine | None = None,
    decoder: FakeDecoder | None = None,
    bucket: int = 4,
    linger: float = 10.0,
    total_timeout: float = 30.0,
    attempts: int = 1,
    concurrency: int = 8,
    refill_after: float = 1.0,
    decode_seconds: float = 10.0,
) -> tuple[StreamingPredictor, FakeEngine]:
    engine = engine or FakeEngine()
    images = ImageFetcher(
        fetcher,  # type: ignore[arg-type]
        FetchPolicy(concurrency=concurrency, attempts=attempts, backoff_seconds=0.01),
        total_timeout,
    )
    settings = StreamSettings(
        bucket=bucket,
        linger_seconds=linger,
        decoders=2,
        refill_after_seconds=refill_after,
        decode_seconds=decode_seconds,
    )
    predictor = StreamingPredictor(
        engine,  # type: ignore[arg-type]
        images,
        settings,
        top_k=5,
        memory=MemoryBudget(1 << 30),
        decoder=decoder or FakeDecoder(),
    )
    return predictor, engine


def _run(
    predictor: StreamingPredictor, groups: Sequence[Sequence[WorkItem]], seconds: float = 20.0
) -> tuple[dict[int, list[ImageResult]], list[int], set[int]]:
    done: dict[int, list[ImageResult]] = {}
    order: list[int] = []

    def on_done(group: int, results: list[ImageResult]) -> None:
        done[group] = results
        order.append(group)

    unfinished = predictor.run(groups, time.monotonic() + seconds, on_done)
    return done, order, unfinished


def _items(indexes: range, url: Callable[[int], str] = _url) -> list[WorkItem]:
    return [WorkItem(index=i, url=url(i)) for i in indexes]


# --- batching -----------------------------------------------------------------------------


def test_full_buckets_make_one_forward_pass_each_and_the_rest_one_more() -> None:
    fetcher = ScriptedFetcher({_url(i): [_img(i)] for i in range(10)})
    predictor, engine = _stream(fetcher, bucket=4)

    done, _, unfinished = _run(predictor, [_items(range(5)), _items(range(5, 10))])

    assert unfinished == set()
    assert sorted(len(p) for p in engine.passes) == [2, 4, 4]  # never a pass of one while more are ready
    assert sorted(i for p in engine.passes for i in p) == list(range(10))
    for group, results in done.items():
        assert [r.item.index for r in results] == list(range(group * 5, group * 5 + 5))
        assert [r.outcome.predictions[0].class_index for r in results] == [r.item.index for r in results]


def test_images_waiting_on_a_slow_fetch_are_inferred_after_the_linger() -> None:
    scripts: dict[str, list[Any]] = {_url(i): [_img(i)] for i in range(3)}
    scripts[_url(3)] = [_img(3)]
    fetcher = ScriptedFetcher(scripts, delays={_url(3): 2.0})
    predictor, engine = _stream(fetcher, bucket=4, linger=0.05)

    _, order, _ = _run(predictor, [_items(range(3)), _items(range(3, 4))])

    assert order == [0, 1]  # the fast chunk did not wait for the slow URL
    # 0-2 were inferred while 3 was still out (in one pass or, on a stalled machine, several).
    assert sorted(i for p in engine.passes[:-1] for i in p) == [0, 1, 2]
    assert engine.passes[-1] == [3]


class TimedEngine(FakeEngine):
    """Also records when each forward pass started."""

    def __init__(self) -> None:
        super().__init__(max_batch=32)
        self.started: list[float] = []

    def run_inference(self, batch: Any, top_k: int) -> list[list[Prediction]]:
        self.started.append(time.monotonic())
        return super().run_inference(batch, top_k)


class SlowLastDecoder(FakeDecoder):
    """Decodes image ``slow`` in ``seconds``, every other at once; remembers when that one ended."""

    def __init__(self, slow: int, seconds: float) -> None:
        super().__init__()
        self.slow, self.seconds = slow, seconds
        self.slow_done = 0.0

    def decode(self, payload: bytes, deadline: float, fidelity: Fidelity) -> DecodedImage:
        if payload == _img(self.slow):
            time.sleep(self.seconds)
            self.slow_done = time.monotonic()
        return super().decode(payload, deadline, fidelity)


def test_at_the_end_of_a_run_the_engine_infers_by_fours_instead_of_waiting_for_the_last_decode() -> None:
    fetcher = ScriptedFetcher({_url(i): [_img(i)] for i in range(24)})
    engine, decoder = TimedEngine(), SlowLastDecoder(slow=23, seconds=0.5)
    predictor, _ = _stream(fetcher, engine=engine, decoder=decoder, bucket=16)

    done, _, unfinished = _run(predictor, [_items(range(12)), _items(range(12, 24))])

    assert unfinished == set() and sorted(i for p in engine.passes for i in p) == list(range(24))
    # A full bucket while more than a bucket is left; then, with every fetch in and the rest
    # fitting in one bucket, passes of 4 while the slow decode runs, and one small pass after it.
    assert [len(p) for p in engine.passes] == [16, 4, 4]
    assert 23 in engine.passes[-1]
    assert all(at < decoder.slow_done for at in engine.started[:-1])
    assert [r.outcome.predictions[0].class_index for r in done[1]] == list(range(12, 24))


# --- streaming and deadlines --------------------------------------------------------------


def test_a_chunk_is_handed_on_while_a_slow_url_of_another_chunk_is_still_out() -> None:
    scripts: dict[str, list[Any]] = {_url(i): [_img(i)] for i in range(8)}
    fetcher = ScriptedFetcher(scripts, delays={_url(0): 0.8})
    predictor, _ = _stream(fetcher, bucket=4, linger=0.02)

    done, order, unfinished = _run(predictor, [_items(range(4)), _items(range(4, 8))])

    assert order == [1, 0]
    assert unfinished == set()
    assert all(r.outcome.error is None for results in done.values() for r in results)


def test_an_image_past_its_own_deadline_fails_as_fetch_timeout_and_its_chunk_completes() -> None:
    fetcher = ScriptedFetcher({_url(0): [HANG], _url(1): [_img(1)]})
    predictor, _ = _stream(fetcher, total_timeout=0.3, linger=0.02)

    started = time.monotonic()
    done, _, unfinished = _run(predictor, [_items(range(2))], seconds=20)

    assert time.monotonic() - started < 5  # bounded by the image's 0.3 s, not the run's 20 s
    assert unfinished == set()
    tarpit, good = done[0]
    assert tarpit.outcome.error is not None and tarpit.outcome.error.code is ErrorCode.FETCH_TIMEOUT
    assert good.outcome.predictions[0].class_index == 1


def test_work_cut_off_by_the_run_deadline_leaves_its_chunk_unfinished_not_failed() -> None:
    scripts: dict[str, list[Any]] = {_url(i): [_img(i)] for i in range(4)}
    scripts[_url(4)] = [HANG]
    fetcher = ScriptedFetcher(scripts)
    predictor, _ = _stream(fetcher, total_timeout=30.0, linger=0.02)

    started = time.monotonic()
    done, _, unfinished = _run(predictor, [_items(range(4)), _items(range(4, 6))], seconds=0.5)

    assert time.monotonic() - started < 5
    assert unfinished == {1}
    assert 1 not in done
    assert [r.item.index for r in done[0]] == [0, 1, 2, 3]
    assert fetcher.deadlines[_url(4)] <= started + 0.5 + 0.01  # the fetch itself was bounded by the run


def test_transient_failures_are_retried_inside_the_images_deadline() -> None:
    flaky = PredictionError(ErrorCode.CONNECTION_ERROR, "reset", transient=True)
    fetcher = ScriptedFetcher({_url(0): [flaky, flaky, _img(0)], _url(1): [flaky]})
    predictor, _ = _stream(fetcher, attempts=3, linger=0.02)

    done, _, _ = _run(predictor, [_items(range(2))])

    recovered, given_up = done[0]
    assert recovered.outcome.error is None and fetcher.calls[_url(0)] == 3
    assert given_up.outcome.error is flaky and fetcher.calls[_url(1)] == 3
    assert given_up.fetch_ms > 0


# --- containment ----------------------------------------------------------------------------

FETCH_FAILURES: dict[str, Any] = {
    "permanent": PredictionError(ErrorCode.HTTP_ERROR, "HTTP 404 from img.example", transient=False),
    "transient": PredictionError(ErrorCode.CONNECTION_ERROR, "reset", transient=True),
    "value": ValueError("Invalid IPv6 URL"),
    "key": KeyError("Location"),
    "runtime": RuntimeError("unexpected"),
    "unicode": UnicodeError("label too long"),
    "memory": MemoryError(),
    "os": OSError("socket closed"),
}
DECODE_FAILURES = {"bad": "not_an_image", "slow": "decode_timeout", "value": "internal_error",
                   "os": "internal_error", "zero": "internal_error", "memory": "internal_error"}  # fmt: skip


def test_whatever_one_fetch_or_decode_raises_fails_only_its_own_line() -> None:
    scripts: dict[str, list[Any]] = {_url(f"fetch-{k}"): [exc] for k, exc in FETCH_FAILURES.items()}
    scripts |= {_url(f"decode-{k}"): [f"{k}:x".encode()] for k in DECODE_FAILURES}
    scripts |= {_url(i): [_img(i)] for i in range(6)}
    urls = list(scripts)
    fetcher = ScriptedFetcher(scripts)
    predictor, engine = _stream(fetcher, linger=0.02)
    items = [WorkItem(index=i, url=url) for i, url in enumerate(urls)]

    done, _, unfinished = _run(predictor, [items[:7], items[7:14], items[14:]])

    assert unfinished == set()
    results = {r.item.url: r for group in done.values() for r in group}
    assert len(results) == len(urls)  # every line exactly once
    codes = {url: (r.outcome.error.code.value if r.outcome.error else None) for url, r in results.items()}
    assert codes[_url("fetch-permanent")] == "http_error"
    assert codes[_url("fetch-transient")] == "connection_error"
    for kind in ("value", "key", "runtime", "unicode", "memory", "os"):
        assert codes[_url(f"fetch-{kind}")] == "internal_error"
    for kind, code in DECODE_FAILURES.items():
        assert codes[_url(f"decode-{kind}")] == code
    assert [codes[_url(i)] for i in range(6)] == [None] * 6
    assert sorted(i for p in engine.passes for i in p) == list(range(6))


def test_a_failed_forward_pass_leaves_its_chunks_unfinished_for_redelivery() -> None:
    fetcher = ScriptedFetcher({_url(i): [_img(i)] for i in range(2)})
    predictor, _ = _stream(fetcher, engine=FakeEngine(fail=True), linger=0.02)

    done, _, unfinished = _run(predictor, [_items(range(2))], seconds=1.0)

    assert unfinished == {0} and done == {}


def test_split_time_failures_and_empty_chunks_are_done_without_fetching() -> None:
    bad = WorkItem(index=0, url="ftp://x/0", error={"code": "unsupported_scheme", "message": "line 1"})
    fetcher = ScriptedFetcher({})
    predictor, engine = _stream(fetcher)

    done, _, unfinished = _run(predictor, [[bad], []])

    assert unfinished == set() and set(done) == {0, 1}
    assert fetcher.calls == {} and engine.passes == []


def test_decodes_reserve_their_estimated_memory() -> None:
    fetcher = ScriptedFetcher({_url(i): [_img(i)] for i in range(3)})
    decoder = FakeDecoder()
    predictor, _ = _stream(fetcher, decoder=decoder, linger=0.02)

    _run(predictor, [_items(range(3))])

    assert sorted(decoder.reserved) == [len(_img(i)) for i in range(3)]
    assert predictor.memory.in_use == 0


class RecordingGate:
    """A CpuGate that records whether every decode and forward pass ran inside it."""

    def __init__(self) -> None:
        self.inside = 0
        self.entered = 0
        self._lock = threading.Lock()

    @contextmanager
    def computing(self) -> Iterator[None]:
        with self._lock:
            self.inside += 1
            self.entered += 1
        try:
            yield
        finally:
            with self._lock:
                self.inside -= 1

    def waited_seconds(self) -> float:
        return 0.0


def test_every_decode_and_forward_pass_holds_the_cpu_gate() -> None:
    gate = RecordingGate()
    seen: list[int] = []

    class GatedDecoder(FakeDecoder):
        def decode(self, payload: bytes, deadline: float, fidelity: Fidelity) -> DecodedImage:
            seen.append(gate.inside)
            return super().decode(payload, deadline, fidelity)

    class GatedEngine(FakeEngine):
        def run_inference(self, batch: Any, top_k: int) -> list[list[Prediction]]:
            seen.append(gate.inside)
            return super().run_inference(batch, top_k)

    fetcher = ScriptedFetcher({_url(i): [_img(i)] for i in range(6)})
    predictor, engine = _stream(fetcher, engine=GatedEngine(), decoder=GatedDecoder(), linger=0.02)
    predictor.gate = gate

    done, _, _ = _run(predictor, [_items(range(6))])

    assert len(done[0]) == 6 and gate.entered == 6 + len(engine.passes)
    assert len(seen) == gate.entered and all(inside >= 1 for inside in seen)
    assert gate.inside == 0


# --- ChunkBatch: chunks written as they complete, failures per message ---------------------


class RecordingWriter:
    def __init__(self, fail_for: int | None = None) -> None:
        self.written: list[tuple[int, list[ResultRecord]]] = []
        self.fail_for = fail_for
        self.leases: list[float] = []

    def write(
        self, chunk: Chunk, records: list[ResultRecord], model: str | None, lease: float, meter: Any
    ) -> bool:
        if chunk.chunk == self.fail_for:
            raise RuntimeError("DynamoDB is down")
        self.leases.append(lease)
        self.written.append((chunk.chunk, records))
        return True


def _chunk_body(chunk: int, items: list[WorkItem]) -> str:
    return Chunk("job-1", chunk, items).body()


def _batch(predictor: StreamingPredictor, writer: RecordingWriter, reserve: float = 0.0) -> ChunkBatch:
    return ChunkBatch(predictor, writer, memory_mb=1024, write_reserve_seconds=reserve)  # type: ignore[arg-type]


def test_chunk_batch_writes_each_chunk_and_reports_failures_per_message() -> None:
    scripts: dict[str, list[Any]] = {_url(i): [_img(i)] for i in range(6)}
    scripts[_url(6)] = [HANG]
    fetcher = ScriptedFetcher(scripts)
    predictor, _ = _stream(fetcher, linger=0.02)
    writer = RecordingWriter(fail_for=1)
    messages = [
        ("m0", _chunk_body(0, _items(range(2)))),
        ("m1", _chunk_body(1, _items(range(2, 4)))),  # its write fails
        ("m2", _chunk_body(2, _items(range(4, 7)))),  # holds the hang: not done by the deadline
        ("m3", "{not json"),
        ("m4", _chunk_body(3, _items(range(7, 7)))),
    ]
    ends = time.monotonic() + 1.0

    outcomes = _batch(predictor, writer).run(messages, lambda: ends - time.monotonic())

    assert outcomes["m0"].error is None and outcomes["m0"].counted
    assert [r.status for r in outcomes["m0"].records] == [SUCCEEDED, SUCCEEDED]
    assert isinstance(outcomes["m1"].error, RuntimeError)
    assert isinstance(outcomes["m2"].error, ChunkUnfinishedError)
    assert isinstance(outcomes["m3"].error, ValueError)
    assert outcomes["m4"].error is None
    assert sorted(c for c, _ in writer.written) == [0, 3]
    assert all(lease > 0 for lease in writer.leases)
    with pytest.raises(ChunkUnfinishedError):
        outcomes["m2"].raise_for_failure()


def test_chunk_batch_keeps_the_write_reserve_out_of_the_stream() -> None:
    fetcher = ScriptedFetcher({_url(0): [HANG]})
    predictor, _ = _stream(fetcher)
    ends = time.monotonic() + 2.0

    outcomes = _batch(predictor, RecordingWriter(), reserve=0.3).run(
        [("m0", _chunk_body(0, _items(range(1))))], lambda: ends - time.monotonic()
    )

    assert isinstance(outcomes["m0"].error, ChunkUnfinishedError)
    assert fetcher.deadlines[_url(0)] == pytest.approx(ends - 0.3, abs=0.05)  # 2 s left - 0.3 s reserve


def test_a_short_invocation_keeps_only_a_share_of_its_time_for_writes() -> None:
    fetcher = ScriptedFetcher({_url(0): [_img(0)]})
    predictor, _ = _stream(fetcher, linger=0.02)
    writer = RecordingWriter()
    ends = time.monotonic() + 5.0  # e.g. a 5 s function against a 10 s write reserve

    outcomes = _batch(predictor, writer, reserve=10.0).run(
        [("m0", _chunk_body(0, _items(range(1))))], lambda: ends - time.monotonic()
    )

    assert outcomes["m0"].error is None and [c for c, _ in writer.written] == [0]
    assert fetcher.deadlines[_url(0)] == pytest.approx(ends - 1.0, abs=0.1)


def test_predict_urls_returns_one_record_per_url_without_a_job() -> None:
    fetcher = ScriptedFetcher({_url(0): [_img(0)], _url(1): [b"bad:x"], _url(2): [HANG]})
    predictor, _ = _stream(fetcher, linger=0.02)

    records = predict_urls(predictor, [_url(0), _url(1), _url(2)], time.monotonic() + 0.5)

    assert [r.status for r in records] == [SUCCEEDED, FAILED, FAILED]
    assert [r.error.code if r.error else None for r in records] == [None, "not_an_image", "fetch_timeout"]
    assert all(r.job_id is None and "job_id" not in r.to_json() for r in records)


def test_job_record_reads_the_usage_counters() -> None:
    job = Job("job-1", JobStatus.RUNNING, "s3://in/m.txt", compute_ms=5, compute_mb_ms=5120)
    assert job.usage == {"compute_ms": 5, "compute_mb_ms": 5120, "invocations": 0, "write_units": 0}
