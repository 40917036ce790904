"""Unit tests for batch.py: ImageFetcher retries, ChunkPredictor batching, ChunkWriter idempotence.

Fakes only: a scripted fetcher, a recording predict_payloads, an in-memory job store,
and real ResultStore / Queue adapters over recording S3 / SQS clients.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import batchpredict.batch as batch_module
from batchpredict.batch import ChunkPredictor, ImageFetcher
from batchpredict.errors import ErrorCode, PredictionError
from batchpredict.fetch import Fetched, FetchPolicy
from batchpredict.images import DecodedImage
from batchpredict.jobs import Job, JobStatus
from batchpredict.messages import Chunk, parse_finalize
from batchpredict.model import Prediction
from batchpredict.predictor import Outcome, predict_payloads
from batchpredict.queues import Queue
from batchpredict.records import FAILED, SUCCEEDED, WorkItem, failed_record
from batchpredict.results import ResultStore, part_key
from batchpredict.writer import ChunkWriter
from tests.unit.fakes import FakeJobs

MODEL = "efficientnet-lite0@1"
Script = bytes | PredictionError


def transient(message: str = "timed out") -> PredictionError:
    return PredictionError(ErrorCode.FETCH_TIMEOUT, message)


def permanent(message: str = "HTTP 404") -> PredictionError:
    return PredictionError(ErrorCode.HTTP_ERROR, message, transient=False)


class FakeFetcher:
    """Answers each URL from a script, one entry per call (the last one repeats); counts calls.

    ``clock`` (optional) is advanced by ``cost_ms`` per call, for deterministic fetch timings.
    """

    def __init__(
        self, scripts: dict[str, list[Script]], clock: FakeClock | None = None, cost_ms: float = 0.0
    ) -> None:
        self.scripts = scripts
        self.calls: Counter[str] = Counter()
        self.closed = False
        self._clock = clock
        self._cost = cost_ms
        self._lock = threading.Lock()

    def fetch(self, url: str) -> Fetched:
        with self._lock:
            self.calls[url] += 1
            script = self.scripts[url]
            answer = script[min(self.calls[url], len(script)) - 1]
            if self._clock is not None:
                self._clock.now += self._cost / 1000
        if isinstance(answer, PredictionError):
            raise answer
        return Fetched(answer, url, "image/jpeg")

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeClock:
    now: float = 1000.0

    def perf_counter(self) -> float:
        return self.now


class SleepLog(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _images(
    scripts: dict[str, list[Script]], attempts: int = 3, concurrency: int = 4
) -> tuple[ImageFetcher, FakeFetcher, SleepLog]:
    fetcher = FakeFetcher(scripts)
    sleeps = SleepLog()
    policy = FetchPolicy(concurrency=concurrency, attempts=attempts, backoff_seconds=0.5)
    return ImageFetcher(fetcher, policy, sleep=sleeps), fetcher, sleeps  # type: ignore[arg-type]


# --- ImageFetcher ---------------------------------------------------------------------------


def test_fetch_all_returns_payloads_in_url_order() -> None:
    urls = [f"https://img.example/{i}.jpg" for i in range(20)]
    images, fetcher, sleeps = _images({u: [u.encode()] for u in urls})

    fetched = images.fetch_all(urls)

    assert [f.payload for f in fetched] == [u.encode() for u in urls]
    assert all(n == 1 for n in fetcher.calls.values())
    assert sleeps == []


def test_transient_error_is_retried_until_it_succeeds() -> None:
    url = "https://img.example/flaky.jpg"
    images, fetcher, sleeps = _images({url: [transient(), transient(), b"jpeg"]})

    (fetched,) = images.fetch_all([url])

    assert fetched.payload == b"jpeg"
    assert fetcher.calls[url] == 3
    assert sleeps == [0.5, 1.0]


def test_transient_error_is_given_up_after_the_attempts() -> None:
    url = "https://img.example/down.jpg"
    images, fetcher, sleeps = _images({url: [transient("still down")]})

    (fetched,) = images.fetch_all([url])

    assert isinstance(fetched.payload, PredictionError)
    assert fetched.payload.code is ErrorCode.FETCH_TIMEOUT
    assert fetched.payload.message == "still down"
    assert fetcher.calls[url] == 3
    assert sleeps == [0.5, 1.0]


def test_http_5xx_marked_transient_is_retried() -> None:
    url = "https://img.example/503.jpg"
    flaky = PredictionError(ErrorCode.HTTP_ERROR, "HTTP 503", transient=True)
    images, fetcher, _ = _images({url: [flaky, b"ok"]})

    assert images.fetch_all([url])[0].payload == b"ok"
    assert fetcher.calls[url] == 2


def test_permanent_error_is_fetched_once() -> None:
    url = "https://img.example/missing.jpg"
    images, fetcher, sleeps = _images({url: [permanent()]})

    (fetched,) = images.fetch_all([url])

    assert isinstance(fetched.payload, PredictionError)
    assert fetched.payload.code is ErrorCode.HTTP_ERROR
    assert fetcher.calls[url] == 1
    assert sleeps == []


def test_only_transient_failures_are_fetched_again() -> None:
    ok, gone, flaky = "https://a/ok.jpg", "https://a/gone.jpg", "https://a/flaky.jpg"
    images, fetcher, sleeps = _images({ok: [b"1"], gone: [permanent()], flaky: [transient(), b"3"]})

    fetched = images.fetch_all([ok, gone, flaky])

    assert fetched[0].payload == b"1"
    assert isinstance(fetched[1].payload, PredictionError)
    assert fetched[2].payload == b"3"
    assert fetcher.calls == Counter({ok: 1, gone: 1, flaky: 2})
    assert sleeps == [0.5]


def test_a_single_attempt_policy_never_retries() -> None:
    url = "https://img.example/flaky.jpg"
    images, fetcher, sleeps = _images({url: [transient(), b"x"]}, attempts=1)

    assert isinstance(images.fetch_all([url])[0].payload, PredictionError)
    assert fetcher.calls[url] == 1
    assert sleeps == []


def test_fetch_ms_adds_up_over_the_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(batch_module, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    once, thrice = "https://a/once.jpg", "https://a/thrice.jpg"
    fetcher = FakeFetcher({once: [b"1"], thrice: [transient(), transient(), b"3"]}, clock, cost_ms=25.0)
    images = ImageFetcher(fetcher, FetchPolicy(concurrency=1, attempts=3), sleep=SleepLog())  # type: ignore[arg-type]

    fetched = images.fetch_all([once, thrice])

    assert fetched[0].fetch_ms == pytest.approx(25.0)
    assert fetched[1].fetch_ms == pytest.approx(75.0)


def test_fetch_all_of_nothing() -> None:
    images, fetcher, _ = _images({})
    assert images.fetch_all([]) == []
    assert not fetcher.calls


def test_close_closes_the_fetcher() -> None:
    images, fetcher, _ = _images({})
    images.close()
    assert fetcher.closed


# --- ChunkPredictor ---------------------------------------------------------------------------


@dataclass
class PredictSpy:
    """Stands in for predictor.predict_payloads: records calls, answers from the payload bytes."""

    calls: list[list[bytes | PredictionError]] = field(default_factory=list)

    def __call__(
        self,
        engine: Any,
        payloads: Sequence[bytes | PredictionError],
        top_k: int,
        max_pixels: int | None = None,
        **kwargs: Any,  # e.g. the decoder pool
    ) -> list[Outcome]:
        self.calls.append(list(payloads))
        assert top_k == 5
        outcomes = []
        for payload in payloads:
            if isinstance(payload, PredictionError):
                outcomes.append(Outcome(error=payload))
            elif payload == b"not an image":
                outcomes.append(
                    Outcome(error=PredictionError(ErrorCode.NOT_AN_IMAGE, "cannot decode"), preprocess_ms=1.0)
                )
            else:
                label = payload.decode()
                outcomes.append(
                    Outcome(
                        predictions=[Prediction(1, 7, "n0000007", label, 0.75)],
                        image=DecodedImage(np.zeros((3, 1, 1), np.float32), 64, 48, len(payload)),
                        preprocess_ms=2.0,
                        inference_ms=4.0,
                    )
                )
        return outcomes


class FakeEngine:
    model_id = MODEL
    spec = SimpleNamespace(preprocess=None)  # never used: no payload gets decoded in these tests

    def run_inference(self, batch: Any, top_k: int) -> Any:
        raise AssertionError("no image should reach the model")


def _url(index: int) -> str:
    return f"https://img.example/{index}.jpg"


def _bad(index: int, code: str = "unsupported_scheme") -> WorkItem:
    return WorkItem(index=index, url=f"ftp://x/{index}", error={"code": code, "message": f"line {index + 1}"})


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> PredictSpy:
    recorder = PredictSpy()
    monkeypatch.setattr(batch_module, "predict_payloads", recorder)
    return recorder


def _predictor(scripts: dict[str, list[Script]]) -> tuple[ChunkPredictor, FakeFetcher]:
    images, fetcher, _ = _images(scripts)
    return ChunkPredictor(FakeEngine(), images, top_k=5), fetcher  # type: ignore[arg-type]


def test_one_inference_call_for_all_images_of_three_chunks(spy: PredictSpy) -> None:
    chunks = [
        Chunk("job-1", c, [WorkItem(index=c * 4 + i, url=_url(c * 4 + i)) for i in range(4)])
        for c in range(3)
    ]
    predictor, fetcher = _predictor({_url(i): [f"img{i}".encode()] for i in range(12)})

    rows = predictor.records(chunks)

    assert len(spy.calls) == 1
    assert spy.calls[0] == [f"img{i}".encode() for i in range(12)]
    assert [[r["index"] for r in chunk_rows] for chunk_rows in rows] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
    ]
    assert all(r["status"] == SUCCEEDED for chunk_rows in rows for r in chunk_rows)
    assert [r["predictions"][0]["label"] for r in rows[2]] == ["img8", "img9", "img10", "img11"]
    assert sum(fetcher.calls.values()) == 12


def test_split_time_invalid_items_fail_with_their_code_and_are_never_fetched(spy: PredictSpy) -> None:
    chunk = Chunk(
        "job-1",
        0,
        [
            WorkItem(index=0, url=_url(0)),
            _bad(1, "unsupported_scheme"),
            WorkItem(index=2, url=_url(2)),
            _bad(3, "invalid_manifest_line"),
        ],
    )
    predictor, fetcher = _predictor({_url(0): [b"a"], _url(2): [b"c"]})

    (rows,) = predictor.records([chunk])

    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [r["status"] for r in rows] == [SUCCEEDED, FAILED, SUCCEEDED, FAILED]
    assert rows[1]["error"] == {"code": "unsupported_scheme", "message": "line 2"}
    assert rows[3]["error"] == {"code": "invalid_manifest_line", "message": "line 4"}
    assert rows[1]["url"] == "ftp://x/1"
    assert rows[1]["model"] is None and rows[1]["predictions"] == []
    assert set(fetcher.calls) == {_url(0), _url(2)}
    assert spy.calls == [[b"a", b"c"]]


def test_an_item_without_url_fails_as_an_invalid_line(spy: PredictSpy) -> None:
    predictor, fetcher = _predictor({})

    (rows,) = predictor.records([Chunk("job-1", 0, [WorkItem(index=0)])])

    assert rows[0]["status"] == FAILED
    assert rows[0]["error"]["code"] == "invalid_manifest_line"
    assert not fetcher.calls


def test_a_chunk_of_only_invalid_lines_never_reaches_the_model() -> None:
    # the real predict_payloads: nothing to decode, so the engine is never called
    chunk = Chunk("job-1", 5, [_bad(80), _bad(81, "invalid_manifest_line")])
    predictor, fetcher = _predictor({})

    (rows,) = predictor.records([chunk])

    assert [(r["index"], r["error"]["code"]) for r in rows] == [
        (80, "unsupported_scheme"),
        (81, "invalid_manifest_line"),
    ]
    assert not fetcher.calls


def test_fetch_errors_reach_the_records_without_the_model() -> None:
    # the real predict_payloads again: fetch errors are carried through as values
    predictor, fetcher = _predictor({_url(0): [permanent("HTTP 404")], _url(1): [transient("slow")]})

    (rows,) = predictor.records(
        [Chunk("job-1", 0, [WorkItem(index=0, url=_url(0)), WorkItem(index=1, url=_url(1))])]
    )

    assert [r["error"] for r in rows] == [
        {"code": "http_error", "message": "HTTP 404"},
        {"code": "fetch_timeout", "message": "slow"},
    ]
    assert all(r["status"] == FAILED and r["model"] == MODEL for r in rows)
    assert fetcher.calls == Counter({_url(0): 1, _url(1): 3})


def test_successful_record_carries_image_timings_and_caller_fields(spy: PredictSpy) -> None:
    item = WorkItem(index=7, url=_url(7), id="cat-7", metadata={"album": "pets"})
    predictor, _ = _predictor({_url(7): [b"tabby"]})

    ((record,),) = predictor.records([Chunk("job-1", 1, [item])])

    assert record["job_id"] == "job-1"
    assert record["id"] == "cat-7"
    assert record["metadata"] == {"album": "pets"}
    assert record["model"] == MODEL
    assert record["error"] is None
    assert record["predictions"] == [
        {"rank": 1, "class_index": 7, "wnid": "n0000007", "label": "tabby", "probability": 0.75}
    ]
    assert record["image"] == {"width": 64, "height": 48, "bytes": 5}
    assert record["timing_ms"]["preprocess"] == 2.0
    assert record["timing_ms"]["inference"] == 4.0
    assert record["timing_ms"]["fetch"] >= 0.0


def test_decode_failure_becomes_a_failed_record(spy: PredictSpy) -> None:
    predictor, _ = _predictor({_url(0): [b"not an image"]})

    ((record,),) = predictor.records([Chunk("job-1", 0, [WorkItem(index=0, url=_url(0))])])

    assert record["status"] == FAILED
    assert record["error"]["code"] == "not_an_image"


def test_same_url_in_two_chunks_gets_a_record_in_each(spy: PredictSpy) -> None:
    chunks = [
        Chunk("job-a", 0, [WorkItem(index=0, url=_url(0))]),
        Chunk("job-b", 0, [WorkItem(index=0, url=_url(0))]),
    ]
    predictor, _ = _predictor({_url(0): [b"x"]})

    rows = predictor.records(chunks)

    assert [r["job_id"] for chunk_rows in rows for r in chunk_rows] == ["job-a", "job-b"]
    assert len(spy.calls) == 1 and len(spy.calls[0]) == 2


def test_chunk_predictor_calls_predictor_predict_payloads() -> None:
    # guard: the name the spy replaces really is the shared predictor function
    assert batch_module.predict_payloads is predict_payloads


# --- ChunkWriter ------------------------------------------------------------------------------


class FakeS3:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, ContentType: str) -> dict[str, Any]:
        self.objects[Key] = Body
        return {}


class FakeSQS:
    def __init__(self) -> None:
        self.bodies: list[str] = []

    def send_message(self, *, QueueUrl: str, MessageBody: str, DelaySeconds: int) -> dict[str, Any]:
        self.bodies.append(MessageBody)
        return {}


def _writer(
    chunks_total: int = 2, status: JobStatus = JobStatus.RUNNING, split_done: bool = True
) -> tuple[ChunkWriter, FakeJobs, FakeS3, FakeSQS]:
    job = Job(
        "job-1", status, "s3://in/manifests/a.txt", total=4, chunks_total=chunks_total, split_done=split_done
    )
    jobs, s3, sqs = FakeJobs(job), FakeS3(), FakeSQS()
    writer = ChunkWriter(jobs, ResultStore(s3, "out"), Queue(sqs, "https://sqs/finalize"))  # type: ignore[arg-type]
    return writer, jobs, s3, sqs


def _rows(chunk: int, statuses: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for i, status in enumerate(statuses):
        record = failed_record("job-1", WorkItem(index=chunk * 2 + i, url=_url(i)), "http_error", "x", MODEL)
        rows.append(record | {"status": status, "error": None} if status == SUCCEEDED else record)
    return rows


def _part(s3: FakeS3, chunk: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in s3.objects[part_key("job-1", chunk)].splitlines()]


def test_write_stores_part_rows_and_counts_the_chunk() -> None:
    writer, jobs, s3, sqs = _writer()
    records = _rows(0, [SUCCEEDED, FAILED])

    assert writer.write(Chunk("job-1", 0, []), records, MODEL) is True

    assert _part(s3, 0) == records
    assert jobs.rows == records
    assert jobs.count_calls == [(0, 1, 1, MODEL)]
    assert sqs.bodies == []  # one of two chunks done: no finalize yet


def test_last_chunk_requests_finalize() -> None:
    writer, _, _, sqs = _writer()

    writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED, SUCCEEDED]), MODEL)
    writer.write(Chunk("job-1", 1, []), _rows(1, [SUCCEEDED, FAILED]), MODEL)

    assert [parse_finalize(b) for b in sqs.bodies] == ["job-1"]


def test_a_chunk_counted_before_is_not_written_again() -> None:
    writer, jobs, s3, sqs = _writer()
    first = _rows(0, [SUCCEEDED, SUCCEEDED])
    writer.write(Chunk("job-1", 0, []), first, MODEL)

    again = writer.write(Chunk("job-1", 0, []), _rows(0, [FAILED, FAILED]), MODEL)

    assert again is False
    assert _part(s3, 0) == first  # the part that was counted stays
    assert jobs.rows == first
    assert len(jobs.count_calls) == 1
    assert (jobs.job.succeeded, jobs.job.failed, jobs.job.chunks_done) == (2, 0, 1)
    assert sqs.bodies == []


def test_redelivery_of_the_last_chunk_requests_finalize_again() -> None:
    # a lost finalize message is made up for by any later delivery of a counted chunk
    writer, _, _, sqs = _writer(chunks_total=1)
    writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED]), MODEL)

    assert writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED]), MODEL) is False

    assert [parse_finalize(b) for b in sqs.bodies] == ["job-1", "job-1"]


def test_no_finalize_for_a_job_that_is_already_final() -> None:
    writer, jobs, _, sqs = _writer(chunks_total=1)
    writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED]), MODEL)
    jobs.job = replace(jobs.job, status=JobStatus.COMPLETED)

    writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED]), MODEL)

    assert len(sqs.bodies) == 1


def test_no_finalize_while_the_split_is_still_running() -> None:
    writer, _, _, sqs = _writer(chunks_total=1, status=JobStatus.SPLITTING, split_done=False)

    writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED]), MODEL)

    assert sqs.bodies == []


def test_write_reports_false_when_another_delivery_counted_first() -> None:
    writer, jobs, _, _ = _writer()

    class RacingJobs(FakeJobs):
        def chunk_counted(self, job_id: str, chunk: int) -> bool:
            return False  # the other delivery counts between this check and count_chunk

    racing = RacingJobs(jobs.job)
    racing.markers.add(0)
    writer.jobs = racing  # type: ignore[assignment]

    assert writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED]), MODEL) is False
    assert racing.job.chunks_done == 0


def test_a_chunk_claimed_by_another_delivery_is_not_written() -> None:
    # Two deliveries at once: the second must not overwrite what the first is writing.
    from batchpredict.writer import ChunkBusyError

    writer, jobs, s3, _ = _writer()
    jobs.claims = {1}
    with pytest.raises(ChunkBusyError, match="being written by another delivery"):
        writer.write(Chunk("job-1", 1, []), _rows(1, [SUCCEEDED, SUCCEEDED]), MODEL)
    assert s3.objects == {} and jobs.rows == [] and jobs.markers == set()
