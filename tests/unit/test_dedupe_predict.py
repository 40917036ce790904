"""Dedupe in predict, with fakes: the same URL of a job fetched once in a run, the same bytes
decoded and inferred once (pipeline.py, sharedwork.py); a shared line whose original is
elsewhere copies the original's IMG# row (sharing.py), or is predicted itself when there is none.

Fetches are counted by the scripted fetcher, decodes by the decoder, inferences by the engine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from batchpredict.batch import ChunkBatch
from batchpredict.deferral import EARLY_SHARE, SPREAD
from batchpredict.fidelity import Fidelity
from batchpredict.images import DecodedImage
from batchpredict.jobs import Job, JobStatus
from batchpredict.messages import Chunk
from batchpredict.pipeline import ImageResult, _Run
from batchpredict.predictor import Outcome
from batchpredict.queues import Queue
from batchpredict.records import FAILED, SUCCEEDED, ImageInfo, Prediction, ResultError, ResultRecord, WorkItem
from batchpredict.results import ResultStore
from batchpredict.sharedwork import Follower
from batchpredict.sharing import MAX_ORIGINAL_WAITS, OriginalMissing, when_original_missing
from batchpredict.writer import ChunkWriter
from tests.unit.fakes import HANG, FakeJobs, FakeS3, FakeSQS, ScriptedFetcher
from tests.unit.test_pipeline_stream import FakeDecoder, FakeEngine, _img, _run, _stream, _url

JOB = "job-1"


class CountingDecoder(FakeDecoder):
    def __init__(self) -> None:
        super().__init__()
        self.decoded: list[bytes] = []

    def decode(self, payload: bytes, deadline: float, fidelity: Fidelity) -> DecodedImage:
        self.decoded.append(payload)
        return super().decode(payload, deadline, fidelity)


def _items(urls: Sequence[str], job: str | None = JOB, start: int = 0, **fields: Any) -> list[WorkItem]:
    return [WorkItem(index=start + i, url=url, job_id=job, **fields) for i, url in enumerate(urls)]


def _inferred(engine: FakeEngine) -> list[int]:
    return sorted(i for batch in engine.passes for i in batch)


def _labels(results: Sequence[ImageResult]) -> list[str]:
    return [r.outcome.predictions[0].label if r.outcome.predictions else "-" for r in results]


# --- the run: same URL, same bytes ---------------------------------------------------------


def test_the_same_url_of_a_job_is_fetched_decoded_and_inferred_once_in_a_run() -> None:
    fetcher = ScriptedFetcher({_url(1): [_img(1)], _url(2): [_img(2)]})
    decoder = CountingDecoder()
    predictor, engine = _stream(fetcher, decoder=decoder, linger=0.02)
    same = ["HTTPS://IMG.example:443/1.jpg#x", _url(1)]  # both normalise to _url(1)'s key
    groups = [_items([_url(1), _url(2), same[0]]), _items([same[1], _url(1)], start=3)]

    done, _, unfinished = _run(predictor, groups)

    assert not unfinished
    assert fetcher.calls == {_url(1): 1, _url(2): 1}
    assert len(decoder.decoded) == 2 and _inferred(engine) == [1, 2]
    results = done[0] + done[1]
    assert _labels(results) == ["label 1", "label 2", "label 1", "label 1", "label 1"]
    assert [r.shared_with for r in results] == [None, None, 0, 0, 0]
    assert [r.item.index for r in results] == [0, 1, 2, 3, 4]  # each line keeps its own item
    copy = results[2]
    assert copy.item.url == same[0]
    assert copy.outcome.image is results[0].outcome.image  # the same image, not decoded again
    assert (copy.fetch_ms, copy.outcome.preprocess_ms, copy.outcome.inference_ms) == (0.0, 0.0, 0.0)


def test_a_failed_fetch_is_shared_with_its_error() -> None:
    from batchpredict.errors import ErrorCode, PredictionError

    error = PredictionError(ErrorCode.HTTP_ERROR, "HTTP 404", transient=False)
    fetcher = ScriptedFetcher({_url(1): [error]})
    predictor, engine = _stream(fetcher)

    done, _, _ = _run(predictor, [_items([_url(1), _url(1), _url(1)])])

    assert fetcher.calls == {_url(1): 1} and engine.passes == []
    assert [r.outcome.error.code if r.outcome.error else None for r in done[0]] == ["http_error"] * 3
    assert [r.shared_with for r in done[0]] == [None, 0, 0]


def test_the_same_url_in_two_jobs_is_fetched_for_each_and_its_bytes_decoded_once() -> None:
    # A job's fetch is its own (its options may differ); identical bytes are still decoded once.
    fetcher = ScriptedFetcher({_url(1): [_img(1)]})
    decoder = CountingDecoder()
    predictor, engine = _stream(fetcher, decoder=decoder, linger=0.02)

    done, _, _ = _run(predictor, [_items([_url(1)], job="job-a"), _items([_url(1)], job="job-b")])

    assert fetcher.calls == {_url(1): 2}
    assert len(decoder.decoded) == 1 and _inferred(engine) == [1]
    assert _labels(done[0] + done[1]) == ["label 1", "label 1"]
    assert [r.shared_with for r in done[0] + done[1]] == [None, None]  # no fetch shared


def test_identical_bytes_behind_different_urls_are_decoded_and_inferred_once() -> None:
    fetcher = ScriptedFetcher({_url(i): [_img(7)] for i in range(4)} | {_url(9): [_img(9)]})
    decoder = CountingDecoder()
    predictor, engine = _stream(fetcher, decoder=decoder, linger=0.02)

    done, _, unfinished = _run(predictor, [_items([_url(i) for i in (0, 1, 9, 2, 3)])])

    assert not unfinished and all(calls == 1 for calls in fetcher.calls.values()) and len(fetcher.calls) == 5
    assert sorted(decoder.decoded) == [_img(7), _img(9)]
    assert _inferred(engine) == [7, 9]
    results = done[0]
    assert _labels(results) == ["label 7", "label 7", "label 9", "label 7", "label 7"]
    assert [r.shared_with for r in results] == [None] * 5  # each fetched for itself
    followers = [r for r in results if r.outcome.preprocess_ms == 0.0]
    assert len(followers) == 3 and all(r.fetch_ms >= 0.0 for r in followers)


def test_identical_bytes_of_another_fidelity_are_decoded_again() -> None:
    fetcher = ScriptedFetcher({_url(0): [_img(3)], _url(1): [_img(3)]})
    decoder = CountingDecoder()
    predictor, _ = _stream(fetcher, decoder=decoder, linger=0.02)
    items = [WorkItem(0, _url(0), job_id=JOB), WorkItem(1, _url(1), job_id=JOB, fidelity=Fidelity.FAST)]

    _run(predictor, [items])

    assert len(decoder.decoded) == 2


def test_followers_of_a_line_cut_by_the_deadline_are_left_unfinished_too() -> None:
    fetcher = ScriptedFetcher({_url(0): [HANG], _url(1): [_img(1)]})
    predictor, _ = _stream(fetcher, linger=0.02)

    done, _, unfinished = _run(predictor, [_items([_url(0)]), _items([_url(1), _url(0)], start=1)], 0.5)

    assert unfinished == {0, 1} and done == {}
    assert fetcher.calls[_url(0)] == 1


def test_a_follower_of_a_line_already_done_takes_its_result_at_once() -> None:
    run = _Run(deadline=time.monotonic() + 10)
    leader, late = WorkItem(0, _url(0), job_id=JOB), WorkItem(5, _url(0), job_id=JOB)
    run.groups += [[leader], [late]]
    run.results += [[None], [None]]
    run.pending += [1, 1]
    assert not run.follow(("url", 0), Follower((0, 0)))
    prediction = Prediction(1, 3, "n3", "label 3", 0.5)
    run.finish(0, 0, ImageResult(leader, Outcome(predictions=[prediction]), 12.0))

    assert run.follow(("url", 0), Follower((1, 0)))

    copy = run.results[1][0]
    assert copy is not None and copy.item is late and copy.outcome.predictions == [prediction]
    assert (copy.shared_with, copy.fetch_ms) == (0, 0.0)
    assert list(run.completed) == [0, 1]


# --- ChunkBatch: originals in the run, elsewhere, missing ----------------------------------


def _writer(rows: Sequence[ResultRecord] = ()) -> tuple[ChunkWriter, FakeJobs]:
    jobs = FakeJobs(Job(JOB, JobStatus.RUNNING, "s3://in/manifests/m.txt", total=99, chunks_total=9))
    jobs.rows.extend(rows)
    return ChunkWriter(jobs, ResultStore(FakeS3(), "out"), Queue(FakeSQS(), "https://sqs/f")), jobs  # type: ignore[arg-type]


def _row(index: int, url: str, label: int | None, code: str | None = None, **fields: Any) -> ResultRecord:
    return ResultRecord.for_item(
        JOB,
        WorkItem(index, url),
        model="m@1",
        error=None if code is None else ResultError(code, "why"),
        predictions=() if label is None else (Prediction(1, label, f"n{label}", f"label {label}", 0.9),),
        image=None if label is None else ImageInfo(64, 48, 5, "ab" * 32, "jpeg"),
        **fields,
    )


def _deliver(
    writer: ChunkWriter, fetcher: ScriptedFetcher, *chunks: Chunk
) -> tuple[dict[str, Any], FakeEngine]:
    predictor, engine = _stream(fetcher, linger=0.02)
    batch = ChunkBatch(predictor, writer, memory_mb=1024, write_reserve_seconds=0.0)
    ends = time.monotonic() + 10.0
    messages = [(f"m{chunk.chunk}", chunk.body()) for chunk in chunks]
    return batch.run(messages, lambda: ends - time.monotonic()), engine


def _shared(index: int, url: str, original: int, **fields: Any) -> WorkItem:
    return WorkItem(index, url, shares=original, **fields)


def test_a_shared_line_whose_original_is_in_the_run_reads_nothing_and_shares_its_fetch() -> None:
    writer, jobs = _writer()
    fetcher = ScriptedFetcher({_url(1): [_img(1)], _url(2): [_img(2)]})
    first = Chunk(JOB, 0, [WorkItem(0, _url(1)), WorkItem(1, _url(2))])
    second = Chunk(JOB, 1, [_shared(2, _url(1), 0, id="again"), _shared(3, _url(2), 1)])

    outcomes, engine = _deliver(writer, fetcher, first, second)

    assert jobs.row_reads == [] and fetcher.calls == {_url(1): 1, _url(2): 1}
    assert _inferred(engine) == [1, 2]
    records = outcomes["m1"].records
    assert [(r.index, r.id, r.shared_with, r.predictions[0].label) for r in records] == [
        (2, "again", 0, "label 1"),
        (3, None, 1, "label 2"),
    ]


def test_a_shared_line_whose_original_is_elsewhere_copies_its_row_without_a_fetch() -> None:
    original = _row(0, _url(1), label=1)
    failed = _row(1, _url(2), label=None, code="http_error")
    writer, jobs = _writer([original, failed])
    fetcher = ScriptedFetcher({_url(3): [_img(3)]})
    chunk = Chunk(
        JOB,
        1,
        [
            _shared(16, "HTTPS://img.example/1.jpg#x", 0, id="a", metadata={"k": "v"}),
            _shared(17, _url(2), 1),
            WorkItem(18, _url(3)),
        ],
    )

    outcomes, engine = _deliver(writer, fetcher, chunk)

    assert jobs.row_reads == [[(JOB, 0), (JOB, 1)]]  # one read for the chunk's shared lines
    assert fetcher.calls == {_url(3): 1} and _inferred(engine) == [3]
    copied, copied_failure, own = outcomes["m1"].records
    assert (copied.index, copied.id, copied.url, copied.metadata) == (
        16,
        "a",
        "HTTPS://img.example/1.jpg#x",
        {"k": "v"},
    )
    assert (copied.status, copied.predictions, copied.image) == (
        SUCCEEDED,
        original.predictions,
        original.image,
    )
    assert copied.shared_with == 0 and copied.job_id == JOB and copied.model == "m@1"
    assert (copied.timing_ms.fetch, copied.timing_ms.inference) == (0.0, 0.0)
    assert (copied_failure.status, copied_failure.error, copied_failure.shared_with) == (
        FAILED,
        failed.error,
        1,
    )
    assert own.shared_with is None and own.predictions[0].label == "label 3"
    # Counted as their copied status.
    assert jobs.count_calls == [(1, 2, 1, "efficientnet-lite0@1")]


def test_a_copied_row_that_shares_itself_names_the_line_that_was_fetched() -> None:
    writer, _ = _writer([_row(5, _url(1), label=1, shared_with=2)])
    outcomes, _ = _deliver(writer, ScriptedFetcher({}), Chunk(JOB, 2, [_shared(40, _url(1), 5)]))
    assert outcomes["m2"].records[0].shared_with == 2


@pytest.mark.parametrize(
    "rows",
    [
        [],  # not written yet: its chunk still runs elsewhere
        [_row(0, _url(1), label=None, code="dead_lettered")],  # failed for its chunk, not its image
        [_row(0, _url(1), label=None, code="cancelled")],
        [_row(0, _url(1), label=None, code="invalid_manifest_line")],  # its own row was too large
        [_row(0, "https://img.example/other.jpg", label=1)],  # not the same URL
    ],
)
def test_a_shared_line_without_a_usable_row_is_predicted_itself(rows: list[ResultRecord]) -> None:
    writer, jobs = _writer(rows)
    fetcher = ScriptedFetcher({_url(1): [_img(1)]})

    outcomes, engine = _deliver(writer, fetcher, Chunk(JOB, 1, [_shared(16, _url(1), 0)]))

    assert jobs.row_reads == [[(JOB, 0)]] and fetcher.calls == {_url(1): 1} and _inferred(engine) == [1]
    (record,) = outcomes["m1"].records
    assert (record.status, record.shared_with, record.predictions[0].label) == (SUCCEEDED, None, "label 1")
    # With a deferrer, a missing row is waited for a few times, then the line predicts itself.
    item = WorkItem(16, _url(1), shares=0)
    assert when_original_missing(item, 0) is OriginalMissing.DEFER
    assert when_original_missing(item, MAX_ORIGINAL_WAITS) is OriginalMissing.PREDICT


def test_a_failed_row_read_leaves_the_lines_to_be_predicted() -> None:
    writer, jobs = _writer()

    def broken(lines: Any) -> Any:
        raise RuntimeError("DynamoDB is down")

    jobs.result_rows = broken  # type: ignore[method-assign]
    fetcher = ScriptedFetcher({_url(1): [_img(1)]})

    outcomes, _ = _deliver(writer, fetcher, Chunk(JOB, 1, [_shared(16, _url(1), 0)]))

    assert outcomes["m1"].error is None and outcomes["m1"].records[0].status == SUCCEEDED
    assert fetcher.calls == {_url(1): 1}


def test_a_chunk_of_only_copied_lines_is_written_without_the_predictor() -> None:
    writer, jobs = _writer([_row(0, _url(1), label=1), _row(1, _url(2), label=2)])
    fetcher = ScriptedFetcher({})

    outcomes, engine = _deliver(
        writer, fetcher, Chunk(JOB, 3, [_shared(48, _url(2), 1), _shared(49, _url(1), 0)])
    )

    assert fetcher.calls == {} and engine.passes == []
    assert [(r.index, r.shared_with) for r in outcomes["m3"].records] == [(48, 1), (49, 0)]
    assert outcomes["m3"].counted and jobs.count_calls == [(3, 2, 0, "efficientnet-lite0@1")]


def test_a_chunk_delivered_twice_into_one_run_names_no_line_as_its_own_original() -> None:
    fetcher = ScriptedFetcher({_url(1): [_img(1)]})
    predictor, _ = _stream(fetcher, linger=0.02)

    done, _, _ = _run(predictor, [_items([_url(1)], start=7), _items([_url(1)], start=7)])

    assert fetcher.calls == {_url(1): 1}
    assert [r.shared_with for r in done[0] + done[1]] == [None, None]


def test_the_followers_of_a_deferred_line_are_deferred_with_it() -> None:
    run = _Run(deadline=time.monotonic() + 10)
    leader, follower = WorkItem(0, _url(0), job_id=JOB), WorkItem(1, _url(0), job_id=JOB)
    run.groups.append([leader, follower])
    run.results.append([None, None])
    run.pending.append(2)
    assert not run.follow(("url", 0), Follower((0, 0)))
    assert run.follow(("url", 0), Follower((0, 1)))

    run.finish(0, 0, ImageResult(leader, Outcome(deferred_until=123.0, refused=True)))

    copy = run.results[0][1]
    assert copy is not None and (copy.outcome.deferred_until, copy.outcome.refused) == (123.0, True)


def test_with_deferral_switched_on_a_line_without_its_originals_row_waits_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchpredict import sharing
    from batchpredict.deferral import ChunkDeferrer
    from batchpredict.hostlimits import HostPolicy

    monkeypatch.setattr(sharing, "when_original_missing", lambda item, waits: OriginalMissing.DEFER)
    writer, jobs = _writer()
    sqs = FakeSQS()
    deferrer = ChunkDeferrer(writer.results, jobs, Queue(sqs, "https://sqs/work"), HostPolicy())  # type: ignore[arg-type]
    fetcher = ScriptedFetcher({_url(2): [_img(2)]})
    predictor, _ = _stream(fetcher, linger=0.02)
    batch = ChunkBatch(predictor, writer, memory_mb=1024, write_reserve_seconds=0.0, deferrer=deferrer)
    chunk = Chunk(JOB, 1, [_shared(16, _url(1), 0), WorkItem(17, _url(2))])
    ends = time.monotonic() + 10.0

    outcomes = batch.run([("m1", chunk.body())], lambda: ends - time.monotonic())

    assert outcomes["m1"].deferred and fetcher.calls == {_url(2): 1}  # line 16 is not fetched
    (sent,) = [call for call in sqs.sent if call["QueueUrl"] == "https://sqs/work"]
    again = Chunk.parse(sent["MessageBody"])
    assert [(item.index, item.shares) for item in again.items] == [(16, 0)]
    # A line waiting (not refused) comes back after EARLY_SHARE of its wait, spread by up to SPREAD.
    wait = EARLY_SHARE * sharing.ORIGINAL_WAIT_SECONDS
    assert wait <= sent["DelaySeconds"] <= (1 + SPREAD) * wait + 1
    assert jobs.count_calls == []  # the chunk is counted when its last line is done


def test_with_deferral_switched_on_a_row_that_cannot_be_copied_is_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchpredict import sharing
    from batchpredict.deferral import ChunkDeferrer
    from batchpredict.hostlimits import HostPolicy

    monkeypatch.setattr(sharing, "when_original_missing", lambda item, waits: OriginalMissing.DEFER)
    writer, jobs = _writer([_row(0, _url(1), label=None, code="dead_lettered")])
    sqs = FakeSQS()
    deferrer = ChunkDeferrer(writer.results, jobs, Queue(sqs, "https://sqs/work"), HostPolicy())  # type: ignore[arg-type]
    fetcher = ScriptedFetcher({_url(1): [_img(1)]})
    predictor, _ = _stream(fetcher, linger=0.02)
    batch = ChunkBatch(predictor, writer, memory_mb=1024, write_reserve_seconds=0.0, deferrer=deferrer)
    ends = time.monotonic() + 10.0

    outcomes = batch.run(
        [("m1", Chunk(JOB, 1, [_shared(16, _url(1), 0)]).body())], lambda: ends - time.monotonic()
    )

    assert not outcomes["m1"].deferred and outcomes["m1"].records[0].status == SUCCEEDED
    assert fetcher.calls == {_url(1): 1} and sqs.sent == []
