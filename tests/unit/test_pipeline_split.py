"""Unit tests for split.py: chunking, hand-over to a continuation, duplicates and redeliveries.

The Splitter runs with real Queue and ResultStore adapters over recording fake SQS / S3
clients (the S3 fake honours VersionId and Range like S3 does) and an in-memory job store
with the conditions of the real one. No network, no moto.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from batchpredict.jobs import FINAL_STATUSES, Job, JobStatus, utc_now
from batchpredict.messages import Chunk, Continuation, ManifestObject, parse_finalize, parse_manifest_message
from batchpredict.queues import Queue
from batchpredict.records import WorkItem
from batchpredict.results import ResultStore, summary_key
from batchpredict.split import SplitOutcome, SplitSettings, Splitter
from tests.unit.fakes import FakeS3, FakeSQS, client_error

IN = "input-bucket"
OUT = "output-bucket"
WORK_URL = "https://sqs.local/1/work"
MANIFEST_URL = "https://sqs.local/1/manifests"
FINALIZE_URL = "https://sqs.local/1/finalize"
CHUNK = 4
RESERVE_MS = 20_000
PLENTY = lambda: 900_000  # noqa: E731 - a remaining-time callable with time to spare


class SplitQueues(FakeSQS):
    """The three queues, read back as the chunks and continuations sent."""

    def chunks(self) -> list[Chunk]:
        return [Chunk.parse(body) for body in self.delivered[WORK_URL]]

    def continuations(self) -> list[Continuation]:
        found = [parse_manifest_message(body).continuation for body in self.delivered[MANIFEST_URL]]
        return [c for c in found if c is not None]


class FakeJobStore:
    """The JobStore calls the Splitter makes, with the real store's conditions, in memory."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.checkpoints: list[dict[str, Any]] = []

    def create(
        self,
        job_id: str,
        manifest_uri: str,
        split_message_id: str,
        *,
        manifest_version: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> bool:
        if job_id in self.jobs:
            return False
        now = utc_now()
        self.jobs[job_id] = Job(
            job_id,
            JobStatus.SPLITTING,
            manifest_uri,
            created_at=now,
            updated_at=now,
            split_message_id=split_message_id,
            manifest_version=manifest_version,
            **(options or {}),
        )
        return True

    def status(self, job_id: str) -> JobStatus | None:
        job = self.jobs.get(job_id)
        return job.status if job else None

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def checkpoint(self, job_id: str, position: dict[str, Any]) -> None:
        stored = json.loads(json.dumps(position))  # as it comes back from the table
        self.checkpoints.append(stored)
        job = self.jobs[job_id]
        if job.status == JobStatus.SPLITTING:
            self.jobs[job_id] = replace(job, position=stored)

    def finish_split(self, job_id: str, total: int, chunks_total: int) -> Job | None:
        job = self.jobs[job_id]
        if job.status != JobStatus.SPLITTING:
            return None
        self.jobs[job_id] = replace(
            job, total=total, chunks_total=chunks_total, split_done=True, status=JobStatus.RUNNING
        )
        return self.jobs[job_id]

    def fail(self, job_id: str, message: str) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.status in FINAL_STATUSES:
            return None
        self.jobs[job_id] = replace(job, status=JobStatus.FAILED, error=message, completed_at=utc_now())
        return self.jobs[job_id]


class Budget:
    """Invocation time left: each SendMessageBatch costs ``cost_ms``."""

    def __init__(self, start_ms: int, cost_ms: int) -> None:
        self.left = start_ms
        self.cost = cost_ms

    def spend(self) -> None:
        self.left -= self.cost

    def remaining(self) -> int:
        return self.left


class Stack:
    def __init__(
        self,
        chunk_size: int = CHUNK,
        on_batch: Callable[[], None] = lambda: None,
        payload_limit: int | None = None,
        **limits: int,
    ) -> None:
        self.s3 = FakeS3()
        self.sqs = SplitQueues(on_batch=on_batch, payload_limit=payload_limit)
        self.jobs = FakeJobStore()
        self.splitter = Splitter(
            jobs=self.jobs,  # type: ignore[arg-type]
            s3=self.s3,
            work=Queue(self.sqs, WORK_URL, sleep=_no_sleep),
            manifests=Queue(self.sqs, MANIFEST_URL, sleep=_no_sleep),
            finalize=Queue(self.sqs, FINALIZE_URL, sleep=_no_sleep),
            settings=SplitSettings(chunk_size=chunk_size, time_reserve_ms=RESERVE_MS, **limits),
            results=ResultStore(self.s3, OUT),
        )

    def handle(
        self, body: str, message_id: str = "msg-1", remaining: Callable[[], int] = PLENTY
    ) -> list[SplitOutcome]:
        return self.splitter.handle(message_id, body, remaining)


def _no_sleep(seconds: float) -> None:
    raise AssertionError("no SQS retry expected")


def s3_event(
    key: str, version_id: str | None = None, etag: str = "etag-1", event: str = "ObjectCreated:Put"
) -> str:
    obj: dict[str, Any] = {"key": key, "size": 1, "eTag": etag, "sequencer": "00"}
    if version_id:
        obj["versionId"] = version_id
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": event,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": IN, "arn": f"arn:aws:s3:::{IN}"}, "object": obj},
    }
    return json.dumps({"Records": [record]})


def txt_manifest(n: int) -> bytes:
    return "".join(f"https://img.example/{i}.jpg\n" for i in range(n)).encode()


def job_of(key: str, version_id: str | None = None, etag: str = "etag-1") -> str:
    return ManifestObject(IN, key, version_id, etag).job_id


def by_number(chunks: list[Chunk]) -> list[Chunk]:
    return sorted(chunks, key=lambda c: c.chunk)


def uninterrupted(key: str, data: bytes, chunk_size: int = CHUNK) -> list[Chunk]:
    stack = Stack(chunk_size)
    stack.s3.add(IN, key, data)
    (outcome,) = stack.handle(s3_event(key))
    assert outcome.action == "split"
    return by_number(stack.sqs.chunks())


def _out_of_time_after_first_batch() -> tuple[Stack, Budget]:
    # 25 s left; each SendMessageBatch takes 10 s: after the first one, 15 s < the 20 s reserve.
    budget = Budget(25_000, 10_000)
    return Stack(on_batch=budget.spend), budget


# --- chunking ---------------------------------------------------------------------------------


def test_ten_lines_in_chunks_of_four() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", txt_manifest(10))

    (outcome,) = stack.handle(s3_event("manifests/a.txt"))

    job_id = job_of("manifests/a.txt")
    assert outcome == SplitOutcome(job_id, "split", 10)
    chunks = stack.sqs.chunks()
    assert [c.chunk for c in chunks] == [0, 1, 2]
    assert [len(c.items) for c in chunks] == [4, 4, 2]
    assert [[i.index for i in c.items] for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunks[2].items[1] == WorkItem(index=9, url="https://img.example/9.jpg")
    assert all(c.job_id == job_id for c in chunks)
    job = stack.jobs.jobs[job_id]
    assert (job.status, job.total, job.chunks_total, job.split_done) == (JobStatus.RUNNING, 10, 3, True)
    assert job.manifest_uri == "s3://input-bucket/manifests/a.txt"
    assert stack.sqs.delivered[FINALIZE_URL] == []
    assert stack.sqs.delivered[MANIFEST_URL] == []
    assert all(raw.closed for raw in stack.s3.opened)


def test_exact_multiple_of_the_chunk_size() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", txt_manifest(8))

    stack.handle(s3_event("manifests/a.txt"))

    assert [len(c.items) for c in stack.sqs.chunks()] == [4, 4]
    assert stack.jobs.jobs[job_of("manifests/a.txt")].chunks_total == 2


def test_chunks_go_out_in_send_batches_of_ten() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", txt_manifest(4 * 23 + 1))

    stack.handle(s3_event("manifests/a.txt"))

    assert [len(b) for b in stack.sqs.batches[WORK_URL]] == [10, 10, 4]
    assert [c.chunk for c in stack.sqs.chunks()] == list(range(24))
    assert stack.sqs.delivered[MANIFEST_URL] == []  # time to spare: no hand-over


def test_every_chunk_carries_its_job_id_as_message_group_id() -> None:
    # SQS fair queues: the job is the tenant, so a small job is not stuck behind a large one.
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", txt_manifest(4 * 11))
    stack.s3.add(IN, "manifests/b.txt", txt_manifest(4))

    stack.handle(s3_event("manifests/a.txt"))
    stack.handle(s3_event("manifests/b.txt"))

    groups = [e["MessageGroupId"] for batch in stack.sqs.batches[WORK_URL] for e in batch]
    expected = [job_of("manifests/a.txt")] * 11 + [job_of("manifests/b.txt")]
    assert groups == expected
    assert [c.job_id for c in stack.sqs.chunks()] == expected


def test_invalid_lines_travel_inside_chunks_with_their_code() -> None:
    manifest = b"\n".join(
        [
            b"# a comment: no index",
            b"https://img.example/0.jpg",
            b"",
            b"ftp://img.example/1.jpg",
            b"not a url",
            b"s3://bucket/3.png",
            b"https://img.example/4.jpg",
        ]
    )
    stack = Stack()
    stack.s3.add(IN, "manifests/mixed.txt", manifest)

    (outcome,) = stack.handle(s3_event("manifests/mixed.txt"))

    assert outcome.items == 5
    items = [item for chunk in stack.sqs.chunks() for item in chunk.items]
    assert [i.index for i in items] == [0, 1, 2, 3, 4]
    assert [c.chunk for c in stack.sqs.chunks()] == [0, 1]
    assert items[0].error is None
    assert items[1].error is not None and items[1].error["code"] == "unsupported_scheme"
    assert items[1].url == "ftp://img.example/1.jpg"
    assert items[2].error is not None and items[2].error["code"] == "invalid_manifest_line"
    assert items[3] == WorkItem(index=3, url="s3://bucket/3.png")
    assert stack.jobs.jobs[job_of("manifests/mixed.txt")].total == 5


def test_jsonl_ids_and_metadata_travel_with_the_item() -> None:
    manifest = b'{"url": "https://img.example/a.jpg", "id": "a", "metadata": {"k": 1}}\n{"nourl": 1}\n'
    stack = Stack()
    stack.s3.add(IN, "manifests/a.jsonl", manifest)

    stack.handle(s3_event("manifests/a.jsonl"))

    (chunk,) = stack.sqs.chunks()
    assert chunk.items[0] == WorkItem(index=0, url="https://img.example/a.jpg", id="a", metadata={"k": 1})
    assert chunk.items[1].error is not None and chunk.items[1].error["code"] == "invalid_manifest_line"


def test_the_event_version_is_read() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", txt_manifest(3), version_id="v2")

    stack.handle(s3_event("manifests/a.txt", version_id="v2"))

    assert stack.s3.gets == [{"Bucket": IN, "Key": "manifests/a.txt", "VersionId": "v2"}]
    assert len(stack.sqs.chunks()) == 1


def test_url_encoded_key_is_read_decoded() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/my file+1.txt", txt_manifest(2))

    (outcome,) = stack.handle(s3_event("manifests%2Fmy+file%2B1.txt"))

    assert outcome.action == "split"
    assert stack.s3.gets[0]["Key"] == "manifests/my file+1.txt"


def test_two_objects_in_one_event_make_two_jobs() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", txt_manifest(2))
    stack.s3.add(IN, "manifests/b.txt", txt_manifest(5))
    records = [json.loads(s3_event(k))["Records"][0] for k in ("manifests/a.txt", "manifests/b.txt")]

    outcomes = stack.handle(json.dumps({"Records": records}))

    assert [(o.action, o.items) for o in outcomes] == [("split", 2), ("split", 5)]
    assert {c.job_id for c in stack.sqs.chunks()} == {job_of("manifests/a.txt"), job_of("manifests/b.txt")}


# --- empty, skipped and failed manifests ------------------------------------------------------


def test_empty_manifest_is_finalized_at_once() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/empty.txt", b"# nothing here\n\n")

    (outcome,) = stack.handle(s3_event("manifests/empty.txt"))

    job_id = job_of("manifests/empty.txt")
    assert outcome == SplitOutcome(job_id, "split", 0)
    assert stack.sqs.batches[WORK_URL] == []
    assert [parse_finalize(b) for b in stack.sqs.delivered[FINALIZE_URL]] == [job_id]
    job = stack.jobs.jobs[job_id]
    assert (job.status, job.total, job.chunks_total, job.all_chunks_done) == (JobStatus.RUNNING, 0, 0, True)


def test_s3_test_event_is_skipped() -> None:
    stack = Stack()
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": IN})

    assert stack.handle(body) == [SplitOutcome(None, "skipped")]
    assert stack.jobs.jobs == {}
    assert stack.s3.gets == []


def test_object_removed_event_is_skipped() -> None:
    stack = Stack()
    assert stack.handle(s3_event("manifests/a.txt", event="ObjectRemoved:Delete")) == [
        SplitOutcome(None, "skipped")
    ]
    assert stack.jobs.jobs == {}


def _assert_failed(stack: Stack, job_id: str, *fragments: str) -> None:
    job = stack.jobs.jobs[job_id]
    assert job.status == JobStatus.FAILED
    summary = json.loads(stack.s3.objects[OUT][summary_key(job_id)])
    assert summary["status"] == "FAILED"
    assert summary["job_id"] == job_id
    for fragment in fragments:
        assert job.error is not None and fragment in job.error
        assert fragment in summary["error"]
    assert stack.sqs.delivered[FINALIZE_URL] == []


def test_missing_manifest_fails_the_job_with_a_summary() -> None:
    stack = Stack()

    (outcome,) = stack.handle(s3_event("manifests/gone.txt"))

    job_id = job_of("manifests/gone.txt")
    assert outcome == SplitOutcome(job_id, "failed")
    _assert_failed(stack, job_id, "NoSuchKey", "s3://input-bucket/manifests/gone.txt")
    assert stack.sqs.batches[WORK_URL] == []


def test_access_denied_fails_the_job() -> None:
    stack = Stack()
    stack.s3.error = client_error("AccessDenied", "GetObject")

    (outcome,) = stack.handle(s3_event("manifests/secret.txt"))

    assert outcome.action == "failed"
    _assert_failed(stack, job_of("manifests/secret.txt"), "AccessDenied")


def test_a_throttled_read_is_raised_for_a_retry_not_failed() -> None:
    stack = Stack()
    stack.s3.error = client_error("SlowDown", "GetObject")

    with pytest.raises(ClientError, match="SlowDown"):
        stack.handle(s3_event("manifests/a.txt"))

    # The options are read (HeadObject) before the job is made: nothing failed, the message comes back.
    assert job_of("manifests/a.txt") not in stack.jobs.jobs


def test_unsupported_extension_fails_the_job() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.pdf", b"https://img.example/0.jpg\n")

    (outcome,) = stack.handle(s3_event("manifests/a.pdf"))

    assert outcome.action == "failed"
    _assert_failed(stack, job_of("manifests/a.pdf"), "unsupported manifest extension")
    assert stack.s3.gets == []


def test_binary_manifest_fails_the_job_and_closes_the_body() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", b"https://img.example/0.jpg\n\x00\x01\x02")

    (outcome,) = stack.handle(s3_event("manifests/a.txt"))

    assert outcome.action == "failed"
    _assert_failed(stack, job_of("manifests/a.txt"), "looks binary")
    assert all(raw.closed for raw in stack.s3.opened)


def test_corrupt_gzip_fails_the_job() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt.gz", gzip.compress(txt_manifest(5))[:-12])

    (outcome,) = stack.handle(s3_event("manifests/a.txt.gz"))

    assert outcome.action == "failed"
    _assert_failed(stack, job_of("manifests/a.txt.gz"), "gzip")


def test_a_failed_job_is_not_failed_twice() -> None:
    stack = Stack()
    stack.handle(s3_event("manifests/gone.txt"))
    job_id = job_of("manifests/gone.txt")
    stack.s3.objects[OUT].clear()

    (outcome,) = stack.handle(s3_event("manifests/gone.txt"), message_id="msg-1")

    assert outcome == SplitOutcome(job_id, "duplicate")
    assert stack.s3.objects[OUT] == {}


# --- hand-over to a continuation --------------------------------------------------------------


def test_out_of_time_hands_over_to_a_continuation() -> None:
    stack, budget = _out_of_time_after_first_batch()
    stack.s3.add(IN, "manifests/big.txt", txt_manifest(95))

    (outcome,) = stack.handle(s3_event("manifests/big.txt"), remaining=budget.remaining)

    job_id = job_of("manifests/big.txt")
    assert outcome.action == "continued"
    assert [c.chunk for c in stack.sqs.chunks()] == list(range(10))
    (continuation,) = stack.sqs.continuations()
    assert continuation.job_id == job_id
    assert continuation.manifest == ManifestObject(IN, "manifests/big.txt", None, "etag-1")
    assert continuation.position["index"] == 40
    assert continuation.position["index"] % (CHUNK * 10) == 0
    job = stack.jobs.jobs[job_id]
    assert job.position == continuation.position
    assert job.status == JobStatus.SPLITTING
    assert not job.split_done
    assert all(raw.closed for raw in stack.s3.opened)


def test_hand_over_only_below_the_reserve() -> None:
    # 30 s left, 10 s per SendMessageBatch: 20 s left is not below the reserve, 10 s is.
    budget = Budget(30_000, 10_000)
    stack = Stack(on_batch=budget.spend)
    stack.s3.add(IN, "manifests/big.txt", txt_manifest(95))

    (outcome,) = stack.handle(s3_event("manifests/big.txt"), remaining=budget.remaining)

    assert outcome.action == "continued"
    assert [c.chunk for c in stack.sqs.chunks()] == list(range(20))
    assert [c.position["index"] for c in stack.sqs.continuations()] == [80]


def test_resuming_the_continuation_completes_the_split() -> None:
    stack, budget = _out_of_time_after_first_batch()
    data = txt_manifest(95)
    stack.s3.add(IN, "manifests/big.txt", data)
    stack.handle(s3_event("manifests/big.txt"), remaining=budget.remaining)
    (continuation,) = stack.sqs.continuations()
    first = stack.sqs.chunks()
    budget.left = 900_000

    (outcome,) = stack.handle(continuation.body(), message_id="msg-2", remaining=budget.remaining)

    assert outcome == SplitOutcome(continuation.job_id, "split", 95 - 40)
    resumed = stack.sqs.chunks()[len(first) :]
    assert [c.chunk for c in resumed] == list(range(10, 24))
    assert [i.index for c in resumed for i in c.items] == list(range(40, 95))
    # a plain object is resumed with a Range GET at the checkpoint, not re-read from the start
    assert stack.s3.gets[-1]["Range"] == f"bytes={continuation.position['byte_offset']}-"
    assert by_number(stack.sqs.chunks()) == uninterrupted("manifests/big.txt", data)
    job = stack.jobs.jobs[continuation.job_id]
    assert (job.status, job.total, job.chunks_total) == (JobStatus.RUNNING, 95, 24)


def test_a_chain_of_continuations_equals_an_uninterrupted_split() -> None:
    # Every invocation runs out of time after one SendMessageBatch.
    stack = Stack()
    data = txt_manifest(4 * 25 + 3)  # 103 lines, chunks 0..25
    stack.s3.add(IN, "manifests/long.txt", data)
    out_of_time = lambda: 0  # noqa: E731

    outcomes = stack.handle(s3_event("manifests/long.txt"), remaining=out_of_time)
    while outcomes[-1].action == "continued":
        body = stack.sqs.delivered[MANIFEST_URL][-1]
        outcomes = stack.handle(body, message_id="msg-next", remaining=out_of_time)

    assert len(stack.sqs.continuations()) == 2
    assert [c.position["index"] for c in stack.sqs.continuations()] == [40, 80]
    assert by_number(stack.sqs.chunks()) == uninterrupted("manifests/long.txt", data)
    assert stack.jobs.jobs[job_of("manifests/long.txt")].chunks_total == 26


def test_hand_over_at_the_very_end_of_the_manifest() -> None:
    stack = Stack()
    data = txt_manifest(40)  # exactly ten chunks: time runs out with nothing left to read
    stack.s3.add(IN, "manifests/a.txt", data)

    (first,) = stack.handle(s3_event("manifests/a.txt"), remaining=lambda: 0)
    (continuation,) = stack.sqs.continuations()
    (second,) = stack.handle(continuation.body(), message_id="msg-2")

    assert first.action == "continued"
    assert second == SplitOutcome(continuation.job_id, "split", 0)
    assert len(stack.sqs.batches[WORK_URL]) == 1  # no empty SendMessageBatch
    job = stack.jobs.jobs[continuation.job_id]
    assert (job.total, job.chunks_total, job.split_done) == (40, 10, True)


def test_gzip_manifest_continuation_re_streams_from_the_start() -> None:
    stack = Stack()
    plain = txt_manifest(50)
    stack.s3.add(IN, "manifests/big.txt.gz", gzip.compress(plain))

    stack.handle(s3_event("manifests/big.txt.gz"), remaining=lambda: 0)
    (continuation,) = stack.sqs.continuations()
    (outcome,) = stack.handle(continuation.body(), message_id="msg-2")

    assert outcome.items == 10
    assert "Range" not in stack.s3.gets[-1]
    expected = uninterrupted("manifests/big.txt", plain)
    assert [(c.chunk, c.items) for c in by_number(stack.sqs.chunks())] == [
        (c.chunk, c.items) for c in expected
    ]


def test_csv_manifest_continuation_keeps_the_header() -> None:
    stack = Stack()
    rows = "".join(f"cat-{i},https://img.example/{i}.jpg,album-{i % 3}\n" for i in range(45))
    data = ("id,url,album\n" + rows).encode()
    stack.s3.add(IN, "manifests/a.csv", data)

    stack.handle(s3_event("manifests/a.csv"), remaining=lambda: 0)
    (continuation,) = stack.sqs.continuations()
    stack.handle(continuation.body(), message_id="msg-2")

    assert continuation.position["csv_header"] == ["id", "url", "album"]
    assert stack.s3.gets[-1]["Range"] == f"bytes={continuation.position['byte_offset']}-"
    items = [i for c in by_number(stack.sqs.chunks()) for i in c.items]
    assert [i.index for i in items] == list(range(45))
    assert items[44] == WorkItem(
        index=44, url="https://img.example/44.jpg", id="cat-44", metadata={"album": "album-2"}
    )
    assert by_number(stack.sqs.chunks()) == uninterrupted("manifests/a.csv", data)


def test_split_finalizes_when_every_chunk_finished_before_it() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", txt_manifest(44))
    stack.handle(s3_event("manifests/a.txt"), remaining=lambda: 0)
    (continuation,) = stack.sqs.continuations()
    job_id = continuation.job_id
    # predict counted all 11 chunks (the last one sent by the continuation below) before the split ended
    stack.jobs.jobs[job_id] = replace(stack.jobs.jobs[job_id], chunks_done=11)

    stack.handle(continuation.body(), message_id="msg-2")

    assert [parse_finalize(b) for b in stack.sqs.delivered[FINALIZE_URL]] == [job_id]


@pytest.mark.parametrize("status", [JobStatus.RUNNING, JobStatus.FAILED, JobStatus.COMPLETED])
def test_continuation_of_a_job_no_longer_splitting_is_stale(status: JobStatus) -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", txt_manifest(50))
    stack.handle(s3_event("manifests/a.txt"), remaining=lambda: 0)
    (continuation,) = stack.sqs.continuations()
    stack.jobs.jobs[continuation.job_id] = replace(stack.jobs.jobs[continuation.job_id], status=status)
    sent = len(stack.sqs.chunks())

    (outcome,) = stack.handle(continuation.body(), message_id="msg-2")

    assert outcome == SplitOutcome(continuation.job_id, "stale")
    assert len(stack.sqs.chunks()) == sent
    assert len(stack.s3.gets) == 1


def test_continuation_of_an_unknown_job_is_stale() -> None:
    stack = Stack()
    continuation = Continuation(
        "job-unknown", ManifestObject(IN, "manifests/a.txt", None, "e"), {"index": 40}
    )

    assert stack.handle(continuation.body()) == [SplitOutcome("job-unknown", "stale")]
    assert stack.s3.gets == []


# --- duplicates and redeliveries --------------------------------------------------------------


def test_duplicate_event_for_an_existing_job_is_skipped() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", txt_manifest(10))
    stack.handle(s3_event("manifests/a.txt"), message_id="msg-1")
    sent = len(stack.sqs.chunks())

    (outcome,) = stack.handle(s3_event("manifests/a.txt"), message_id="msg-2")

    assert outcome == SplitOutcome(job_of("manifests/a.txt"), "duplicate")
    assert len(stack.sqs.chunks()) == sent
    assert len(stack.s3.gets) == 1


def test_duplicate_event_while_splitting_is_skipped() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", txt_manifest(95))
    stack.handle(s3_event("manifests/a.txt"), message_id="msg-1", remaining=lambda: 0)
    sent = len(stack.sqs.chunks())

    (outcome,) = stack.handle(s3_event("manifests/a.txt"), message_id="msg-2")

    assert outcome.action == "duplicate"
    assert len(stack.sqs.chunks()) == sent
    assert stack.jobs.jobs[outcome.job_id or ""].split_message_id == "msg-1"


def test_redelivery_of_the_same_message_resumes_from_the_checkpoint() -> None:
    stack = Stack()
    data = txt_manifest(95)
    stack.s3.add(IN, "manifests/a.txt", data)
    stack.handle(s3_event("manifests/a.txt"), message_id="msg-1", remaining=lambda: 0)
    checkpoint = stack.jobs.jobs[job_of("manifests/a.txt")].position
    assert checkpoint["index"] == 40

    # the invocation died before the message was deleted: SQS delivers msg-1 again
    (outcome,) = stack.handle(s3_event("manifests/a.txt"), message_id="msg-1")

    assert outcome == SplitOutcome(job_of("manifests/a.txt"), "split", 95 - 40)
    resumed = stack.sqs.chunks()[10:]
    assert [c.chunk for c in resumed] == list(range(10, 24))
    assert stack.s3.gets[-1]["Range"] == f"bytes={checkpoint['byte_offset']}-"
    assert by_number(stack.sqs.chunks()) == uninterrupted("manifests/a.txt", data)


def test_redelivery_before_any_checkpoint_starts_again_from_the_top() -> None:
    stack = Stack()
    data = txt_manifest(10)
    stack.s3.add(IN, "manifests/a.txt", data)
    # an earlier attempt created the job and died before handing over
    stack.jobs.create(job_of("manifests/a.txt"), "s3://input-bucket/manifests/a.txt", "msg-1")

    (outcome,) = stack.handle(s3_event("manifests/a.txt"), message_id="msg-1")

    assert outcome == SplitOutcome(job_of("manifests/a.txt"), "split", 10)
    assert "Range" not in stack.s3.gets[-1]
    assert by_number(stack.sqs.chunks()) == uninterrupted("manifests/a.txt", data)


def test_redelivery_after_the_split_finished_is_a_duplicate() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", txt_manifest(10))
    stack.handle(s3_event("manifests/a.txt"), message_id="msg-1")
    sent = len(stack.sqs.chunks())

    (outcome,) = stack.handle(s3_event("manifests/a.txt"), message_id="msg-1")

    assert outcome.action == "duplicate"
    assert len(stack.sqs.chunks()) == sent


def test_a_new_version_of_the_same_key_is_a_new_job() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", txt_manifest(3), version_id="v1")
    stack.s3.add(IN, "manifests/a.txt", txt_manifest(5), version_id="v2")

    (first,) = stack.handle(s3_event("manifests/a.txt", version_id="v1"), message_id="msg-1")
    (second,) = stack.handle(s3_event("manifests/a.txt", version_id="v2", etag="etag-2"), message_id="msg-2")

    assert (first.action, first.items, second.action, second.items) == ("split", 3, "split", 5)
    assert first.job_id != second.job_id


# --- bugs -------------------------------------------------------------------------------------


def test_items_reported_over_a_chain_of_continuations_add_up_to_the_manifest() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/long.txt", txt_manifest(103))
    out_of_time = lambda: 0  # noqa: E731

    outcomes = stack.handle(s3_event("manifests/long.txt"), remaining=out_of_time)
    reported = [outcomes[-1].items]
    while outcomes[-1].action == "continued":
        outcomes = stack.handle(
            stack.sqs.delivered[MANIFEST_URL][-1], message_id="next", remaining=out_of_time
        )
        reported.append(outcomes[-1].items)

    assert reported == [40, 40, 23]
    assert sum(reported) == 103


def test_a_manifest_of_long_lines_can_be_split() -> None:
    stack = Stack(chunk_size=16, payload_limit=1_048_576)  # SQS: 1 MiB per SendMessageBatch
    url = "https://img.example/" + "a" * 1900 + ".jpg"
    line = json.dumps({"url": url, "metadata": {"note": "n" * 5800}})
    assert len(line) < 8192  # a valid manifest line
    stack.s3.add(IN, "manifests/long-lines.jsonl", (line + "\n").encode() * 160)

    (outcome,) = stack.handle(s3_event("manifests/long-lines.jsonl"))

    assert outcome.action == "split"
    assert len(stack.sqs.chunks()) == 10


# --- manifest bombs: blank lines and gzip --------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"max_physical_lines": 50_000}, "more than 50000 lines (blank lines and comments included)"),
        ({"max_manifest_bytes": 40_000}, "larger than 40000 bytes (decompressed)"),
    ],
)
def test_a_gzip_of_newlines_fails_the_job_at_a_cap(limits: dict[str, int], reason: str) -> None:
    # Blank lines carry no item, so MAX_MANIFEST_LINES alone never stops them.
    stack = Stack(**limits)
    stack.s3.add(IN, "manifests/bomb.txt.gz", gzip.compress(b"https://img.example/0.jpg\n" + b"\n" * 10**6))

    (outcome,) = stack.handle(s3_event("manifests/bomb.txt.gz"))

    assert outcome.action == "failed"
    _assert_failed(stack, job_of("manifests/bomb.txt.gz"), reason)
    assert stack.sqs.chunks() == []


def test_time_is_checked_between_blank_lines_and_the_split_resumes_after_them() -> None:
    # 8 items, 30,000 blank lines, 3 items: no SendMessageBatch would ever check the time.
    data = txt_manifest(8) + b"\n" * 30_000 + b"https://img.example/tail.jpg\n" * 3
    stack = Stack()
    stack.s3.add(IN, "manifests/blanks.txt", data)

    (first,) = stack.handle(s3_event("manifests/blanks.txt"), remaining=lambda: 0)

    assert first.action == "continued"
    (continuation,) = stack.sqs.continuations()
    assert continuation.position["index"] == 8
    assert continuation.position["line"] == 9_999  # the first check, 10,000 lines in
    (second,) = stack.handle(continuation.body(), message_id="msg-2")
    assert second.action == "split"
    assert by_number(stack.sqs.chunks()) == uninterrupted("manifests/blanks.txt", data)


def test_a_partial_chunk_resumes_after_the_last_whole_one() -> None:
    data = txt_manifest(6) + b"\n" * 30_000 + txt_manifest(3)
    stack = Stack()
    stack.s3.add(IN, "manifests/partial.txt", data)

    (first,) = stack.handle(s3_event("manifests/partial.txt"), remaining=lambda: 0)

    (continuation,) = stack.sqs.continuations()
    assert (first.action, continuation.position["index"], continuation.position["line"]) == (
        "continued",
        4,
        4,
    )
    assert [c.chunk for c in stack.sqs.chunks()] == [0]  # chunk 1 (items 4, 5) is left to the continuation
    stack.handle(continuation.body(), message_id="msg-2")
    resumed, whole = by_number(stack.sqs.chunks()), uninterrupted("manifests/partial.txt", data)
    # Lines 6-8 repeat lines 0-2's URLs: one split marks them as sharing those lines' fetch; the
    # continuation starts a map of first lines of its own (split.FirstLines), so it does not.
    assert shares_of(whole) == {6: 0, 7: 1, 8: 2} and shares_of(resumed) == {}
    assert unmarked(resumed) == unmarked(whole)


def shares_of(chunks: list[Chunk]) -> dict[int, int]:
    return {item.index: item.shares for chunk in chunks for item in chunk.items if item.shares is not None}


def unmarked(chunks: list[Chunk]) -> list[Chunk]:
    return [replace(chunk, items=[replace(i, shares=None) for i in chunk.items]) for chunk in chunks]


def test_a_split_that_cannot_get_past_one_chunk_fails_the_job() -> None:
    # Out of time before the first chunk is whole: a continuation would start over forever.
    data = txt_manifest(2) + b"\n" * 30_000 + txt_manifest(3)
    stack = Stack()
    stack.s3.add(IN, "manifests/stuck.txt", data)

    (outcome,) = stack.handle(s3_event("manifests/stuck.txt"), remaining=lambda: 0)

    assert outcome.action == "failed"
    _assert_failed(stack, job_of("manifests/stuck.txt"), "ran out of time before it could send a chunk")
    assert stack.sqs.continuations() == []


def test_a_gzip_continuation_out_of_time_while_re_reading_fails_the_job() -> None:
    # A .gz is re-read from its start: time spent skipping what was consumed counts too, and a
    # continuation that cannot even get back to its checkpoint would only be sent again.
    data = gzip.compress(txt_manifest(8) + b"\n" * 30_000 + txt_manifest(3))
    stack = Stack()
    stack.s3.add(IN, "manifests/blanks.txt.gz", data)
    (first,) = stack.handle(s3_event("manifests/blanks.txt.gz"), remaining=lambda: 0)
    (continuation,) = stack.sqs.continuations()
    assert (first.action, continuation.position["line"]) == ("continued", 9_999)

    (second,) = stack.handle(continuation.body(), message_id="msg-2", remaining=lambda: 0)

    assert second.action == "failed"
    _assert_failed(
        stack, job_of("manifests/blanks.txt.gz"), "past line 9999 (a .gz is re-read from its start)"
    )
    (late,) = stack.handle(continuation.body(), message_id="msg-3")  # a redelivery changes nothing
    assert late.action == "stale"
