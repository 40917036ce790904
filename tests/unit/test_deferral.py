"""deferral.py: a chunk's deferred lines go back to the queue with their budget; the finished
ones wait in S3 and are written with the rest, the chunk counted once (writer.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from batchpredict.deferral import (
    MAX_ROUNDS,
    REFUSAL_DELAY_SECONDS,
    SQS_MAX_DELAY_SECONDS,
    ChunkDeferrer,
    refusal_delay,
)
from batchpredict.errors import ErrorCode, PredictionError, RefusedError
from batchpredict.hostlimits import HostPolicy
from batchpredict.jobs import Job, JobStatus
from batchpredict.messages import Chunk, Deferral
from batchpredict.pipeline import ImageResult
from batchpredict.predictor import Outcome
from batchpredict.queues import Queue
from batchpredict.records import FAILED, SUCCEEDED, ResultRecord, WorkItem
from batchpredict.results import ResultStore, deferred_key
from batchpredict.writer import ChunkWriter
from tests.unit.fakes import FakeJobs, FakeS3, FakeSQS

NOW = 1_800_000_000.0
WORK = "https://sqs/work"
MODEL = "m@1"
POLICY = HostPolicy(refusals=3, defer_budget_seconds=600.0)


def _setup() -> tuple[ChunkDeferrer, ChunkWriter, FakeJobs, FakeS3, FakeSQS]:
    jobs = FakeJobs(
        Job("job-1", JobStatus.RUNNING, "s3://in/manifests/a.txt", total=4, chunks_total=1, split_done=True)
    )
    s3, sqs = FakeS3(), FakeSQS()
    results = ResultStore(s3, "out")  # type: ignore[arg-type]
    deferrer = ChunkDeferrer(results, jobs, Queue(sqs, WORK), POLICY, wall=lambda: NOW, spread=lambda: 0.0)  # type: ignore[arg-type]
    writer = ChunkWriter(jobs, results, Queue(sqs, "https://sqs/finalize"))  # type: ignore[arg-type]
    return deferrer, writer, jobs, s3, sqs


def _items() -> list[WorkItem]:
    return [WorkItem(index=i, url=f"https://h{i % 2}.example/{i}.jpg") for i in range(4)]


def _done(item: WorkItem) -> ResultRecord:
    return ResultRecord.for_item("job-1", item, model=MODEL)


def _refused(item: WorkItem, retry_after: float | None = None) -> ImageResult:
    error = RefusedError("HTTP 429 from h1.example", retry_after)
    return ImageResult(item, Outcome(error=error, deferred_until=NOW + (retry_after or 0), refused=True))


def _busy(item: WorkItem, until: float) -> ImageResult:
    error = PredictionError(ErrorCode.RATE_LIMITED, "h1's next turn is far", transient=True)
    return ImageResult(item, Outcome(error=error, deferred_until=until))


def _sent(sqs: FakeSQS) -> tuple[Chunk, int]:
    call = sqs.sent[-1]
    assert call["QueueUrl"] == WORK
    assert call["MessageGroupId"] == "job-1"  # the job's group on the fair work queue
    return Chunk.parse(call["MessageBody"]), call["DelaySeconds"]


def test_deferred_lines_go_back_alone_and_the_finished_ones_wait_in_s3() -> None:
    deferrer, _, jobs, s3, sqs = _setup()
    items = _items()
    chunk = Chunk("job-1", 0, items, top_k=3)
    done = [_done(items[0]), _done(items[2])]
    assert deferrer.defer(chunk, done, [_refused(items[1], 30.0), _busy(items[3], NOW + 12)], MODEL) is None
    again, delay = _sent(sqs)
    assert [i.index for i in again.items] == [1, 3] and again.chunk == 0 and again.top_k == 3
    assert again.deferral == Deferral(1, NOW, (1,), {1: 1})
    assert delay == 6  # half the soonest line's wait for its turn (the refused one waits 30 s)
    saved = s3.objects["out"][deferred_key("job-1", 0, 1)].splitlines()
    assert [json.loads(line)["index"] for line in saved] == [0, 2]
    assert jobs.job.deferred_lines == 2


def test_a_refusal_without_retry_after_waits_longer_with_each_refusal() -> None:
    assert [refusal_delay(n) for n in (1, 2, 3)] == [
        REFUSAL_DELAY_SECONDS,
        2 * REFUSAL_DELAY_SECONDS,
        4 * REFUSAL_DELAY_SECONDS,
    ]
    deferrer, _, _, _, sqs = _setup()
    items = _items()
    chunk = Chunk("job-1", 0, [items[1]], deferral=Deferral(1, NOW - 10, (), {1: 1}))
    deferrer.defer(chunk, [], [_refused(items[1])], MODEL)
    again, delay = _sent(sqs)
    assert again.deferral is not None and again.deferral.refusals == {1: 2}
    assert delay == REFUSAL_DELAY_SECONDS * 2


def test_delays_stay_within_what_sqs_takes() -> None:
    deferrer, _, _, _, sqs = _setup()
    items = _items()
    deferrer.defer(Chunk("job-1", 0, [items[1]]), [], [_busy(items[1], NOW + 5000)], MODEL)
    assert _sent(sqs)[1] == SQS_MAX_DELAY_SECONDS
    deferrer.defer(Chunk("job-1", 0, [items[1]]), [], [_busy(items[1], NOW - 3)], MODEL)
    assert _sent(sqs)[1] == 1


@pytest.mark.parametrize(
    ("deferral", "line", "why"),
    [
        (Deferral(2, NOW - 30, (), {1: 2}), "refused", "refused 3 times"),
        (Deferral(5, NOW - 601, (), {}), "busy", "deferred for 601 s"),
        (Deferral(MAX_ROUNDS, NOW - 1, (), {}), "busy", f"deferred {MAX_ROUNDS} times"),
    ],
)
def test_past_its_budget_a_line_ends_rate_limited_and_the_chunk_is_written(
    deferral: Deferral, line: str, why: str
) -> None:
    deferrer, writer, jobs, s3, sqs = _setup()
    items = _items()
    s3.objects["out"][deferred_key("job-1", 0, 1)] = b"".join(
        json.dumps(_done(items[i]).to_json()).encode() + b"\n" for i in (0, 2, 3)
    )
    chunk = Chunk(
        "job-1", 0, [items[1]], deferral=Deferral(deferral.round, deferral.first_at, (1,), deferral.refusals)
    )
    jobs.job = replace(jobs.job, deferred_lines=1)
    result = _refused(items[1]) if line == "refused" else _busy(items[1], NOW + 5)
    records = deferrer.defer(chunk, [], [result], MODEL)
    assert records is not None and not sqs.sent
    [ended] = records
    assert ended.status == FAILED and ended.error is not None
    assert ended.error.code == ErrorCode.RATE_LIMITED and why in ended.error.message
    # The writer adds the lines finished before, and counts the chunk once, all four lines.
    assert writer.write(chunk, records, MODEL)
    assert [r.index for r in records] == [0, 1, 2, 3]
    assert (jobs.job.succeeded, jobs.job.failed, jobs.job.deferred_lines) == (3, 1, 0)
    part = s3.objects["out"]["results/job-1/parts/000000.jsonl"].splitlines()
    assert [json.loads(p)["status"] for p in part] == [SUCCEEDED, FAILED, SUCCEEDED, SUCCEEDED]


def test_a_second_deferral_keeps_the_first_rounds_lines_and_adds_its_own() -> None:
    deferrer, _, jobs, s3, sqs = _setup()
    items = _items()
    first = Chunk("job-1", 0, items)
    deferrer.defer(first, [_done(items[0])], [_busy(items[i], NOW + 3) for i in (1, 2, 3)], MODEL)
    again, _ = _sent(sqs)
    deferrer.defer(again, [_done(items[1]), _done(items[2])], [_busy(items[3], NOW + 3)], MODEL)
    third, _ = _sent(sqs)
    assert third.deferral is not None and third.deferral.saved == (1, 2) and third.deferral.round == 2
    assert [i.index for i in third.items] == [3]
    assert jobs.job.deferred_lines == 1  # 3 waited, then 1
    assert deferred_key("job-1", 0, 2) in s3.objects["out"]


def test_a_first_delivery_whose_refused_line_is_out_of_budget_writes_its_part_in_order() -> None:
    """With RATE_LIMIT_REFUSALS=1 the refused line ends at once, after lines finished later in the
    manifest: the part must still hold the lines in order (finalize's merge checks it)."""
    jobs = FakeJobs(
        Job("job-1", JobStatus.RUNNING, "s3://in/manifests/a.txt", total=4, chunks_total=1, split_done=True)
    )
    s3, sqs = FakeS3(), FakeSQS()
    results = ResultStore(s3, "out")  # type: ignore[arg-type]
    strict = HostPolicy(refusals=1)
    deferrer = ChunkDeferrer(results, jobs, Queue(sqs, WORK), strict, wall=lambda: NOW)  # type: ignore[arg-type]
    writer = ChunkWriter(jobs, results, Queue(sqs, "https://sqs/finalize"))  # type: ignore[arg-type]
    items = _items()
    chunk = Chunk("job-1", 0, items)
    records = deferrer.defer(chunk, [_done(items[i]) for i in (0, 2, 3)], [_refused(items[1])], MODEL)
    assert records is not None
    assert writer.write(chunk, records, MODEL)
    part = s3.objects["out"]["results/job-1/parts/000000.jsonl"].splitlines()
    assert [json.loads(line)["index"] for line in part] == [0, 1, 2, 3]
