"""Unit tests for finalize.py and merge.py: merging parts in order with index checks, the
checkpointed multipart merge (continued, killed, raced, capped), and dead-letter reconcile.

A real ResultStore over an in-memory S3 fake (multipart included: part-size floor, ETags,
NoSuchUpload) and in-memory job and checkpoint stores; no network, no moto. The same merge
against a moto server: tests/integration/test_finalize_resume.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from batchpredict.errors import ErrorCode
from batchpredict.events import JobEvents
from batchpredict.finalize import Finalizer, fail_job, reconcile_dead_letter
from batchpredict.jobs import FINAL_STATUSES, Job, JobStatus
from batchpredict.merge import MergeSettings
from batchpredict.merges import MergeCheckpoint
from batchpredict.messages import (
    Chunk,
    Continuation,
    ManifestMessage,
    ManifestObject,
    parse_dead_letter,
    parse_finalize,
)
from batchpredict.queues import Queue
from batchpredict.records import FAILED, Prediction, ResultRecord, WorkItem
from batchpredict.results import ResultStore, jsonl, part_key, results_key, summary_key
from batchpredict.writer import ChunkWriter
from tests.unit.fakes import FakeEvents, FakeJobs, FakeS3, FakeSQS, client_error

OUT = "output-bucket"
JOB = "job-1"
MODEL = "efficientnet-lite0@1"
FINALIZE_URL = "https://sqs/finalize"


class KilledError(Exception):
    """Stands for the invocation dying (timeout, crash) in the middle of a call."""


class MultipartS3(FakeS3):
    """The shared FakeS3 plus multipart uploads as S3 keeps them (part-size floor, part and
    object ETags, NoSuchUpload) and HeadObject; ``kill_on(op, n)`` fails the n-th next call of op."""

    def __init__(self, min_part: int = 0) -> None:
        super().__init__()
        self.uploads: dict[str, tuple[str, dict[int, bytes]]] = {}
        self.min_part = min_part
        self.calls: Counter[str] = Counter()
        self.kills: dict[str, int] = {}
        self.ids = itertools.count(1)
        self.etags: dict[str, str] = {}
        self.after: set[str] = set()

    def kill_on(self, operation: str, nth: int = 1, after: bool = False) -> None:
        """The nth next call of ``operation`` dies: before it does anything, or ``after`` it did."""
        self.kills[operation] = self.calls[operation] + nth
        if after:
            self.after.add(operation)

    def _call(self, operation: str) -> None:
        self.calls[operation] += 1
        if self.kills.get(operation) == self.calls[operation] and operation not in self.after:
            raise KilledError(operation)

    def _done(self, operation: str) -> None:
        if self.kills.get(operation) == self.calls[operation] and operation in self.after:
            self.after.discard(operation)
            raise KilledError(f"{operation} (after it took effect)")

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self._call("put_object")
        response = super().put_object(**kwargs)
        self._done("put_object")
        return response

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        self._call("get_object")
        return super().get_object(**kwargs)

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        if Key not in self.objects[Bucket]:
            raise client_error("404", "HeadObject")
        return {"ETag": self.etags[Key]}

    def create_multipart_upload(self, *, Bucket: str, Key: str, ContentType: str) -> dict[str, Any]:
        self._call("create_multipart_upload")
        upload_id = f"upload-{next(self.ids)}"
        self.uploads[upload_id] = (Key, {})
        return {"UploadId": upload_id}

    def upload_part(
        self, *, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: bytes
    ) -> dict[str, Any]:
        self._call("upload_part")
        if UploadId not in self.uploads:
            raise client_error("NoSuchUpload", "UploadPart")
        self.uploads[UploadId][1][PartNumber] = Body
        self._done("upload_part")
        return {"ETag": f'"{hashlib.md5(Body).hexdigest()}"'}

    def complete_multipart_upload(
        self, *, Bucket: str, Key: str, UploadId: str, MultipartUpload: dict[str, Any]
    ) -> dict[str, Any]:
        self._call("complete_multipart_upload")
        if UploadId not in self.uploads:
            raise client_error("NoSuchUpload", "CompleteMultipartUpload")
        key, stored = self.uploads[UploadId]
        parts = MultipartUpload["Parts"]
        assert key == Key and [p["PartNumber"] for p in parts] == list(range(1, len(parts) + 1))
        bodies = [stored[p["PartNumber"]] for p in parts]
        if any(len(b) < self.min_part for b in bodies[:-1]):
            raise client_error("EntityTooSmall", "CompleteMultipartUpload")
        for part in parts:
            assert part["ETag"] == f'"{hashlib.md5(stored[part["PartNumber"]]).hexdigest()}"'
        del self.uploads[UploadId]
        self.objects[Bucket][Key] = b"".join(bodies)
        digests = b"".join(hashlib.md5(b).digest() for b in bodies)
        self.etags[Key] = f'"{hashlib.md5(digests).hexdigest()}-{len(bodies)}"'
        self._done("complete_multipart_upload")
        return {}

    def abort_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str) -> dict[str, Any]:
        if UploadId not in self.uploads:
            raise client_error("NoSuchUpload", "AbortMultipartUpload")
        del self.uploads[UploadId]
        return {}


class FakeMerges:
    """MergeStore in memory: saves conditional on the version read, as the real one's put."""

    def __init__(self) -> None:
        self.items: dict[str, MergeCheckpoint] = {}
        self.errors: dict[str, str] = {}
        self.saves = 0

    def get(self, job_id: str) -> MergeCheckpoint:
        found = self.items.get(job_id, MergeCheckpoint(job_id))
        return replace(found, last_error=self.errors.get(job_id))

    def save(self, checkpoint: MergeCheckpoint) -> MergeCheckpoint | None:
        if (
            self.items.get(checkpoint.job_id, MergeCheckpoint(checkpoint.job_id)).version
            != checkpoint.version
        ):
            return None
        self.saves += 1
        saved = replace(checkpoint, version=checkpoint.version + 1, last_error=None)
        self.items[checkpoint.job_id] = saved
        self.errors.pop(checkpoint.job_id, None)
        return saved

    def record_error(self, job_id: str, message: str) -> None:
        self.errors[job_id] = message


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


def _ok(index: int) -> ResultRecord:
    item = WorkItem(index=index, url=f"https://img.example/{index}.jpg")
    return ResultRecord.for_item(JOB, item, model=MODEL, predictions=(Prediction(1, 1, "n1", "l", 0.5),))


def _bad(index: int, code: str) -> ResultRecord:
    return ResultRecord.failed(JOB, WorkItem(index=index, url=f"ftp://x/{index}"), code, "nope")


def _setup(
    job: Job, parts: list[list[ResultRecord]], settings: MergeSettings | None = None, min_part: int = 0
) -> tuple[Finalizer, FakeJobs, MultipartS3]:
    s3, jobs = MultipartS3(min_part), FakeJobs(job)
    for chunk, records in enumerate(parts):
        s3.add(OUT, part_key(JOB, chunk), jsonl(records))
    return _finalizer(jobs, s3, FakeMerges(), FakeSQS(), settings), jobs, s3


def _finalizer(
    jobs: FakeJobs, s3: MultipartS3, merges: FakeMerges, sqs: FakeSQS, settings: MergeSettings | None = None
) -> Finalizer:
    return Finalizer(
        jobs,  # type: ignore[arg-type]
        ResultStore(s3, OUT),
        merges,  # type: ignore[arg-type]
        Queue(sqs, FINALIZE_URL),
        settings or MergeSettings(read_concurrency=3, prefetch_chunks=4),
    )


def _lines(s3: MultipartS3, key: str) -> list[dict[str, Any]]:
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
    assert _lines(s3, results_key(JOB)) == [r.to_json() for part in parts for r in part]
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


def test_a_finalize_that_loses_to_another_ending_leaves_the_winners_summary_and_event() -> None:
    finalizer, jobs, s3 = _setup(_job(total=2, chunks=1), [[_ok(0), _ok(1)]])
    events = FakeEvents()
    finalizer.events = JobEvents(events, "bus")  # type: ignore[arg-type]
    merge = finalizer.merger.run

    def failed_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # The sweeper (or a failure) ends the job while this finalize merges its parts.
        outcome = merge(*args, **kwargs)
        fail_job(jobs, finalizer.results, JOB, "timed_out: still RUNNING", finalizer.events)  # type: ignore[arg-type]
        return outcome

    finalizer.merger.run = failed_meanwhile  # type: ignore[method-assign]

    assert finalizer.finalize(JOB) is None

    assert jobs.job.status == JobStatus.FAILED
    summary = json.loads(s3.objects[OUT][summary_key(JOB)])
    assert (summary["status"], summary["error"]) == ("FAILED", "timed_out: still RUNNING")
    assert [(e["status"], e["reason"]) for e in events.details] == [("FAILED", "timed_out: still RUNNING")]


def test_a_finalize_that_died_after_its_status_write_leaves_the_summary_to_its_redelivery() -> None:
    finalizer, jobs, s3 = _setup(_job(total=3, chunks=2), [[_ok(0), _ok(1)], [_bad(2, "http_error")]])
    events = FakeEvents()
    finalizer.events = JobEvents(events, "bus")  # type: ignore[arg-type]
    s3.kill_on("put_object", nth=2)  # the results file is written, then the summary's PUT dies

    with pytest.raises(KilledError):
        finalizer.finalize(JOB)
    assert jobs.job.status == JobStatus.COMPLETED_WITH_ERRORS and summary_key(JOB) not in s3.objects[OUT]

    finalizer.finalize(JOB)  # the redelivery

    summary = json.loads(s3.objects[OUT][summary_key(JOB)])
    assert (summary["status"], summary["total"], summary["errors_by_code"]) == (
        "COMPLETED_WITH_ERRORS",
        3,
        {"http_error": 1},
    )
    assert summary["ended_at"] == jobs.job.completed_at
    assert [e["status"] for e in events.details] == ["COMPLETED_WITH_ERRORS"]
    assert finalizer.finalize(JOB) == jobs.job and len(events.details) == 1  # once


# --- the checkpointed merge: parts, continuations, kills, races, the file cap --------------------

# Parts of ~2 KB a chunk pair: a job of 30 chunks makes 15 upload parts; S3's 5 MiB floor scaled down.
SMALL_PARTS = MergeSettings(read_concurrency=3, prefetch_chunks=4, part_bytes=2000, time_reserve_seconds=1.0)


def _many_parts(chunks: int = 30, size: int = 4) -> tuple[Job, list[list[ResultRecord]]]:
    parts = [
        [_ok(i) if i % 5 else _bad(i, "http_error") for i in range(c * size, c * size + size)]
        for c in range(chunks)
    ]
    return _job(total=chunks * size, chunks=chunks), parts


def _expected(parts: list[list[ResultRecord]]) -> bytes:
    return b"".join(jsonl(p) for p in parts)


def _deliver_until_final(
    jobs: FakeJobs,
    s3: MultipartS3,
    merges: FakeMerges,
    settings: MergeSettings,
    remaining: Callable[[], float],
    before: Callable[[int], None] = lambda n: None,
) -> tuple[int, int]:
    """Finalize messages, each to a fresh finalizer (a new invocation), until the job is final;
    an invocation that dies is redelivered. Returns (invocations, continuation messages)."""
    sqs = FakeSQS()
    invocations = 0
    while jobs.job.status not in FINAL_STATUSES:
        assert invocations < 200, "the merge makes no progress"
        before(invocations)
        invocations += 1
        with contextlib.suppress(KilledError):
            _finalizer(jobs, s3, merges, sqs, settings).finalize(JOB, remaining)
    return invocations, len(sqs.delivered[FINALIZE_URL])


def test_a_job_larger_than_a_part_is_uploaded_in_parts_in_order() -> None:
    job, parts = _many_parts()
    finalizer, _, s3 = _setup(job, parts, SMALL_PARTS, min_part=2000)

    final = finalizer.finalize(JOB)

    assert final is not None and final.status == JobStatus.COMPLETED_WITH_ERRORS
    assert s3.objects[OUT][results_key(JOB)] == _expected(parts)
    assert (s3.calls["upload_part"], s3.calls["complete_multipart_upload"], s3.uploads) == (15, 1, {})
    summary = json.loads(s3.objects[OUT][summary_key(JOB)])
    assert (summary["total"], summary["failed"], summary["errors_by_code"]) == (120, 24, {"http_error": 24})
    assert summary["results_files"] == [
        {"uri": final.results_uri, "first_index": 0, "lines": 120, "bytes": len(_expected(parts))}
    ]


def test_a_merge_interrupted_again_and_again_ends_byte_identical_to_an_uninterrupted_one() -> None:
    job, parts = _many_parts()
    reference, _, reference_s3 = _setup(job, parts, SMALL_PARTS, min_part=2000)
    reference.finalize(JOB)
    _, jobs, s3 = _setup(job, parts, SMALL_PARTS, min_part=2000)
    merges = FakeMerges()
    # Every third invocation dies somewhere: mid-read, before or after a part lands, right after
    # S3 completed the upload; the others run out of time (no time left: one part each).
    kills = itertools.cycle(
        [
            ("get_object", 3, False),
            ("upload_part", 1, True),
            ("upload_part", 1, False),
            ("complete_multipart_upload", 1, True),
        ]
    )

    def sometimes_kill(invocation: int) -> None:
        if invocation % 3 == 2:
            op, nth, after = next(kills)
            s3.kill_on(op, nth, after)

    invocations, continuations = _deliver_until_final(
        jobs, s3, merges, SMALL_PARTS, lambda: 0.0, sometimes_kill
    )

    reference_results = reference_s3.objects[OUT][results_key(JOB)]
    assert s3.objects[OUT][results_key(JOB)] == reference_results == _expected(parts)
    assert invocations > 15 and continuations >= 14  # 15 parts, at most one new part an invocation
    assert s3.uploads == {}  # nothing left for the lifecycle rule
    assert s3.calls["complete_multipart_upload"] == 2  # died after S3 completed it: found complete
    assert jobs.job.status == JobStatus.COMPLETED_WITH_ERRORS
    summary = json.loads(s3.objects[OUT][summary_key(JOB)])
    reference_summary = json.loads(reference_s3.objects[OUT][summary_key(JOB)])
    assert reference_summary["errors_by_code"] == summary["errors_by_code"]
    assert (summary["total"], summary["succeeded"]) == (120, 96)


def test_a_results_file_has_at_most_file_parts_parts_and_the_rest_goes_to_numbered_files() -> None:
    job, parts = _many_parts()
    settings = replace(SMALL_PARTS, file_parts=4)
    _, jobs, s3 = _setup(job, parts, settings, min_part=2000)

    _deliver_until_final(jobs, s3, FakeMerges(), settings, lambda: 0.0)

    keys = [results_key(JOB, n) for n in range(1, 5)]  # 15 parts: 4 + 4 + 4 + 3
    assert keys[1].endswith("/results-2.jsonl")
    assert b"".join(s3.objects[OUT][k] for k in keys) == _expected(parts)
    assert results_key(JOB, 5) not in s3.objects[OUT] and s3.uploads == {}
    summary = json.loads(s3.objects[OUT][summary_key(JOB)])
    files = summary["results_files"]
    assert [f["uri"] for f in files] == [f"s3://{OUT}/{k}" for k in keys]
    assert [f["first_index"] for f in files] == [0, 32, 64, 96]
    assert [f["lines"] for f in files] == [32, 32, 32, 24]
    assert summary["results_uri"] == jobs.job.results_uri == files[0]["uri"]


def test_a_finalizer_overtaken_by_another_stops_and_the_results_stay_whole() -> None:
    job, parts = _many_parts()
    _, jobs, s3 = _setup(job, parts, SMALL_PARTS, min_part=2000)
    merges, sqs = FakeMerges(), FakeSQS()
    late = _finalizer(jobs, s3, merges, sqs, SMALL_PARTS)
    overtaken = []

    def a_duplicate_message_runs_meanwhile() -> float:
        if not overtaken:  # after the first finalizer's first part, a second one does the whole merge
            overtaken.append(_finalizer(jobs, s3, merges, FakeSQS(), SMALL_PARTS).finalize(JOB))
        return 3600.0

    returned = late.finalize(JOB, a_duplicate_message_runs_meanwhile)

    assert returned is not None and returned.status == JobStatus.RUNNING  # it stopped: superseded

    assert overtaken[0].status == JobStatus.COMPLETED_WITH_ERRORS
    assert jobs.job.status == JobStatus.COMPLETED_WITH_ERRORS
    assert s3.objects[OUT][results_key(JOB)] == _expected(parts)
    assert sqs.delivered[FINALIZE_URL] == [] and s3.uploads == {}


def test_an_upload_aborted_under_the_merge_starts_it_over() -> None:
    job, parts = _many_parts()
    _, jobs, s3 = _setup(job, parts, SMALL_PARTS, min_part=2000)

    def lifecycle_aborts_once(invocation: int) -> None:
        if invocation == 3:
            s3.uploads.clear()

    _deliver_until_final(jobs, s3, FakeMerges(), SMALL_PARTS, lambda: 0.0, lifecycle_aborts_once)

    assert s3.objects[OUT][results_key(JOB)] == _expected(parts)
    assert s3.calls["create_multipart_upload"] == 2


def test_a_small_job_is_one_put_and_a_missing_part_fails_the_job() -> None:
    job, parts = _many_parts(chunks=3)
    finalizer, _, s3 = _setup(job, parts, replace(SMALL_PARTS, part_bytes=10**6))
    finalizer.finalize(JOB)
    assert s3.objects[OUT][results_key(JOB)] == _expected(parts)
    assert s3.calls["create_multipart_upload"] == 0

    finalizer, jobs, s3 = _setup(job, parts, SMALL_PARTS)
    del s3.objects[OUT][part_key(JOB, 1)]
    final = finalizer.finalize(JOB)
    assert final is not None and final.status == JobStatus.FAILED
    assert jobs.job.error is not None and "chunk 1 was counted but has no part" in jobs.job.error


def test_a_dead_lettered_finalize_fails_the_job_with_the_reason_and_aborts_the_upload() -> None:
    job, parts = _many_parts()
    _, jobs, s3 = _setup(job, parts, SMALL_PARTS, min_part=2000)
    merges, sqs = FakeMerges(), FakeSQS()
    _finalizer(jobs, s3, merges, sqs, SMALL_PARTS).finalize(JOB, lambda: 0.0)  # one part, continued
    s3.kill_on("get_object")
    with pytest.raises(KilledError):
        _finalizer(jobs, s3, merges, sqs, SMALL_PARTS).finalize(JOB, lambda: 0.0)
    assert len(s3.uploads) == 1

    final = _finalizer(jobs, s3, merges, sqs, SMALL_PARTS).dead_lettered(JOB, receive_count=6)

    assert final is not None and final.status == JobStatus.FAILED
    assert jobs.job.error == (
        "results could not be merged: finalize failed on every delivery (6 receives); "
        "last error: KilledError: get_object"
    )
    summary = json.loads(s3.objects[OUT][summary_key(JOB)])
    assert (summary["status"], summary["error"]) == ("FAILED", jobs.job.error)
    assert s3.uploads == {}
    # Again (a redelivered dead letter) or for a job that is final: nothing changes.
    assert _finalizer(jobs, s3, merges, sqs, SMALL_PARTS).dead_lettered(JOB) == jobs.job


def test_dead_letters_of_the_three_queues_are_told_apart() -> None:
    chunk = Chunk(JOB, 3, [WorkItem(index=12, url="https://a/12.jpg")])
    assert parse_dead_letter(chunk.body()) == chunk
    assert parse_dead_letter('{"job_id": "job-9"}') == "job-9"
    manifest = ManifestObject("in", "manifests/a b.txt", "v1", "etag")
    continuation = Continuation(manifest.job_id, manifest, {"index": 160})
    assert parse_dead_letter(continuation.body()) == ManifestMessage(continuation=continuation)
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": "in"},
                    "object": {"key": "manifests/a+b.txt", "versionId": "v1", "eTag": "etag"},
                },
            }
        ]
    }
    assert parse_dead_letter(json.dumps(event)) == ManifestMessage(objects=[manifest])


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
    assert [r.to_json() for r in jobs.rows] == part
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
