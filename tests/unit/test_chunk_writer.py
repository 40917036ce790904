"""Unit tests for writer.py: ChunkWriter's part, rows, counted marker, claim and finalize request.

Fakes only: an in-memory job store, and real ResultStore / Queue adapters over recording
S3 / SQS clients.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from batchpredict.costs import ComputeMeter
from batchpredict.jobs import Job, JobStatus
from batchpredict.messages import Chunk, parse_finalize
from batchpredict.queues import Queue
from batchpredict.records import FAILED, SUCCEEDED, ResultError, ResultRecord, WorkItem
from batchpredict.results import ResultStore, part_key
from batchpredict.writer import ChunkBusyError, ChunkWriter
from tests.unit.fakes import FakeJobs, FakeS3, FakeSQS

MODEL = "efficientnet-lite0@1"
OUT = "out"
FINALIZE_URL = "https://sqs/finalize"


def _url(index: int) -> str:
    return f"https://img.example/{index}.jpg"


# --- ChunkWriter ------------------------------------------------------------------------------


def _writer(
    chunks_total: int = 2, status: JobStatus = JobStatus.RUNNING, split_done: bool = True
) -> tuple[ChunkWriter, FakeJobs, FakeS3, FakeSQS]:
    job = Job(
        "job-1", status, "s3://in/manifests/a.txt", total=4, chunks_total=chunks_total, split_done=split_done
    )
    jobs, s3, sqs = FakeJobs(job), FakeS3(), FakeSQS()
    writer = ChunkWriter(jobs, ResultStore(s3, OUT), Queue(sqs, FINALIZE_URL))  # type: ignore[arg-type]
    return writer, jobs, s3, sqs


def _rows(chunk: int, statuses: Sequence[str]) -> list[ResultRecord]:
    return [
        ResultRecord.for_item(
            "job-1",
            WorkItem(index=chunk * 2 + i, url=_url(i)),
            model=MODEL,
            error=None if status == SUCCEEDED else ResultError("http_error", "x"),
        )
        for i, status in enumerate(statuses)
    ]


def _part(s3: FakeS3, chunk: int) -> list[ResultRecord]:
    lines = s3.objects[OUT][part_key("job-1", chunk)].splitlines()
    return [ResultRecord.from_json(json.loads(line)) for line in lines]


def test_write_stores_part_rows_and_counts_the_chunk() -> None:
    writer, jobs, s3, sqs = _writer()
    records = _rows(0, [SUCCEEDED, FAILED])

    assert writer.write(Chunk("job-1", 0, []), records, MODEL) is True

    assert _part(s3, 0) == records
    assert jobs.rows == records
    assert jobs.count_calls == [(0, 1, 1, MODEL)]
    assert sqs.delivered[FINALIZE_URL] == []  # one of two chunks done: no finalize yet


def test_last_chunk_requests_finalize() -> None:
    writer, _, _, sqs = _writer()

    writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED, SUCCEEDED]), MODEL)
    writer.write(Chunk("job-1", 1, []), _rows(1, [SUCCEEDED, FAILED]), MODEL)

    assert [parse_finalize(b) for b in sqs.delivered[FINALIZE_URL]] == ["job-1"]


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
    assert sqs.delivered[FINALIZE_URL] == []


def test_redelivery_of_the_last_chunk_requests_finalize_again() -> None:
    # a lost finalize message is made up for by any later delivery of a counted chunk
    writer, _, _, sqs = _writer(chunks_total=1)
    writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED]), MODEL)

    assert writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED]), MODEL) is False

    assert [parse_finalize(b) for b in sqs.delivered[FINALIZE_URL]] == ["job-1", "job-1"]


def test_no_finalize_for_a_job_that_is_already_final() -> None:
    writer, jobs, _, sqs = _writer(chunks_total=1)
    writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED]), MODEL)
    jobs.job = replace(jobs.job, status=JobStatus.COMPLETED)

    writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED]), MODEL)

    assert len(sqs.delivered[FINALIZE_URL]) == 1


def test_no_finalize_while_the_split_is_still_running() -> None:
    writer, _, _, sqs = _writer(chunks_total=1, status=JobStatus.SPLITTING, split_done=False)

    writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED]), MODEL)

    assert sqs.delivered[FINALIZE_URL] == []


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

    writer, jobs, s3, _ = _writer()
    jobs.claims = {1}
    with pytest.raises(ChunkBusyError, match="being written by another delivery"):
        writer.write(Chunk("job-1", 1, []), _rows(1, [SUCCEEDED, SUCCEEDED]), MODEL)
    assert s3.objects == {} and jobs.rows == [] and jobs.markers == set()


class StepClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_counted_chunk_carries_its_share_of_the_invocation_time_and_writes() -> None:
    writer, jobs, _, _ = _writer()
    clock = StepClock()
    meter = ComputeMeter(memory_mb=2048, clock=clock)
    clock.now += 0.250
    writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED, FAILED]), MODEL, meter=meter)
    clock.now += 0.100
    writer.write(Chunk("job-1", 1, []), _rows(1, [SUCCEEDED]), MODEL, meter=meter)

    first, second = jobs.usages
    assert first is not None and second is not None
    assert (first.billed_ms, first.memory_mb, first.invocations) == (250, 2048, 1)
    assert (second.billed_ms, second.invocations) == (100, 0)  # the invocation is counted once
    assert (first.write_units, second.write_units) == (3, 2)  # a unit a row (fake) + the claim


def test_a_chunk_counted_before_hands_its_time_to_the_next_one() -> None:
    writer, jobs, _, _ = _writer()
    clock = StepClock()
    meter = ComputeMeter(memory_mb=1024, clock=clock)
    jobs.markers.add(0)  # counted, but its marker check raced this delivery: count_chunk says False
    jobs.chunk_counted = lambda job_id, chunk: False  # type: ignore[method-assign]
    clock.now += 0.200
    assert writer.write(Chunk("job-1", 0, []), _rows(0, [SUCCEEDED]), MODEL, meter=meter) is False
    clock.now += 0.050
    assert writer.write(Chunk("job-1", 1, []), _rows(1, [SUCCEEDED]), MODEL, meter=meter) is True

    refunded, counted = jobs.usages
    assert refunded is not None and counted is not None
    assert (counted.billed_ms, counted.invocations) == (250, 1)


def test_writes_are_retried_until_shortly_before_the_invocation_ends() -> None:
    deadlines: list[float | None] = []

    class Recording(FakeJobs):
        def claim_chunk(self, job_id: str, chunk: int, lease: float, deadline: float | None = None) -> bool:
            deadlines.append(deadline)
            return super().claim_chunk(job_id, chunk, lease)

        def put_results(self, records: list[ResultRecord], deadline: float | None = None) -> int:
            deadlines.append(deadline)
            return super().put_results(records)

        def count_chunk(self, *args: Any, deadline: float | None = None, **kwargs: Any) -> bool:
            deadlines.append(deadline)
            return super().count_chunk(*args, **kwargs)

    job = Job("job-1", JobStatus.RUNNING, "s3://in/manifests/a.txt", total=2, chunks_total=1, split_done=True)
    writer = ChunkWriter(
        Recording(job),  # type: ignore[arg-type]
        ResultStore(FakeS3(), "out"),
        Queue(FakeSQS(), "https://sqs/finalize"),  # type: ignore[arg-type]
        clock=lambda: 100.0,
    )
    records = [
        ResultRecord.failed("job-1", WorkItem(index=i, url=_url(i)), "http_error", "HTTP 404") for i in (0, 1)
    ]

    # The lease is the invocation's remaining 30 s + the 5 s margin: writes stop 1.5 s before its end.
    writer.write(Chunk("job-1", 0, []), records, MODEL, lease_seconds=35.0)

    assert deadlines == [128.5, 128.5, 128.5]


# --- rows DynamoDB would refuse -----------------------------------------------------------------


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        (_deep(32), "nested more than 32 levels deep"),  # the item itself is the first level
        ({"blob": "x" * 420_000}, "larger than DynamoDB's 400 KB item limit"),
    ],
)
def test_a_row_dynamodb_would_refuse_fails_its_line_alone(metadata: dict[str, Any], reason: str) -> None:
    writer, jobs, s3, _ = _writer()
    good = _rows(0, [SUCCEEDED, SUCCEEDED])
    bad = replace(good[1], id="k" * 300, metadata=metadata)
    records = [good[0], bad]

    assert writer.write(Chunk("job-1", 0, []), records, MODEL) is True

    stored = jobs.rows[1]
    assert stored.status == FAILED and stored.metadata is None and "metadata" not in stored.to_json()
    assert stored.error is not None and stored.error.code == "invalid_manifest_line"
    assert reason in stored.error.message
    assert (stored.index, stored.url, stored.id) == (1, _url(1), "k" * 200 + "…")
    assert jobs.rows[0] == good[0]  # the rest of the chunk is written as it was
    assert _part(s3, 0) == jobs.rows == records  # part, rows and the caller's records agree
    assert jobs.count_calls == [(0, 1, 1, MODEL)]


def test_item_limits_follow_dynamodb_sizing() -> None:
    from batchpredict.itemlimits import MAX_ITEM_BYTES, item_problem

    # names + values: "s" 1+3, "n" 1 + (3 digits -> 2) + 1, "b" 1+1, "m" 1 + 3 + ("k" 1 + 1 + 1)
    # exactly at the limit passes, one byte over does not
    base = {"s": "abc", "n": 12300, "b": True, "m": {"k": None}}
    size = 4 + 4 + 2 + 7
    assert item_problem(base | {"pad": "x" * (MAX_ITEM_BYTES - size - 3)}) is None
    assert item_problem(base | {"pad": "x" * (MAX_ITEM_BYTES - size - 2)}) is not None
    # DynamoDB Local takes 31 maps inside an item and refuses 32: the item is the first level.
    assert item_problem({"deep": _deep(31)}) is None
    assert item_problem({"deep": [_deep(31)]}) == "nested more than 32 levels deep"
    very_deep: Any = 1
    for _ in range(100_000):  # no recursion: measured, not a RecursionError
        very_deep = [very_deep]
    assert item_problem({"v": very_deep}) == "nested more than 32 levels deep"


# --- max-failures, judged after a chunk was counted ------------------------------------------


def _job_with_threshold(max_failures: str | None, failed: int, finished: int) -> tuple[ChunkWriter, FakeJobs]:
    """A running job with its threshold as the JOB record stores it, ``failed`` of ``finished``
    lines counted before the chunk the test writes (2 lines, both failed)."""
    writer, jobs, _, _ = _writer(chunks_total=4)
    jobs.job = replace(jobs.job, max_failures=max_failures, failed=failed, succeeded=finished - failed)
    return writer, jobs


def _write_two_failures(writer: ChunkWriter, max_failures: str) -> bool:
    return writer.write(Chunk("job-1", 0, [], max_failures=max_failures), _rows(0, [FAILED, FAILED]), MODEL)


def test_max_failures_of_a_million_is_stored_and_enforced() -> None:
    from batchpredict.options import parse_options

    # the option as an uploader sets it, through the JOB record and the chunk message
    stored = parse_options({"max-failures": "1000000"}).as_item()["max_failures"]
    assert stored == "1000000"
    # 999,999 failed + 2 = 1,000,001 > 1,000,000: the job stops, and the write does not raise
    writer, jobs = _job_with_threshold(stored, failed=999_999, finished=1_500_000)
    assert _write_two_failures(writer, stored) is True
    assert jobs.job.status == JobStatus.CANCELLING
    assert jobs.job.stop_reason == "tolerated_failures_exceeded"
    assert jobs.job.stop_detail == (
        "tolerated_failures_exceeded: 1000001 of 1500002 finished lines failed,"
        " more than max-failures 1000000"
    )
    # at exactly 1,000,000 it goes on
    writer, jobs = _job_with_threshold(stored, failed=999_998, finished=1_500_000)
    assert _write_two_failures(writer, stored) is True
    assert jobs.job.status == JobStatus.RUNNING


def test_a_threshold_stored_in_the_old_form_is_still_enforced() -> None:
    # main stored 1,000,000 as "1e+06": the writer raised on every chunk with a failure
    writer, jobs = _job_with_threshold("1e+06", failed=999_999, finished=1_500_000)
    assert _write_two_failures(writer, "1e+06") is True
    assert jobs.job.status == JobStatus.CANCELLING


@pytest.mark.parametrize("stored", ["lots", "1e+999", "-5", "101%", "\u0661\u0662"])
def test_an_unreadable_threshold_is_logged_and_ignored_not_raised(
    stored: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer, jobs = _job_with_threshold(stored, failed=500, finished=1_000)
    assert _write_two_failures(writer, stored) is True  # counted, and no exception to redeliver it
    assert jobs.job.status == JobStatus.RUNNING and jobs.chunk_counted("job-1", 0)
    assert "unreadable max-failures" in caplog.text
