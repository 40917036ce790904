"""Unit tests for finalize.py: merging parts in order with index checks, and dead-letter reconcile.

A real ResultStore over an in-memory S3 fake and an in-memory job store; no network, no moto.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from batchpredict.errors import ErrorCode
from batchpredict.finalize import Finalizer, reconcile_dead_letter
from batchpredict.jobs import FINAL_STATUSES, Job, JobStatus
from batchpredict.messages import Chunk, parse_finalize
from batchpredict.queues import Queue
from batchpredict.records import FAILED, SUCCEEDED, WorkItem, failed_record
from batchpredict.results import ResultStore, jsonl, part_key, results_key, summary_key
from batchpredict.writer import ChunkWriter
from tests.unit.fakes import FakeJobs, FakeS3, FakeSQS

OUT = "output-bucket"
JOB = "job-1"
MODEL = "efficientnet-lite0@1"
FINALIZE_URL = "https://sqs/finalize"


def _job(total: int, chunks: int, done: int | None = None, status: JobStatus = JobStatus.RUNNING) -> Job:
    return Job(
        JOB,
        status,
        "s3://in/manifests/a.txt",
        total=total,
        chunks_total=chunks,
        chunks_done=chunks if done is None else done,
        split_done=True,
        created_at="2025-01-01T00:00:00.000Z",
    )


def _ok(index: int) -> dict[str, Any]:
    item = WorkItem(index=index, url=f"https://img.example/{index}.jpg")
    return failed_record(JOB, item, "x", "x", MODEL) | {
        "status": SUCCEEDED,
        "error": None,
        "predictions": [{"rank": 1, "class_index": 1, "wnid": "n1", "label": "l", "probability": 0.5}],
    }


def _bad(index: int, code: str) -> dict[str, Any]:
    return failed_record(JOB, WorkItem(index=index, url=f"ftp://x/{index}"), code, "nope")


def _setup(job: Job, parts: list[list[dict[str, Any]]]) -> tuple[Finalizer, FakeJobs, FakeS3]:
    s3, jobs = FakeS3(), FakeJobs(job)
    for chunk, records in enumerate(parts):
        s3.add(OUT, part_key(JOB, chunk), jsonl(records))
    return Finalizer(jobs, ResultStore(s3, OUT)), jobs, s3  # type: ignore[arg-type]


def _lines(s3: FakeS3, key: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in s3.objects[OUT][key].splitlines()]


# --- Finalizer --------------------------------------------------------------------------------


def test_parts_are_merged_in_order_and_the_job_completed_with_errors() -> None:
    parts = [
        [_ok(0), _bad(1, "unsupported_scheme")],
        [_ok(2), _bad(3, "http_error")],
        [_bad(4, "http_error")],
    ]
    finalizer, _, s3 = _setup(_job(total=5, chunks=3), parts)

    final = finalizer.finalize(JOB)

    assert [r["index"] for r in _lines(s3, results_key(JOB))] == [0, 1, 2, 3, 4]
    assert _lines(s3, results_key(JOB)) == [r for part in parts for r in part]
    assert final is not None and final.status == JobStatus.COMPLETED_WITH_ERRORS
    assert final.results_uri == f"s3://{OUT}/{results_key(JOB)}"
    summary = json.loads(s3.objects[OUT][summary_key(JOB)])
    assert summary["status"] == "COMPLETED_WITH_ERRORS"
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (5, 2, 3)
    assert summary["errors_by_code"] == {"http_error": 2, "unsupported_scheme": 1}
    assert summary["model"] == MODEL
    assert summary["chunks"] == 3
    assert summary["results_uri"] == final.results_uri


def test_the_summary_says_what_predict_measured_it_cost() -> None:
    job = replace(_job(total=2, chunks=1), compute_ms=500, compute_mb_ms=500 * 2048, invocations=1)
    finalizer, _, s3 = _setup(job, [[_ok(0), _ok(1)]])

    finalizer.finalize(JOB)

    compute = json.loads(s3.objects[OUT][summary_key(JOB)])["compute"]
    assert compute["predict_gb_seconds"] == pytest.approx(1.0)
    assert compute["gb_seconds_per_image"] == pytest.approx(0.5)
    assert compute["predict_invocations"] == 1
    assert compute["estimated_usd"]["total"] > 0


def test_all_succeeded_is_completed() -> None:
    finalizer, _, s3 = _setup(_job(total=3, chunks=2), [[_ok(0), _ok(1)], [_ok(2)]])

    final = finalizer.finalize(JOB)

    assert final is not None and final.status == JobStatus.COMPLETED
    assert json.loads(s3.objects[OUT][summary_key(JOB)])["errors_by_code"] == {}


def test_empty_job_completes_with_an_empty_results_file() -> None:
    finalizer, _, s3 = _setup(_job(total=0, chunks=0), [])

    final = finalizer.finalize(JOB)

    assert final is not None and final.status == JobStatus.COMPLETED
    assert s3.objects[OUT][results_key(JOB)] == b""
    assert json.loads(s3.objects[OUT][summary_key(JOB)])["total"] == 0


def test_a_part_holding_the_wrong_line_is_a_mismatch() -> None:
    finalizer, jobs, s3 = _setup(_job(total=4, chunks=2), [[_ok(0), _ok(1)], [_ok(3), _ok(2)]])

    final = finalizer.finalize(JOB)

    # Retrying cannot mend it: the job fails with the reason, on the record and in the summary.
    assert final is not None and final.status == JobStatus.FAILED
    assert jobs.job.error is not None and "chunk 1 holds line 3, expected 2" in jobs.job.error
    summary = json.loads(s3.objects[OUT][summary_key(JOB)])
    assert summary["status"] == "FAILED" and "chunk 1 holds line 3" in summary["error"]


def test_parts_shorter_than_the_manifest_are_a_mismatch() -> None:
    finalizer, jobs, _ = _setup(_job(total=5, chunks=2), [[_ok(0), _ok(1)], [_ok(2), _ok(3)]])

    final = finalizer.finalize(JOB)

    assert final is not None and final.status == JobStatus.FAILED
    assert jobs.job.error is not None and "parts hold 4 lines, the manifest 5" in jobs.job.error


@pytest.mark.parametrize("status", sorted(FINAL_STATUSES))
def test_a_final_job_is_left_alone(status: JobStatus) -> None:
    finalizer, jobs, s3 = _setup(_job(total=1, chunks=1, status=status), [[_ok(0)]])

    assert finalizer.finalize(JOB) == jobs.job

    assert results_key(JOB) not in s3.objects[OUT]
    assert jobs.job.status == status


def test_a_job_with_chunks_outstanding_is_not_finalized() -> None:
    finalizer, jobs, s3 = _setup(_job(total=3, chunks=2, done=1), [[_ok(0), _ok(1)]])

    assert finalizer.finalize(JOB) == jobs.job

    assert results_key(JOB) not in s3.objects[OUT]
    assert jobs.job.status == JobStatus.RUNNING


def test_unknown_job_is_none() -> None:
    finalizer, _, _ = _setup(_job(total=0, chunks=0), [])
    assert finalizer.finalize("job-other") is None


# --- reconcile_dead_letter --------------------------------------------------------------------


def _writer(job: Job) -> tuple[ChunkWriter, FakeJobs, FakeS3, FakeSQS]:
    s3, jobs, sqs = FakeS3(), FakeJobs(job), FakeSQS()
    writer = ChunkWriter(jobs, ResultStore(s3, OUT), Queue(sqs, FINALIZE_URL))  # type: ignore[arg-type]
    return writer, jobs, s3, sqs


def test_dead_lettered_chunk_becomes_failed_results_and_is_counted() -> None:
    writer, jobs, s3, sqs = _writer(_job(total=3, chunks=1, done=0))
    chunk = Chunk(
        JOB,
        0,
        [
            WorkItem(index=0, url="https://img.example/0.jpg"),
            WorkItem(
                index=1, url="ftp://x/1", error={"code": "unsupported_scheme", "message": "line 2: ftp"}
            ),
            WorkItem(index=2, url="https://img.example/2.jpg", id="two"),
        ],
    )

    assert reconcile_dead_letter(chunk, writer, receive_count=5) is True

    part = [json.loads(line) for line in s3.objects[OUT][part_key(JOB, 0)].splitlines()]
    assert [r["index"] for r in part] == [0, 1, 2]
    assert all(r["status"] == FAILED for r in part)
    assert [r["error"]["code"] for r in part] == [
        ErrorCode.DEAD_LETTERED,
        "unsupported_scheme",
        "dead_lettered",
    ]
    assert part[0]["error"]["message"] == "chunk 0 could not be processed after 5 deliveries"
    assert part[1]["error"]["message"] == "line 2: ftp"
    assert part[2]["id"] == "two"
    assert jobs.rows == part
    assert (jobs.job.failed, jobs.job.succeeded, jobs.job.chunks_done) == (3, 0, 1)
    assert [parse_finalize(b) for b in sqs.delivered[FINALIZE_URL]] == [JOB]  # that was the last chunk


def test_dead_lettered_chunk_counted_after_all_is_left_alone() -> None:
    writer, jobs, s3, sqs = _writer(_job(total=1, chunks=1, done=1))
    jobs.markers.add(0)

    assert reconcile_dead_letter(Chunk(JOB, 0, [WorkItem(index=0, url="https://a/0.jpg")]), writer) is False

    assert s3.objects == {}
    assert jobs.rows == []
    assert [parse_finalize(b) for b in sqs.delivered[FINALIZE_URL]] == [JOB]  # a lost finalize is made up for


def test_reconcile_message_without_receive_count() -> None:
    writer, _, s3, _ = _writer(_job(total=1, chunks=2, done=0))

    reconcile_dead_letter(Chunk(JOB, 1, [WorkItem(index=4, url="https://a/4.jpg")]), writer)

    (record,) = [json.loads(line) for line in s3.objects[OUT][part_key(JOB, 1)].splitlines()]
    assert record["error"]["message"] == "chunk 1 could not be processed"
