"""Lines and failures that used to leave a job SPLITTING forever (issue 17): a lone surrogate,
a CSV line that escaping grows past SQS's message size, and any error after the JOB record
exists. Each line still ends as exactly one result; a split that cannot go on fails its job."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from botocore.exceptions import EndpointConnectionError

from batchpredict.jobs import JobStatus
from batchpredict.manifest import MAX_LINE_BYTES, InvalidLine, ManifestFormat, iter_manifest
from batchpredict.messages import (
    MAX_CHUNK_SIZE,
    MAX_WORK_ITEM_BYTES,
    SQS_MAX_MESSAGE_BYTES,
    Chunk,
    work_item_bytes,
)
from batchpredict.results import summary_key
from batchpredict.split import work_item
from tests.unit.fakes import client_error
from tests.unit.test_pipeline_split import IN, OUT, Stack, job_of, s3_event

LAMBDA_MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
SQS_MAX_BATCH_BYTES = 1024 * 1024  # SendMessageBatch's whole request, as the repro met it
MAX_WORK_BATCH_SIZE = 10  # the template's WorkBatchSize MaxValue


def _split(key: str, data: bytes, chunk_size: int = 4) -> Stack:
    stack = Stack(chunk_size, payload_limit=SQS_MAX_BATCH_BYTES)
    stack.s3.add(IN, key, data)
    stack.handle(s3_event(key))
    return stack


def _items(stack: Stack) -> list[dict[str, object]]:
    return [item.as_message() for chunk in stack.sqs.chunks() for item in chunk.items]


SURROGATE_LINES = [
    '{"url": "https://img.example/chelsea.png", "id": "\\ud800"}',
    '{"url": "https://img.example/\\udfff.png"}',
    '{"url": "https://img.example/a.png", "metadata": {"k": ["\\udbff"]}}',
    '{"url": "https://img.example/a.png", "metadata": {"\\ud83d": 1}}',
    '{"url": "ftp://img.example/\\ud800", "id": 7}',  # an invalid line's own text
    '{"url": "https://img.example/a.png", "other": "\\uDC00"}',
]


@pytest.mark.parametrize("line", SURROGATE_LINES)
def test_a_lone_surrogate_is_an_invalid_line_of_its_own(line: str) -> None:
    good = '{"url": "https://img.example/coffee.png"}'
    stack = _split("manifests/s.jsonl", f"{good}\n{line}\n{good}\n".encode())

    job = stack.jobs.jobs[job_of("manifests/s.jsonl")]
    assert (job.status, job.total) == (JobStatus.RUNNING, 3)
    first, bad, last = _items(stack)
    assert "error" not in first and "error" not in last
    assert bad["error"] == {
        "code": "invalid_manifest_line",
        "message": bad["error"]["message"],  # type: ignore[index]
    }
    assert "lone surrogate" in bad["error"]["message"]  # type: ignore[index]
    for body in stack.sqs.delivered["https://sqs.local/1/work"]:
        body.encode("utf-8")  # every message is text SQS can carry


def test_a_valid_surrogate_pair_is_kept() -> None:
    stack = _split("manifests/s.jsonl", b'{"url": "https://img.example/\\ud83d\\ude00.png"}\n')

    (item,) = _items(stack)
    assert item == {"index": 0, "url": "https://img.example/\U0001f600.png"}


def _csv_line(field_byte: str, size: int) -> str:
    return f"https://img.example/a.png,{field_byte * size}"


def test_control_characters_in_csv_cannot_grow_a_chunk_past_sqs_at_chunk_size_25() -> None:
    # The reproduction: 8,100 \x01 bytes in the id pass the 8 KiB raw limit but are 48,600 bytes
    # as JSON; 25 such lines made a chunk SQS refused, and the job stayed SPLITTING.
    rows = ["url,id"] + [_csv_line("\x01", 8100) for _ in range(30)] + ["https://img.example/b.png,ok"]
    stack = _split("manifests/c.csv", ("\n".join(rows) + "\n").encode(), chunk_size=MAX_CHUNK_SIZE)

    job = stack.jobs.jobs[job_of("manifests/c.csv")]
    assert (job.status, job.total, job.chunks_total) == (JobStatus.RUNNING, 31, 2)
    items = _items(stack)
    assert [i["index"] for i in items] == list(range(31))
    for item in items[:30]:
        error = item["error"]
        assert error["code"] == "invalid_manifest_line"  # type: ignore[index]
        assert f"over {MAX_WORK_ITEM_BYTES}" in error["message"]  # type: ignore[index]
    assert items[30] == {"index": 30, "url": "https://img.example/b.png", "id": "ok"}
    for body in stack.sqs.delivered["https://sqs.local/1/work"]:
        assert len(body.encode()) <= SQS_MAX_MESSAGE_BYTES


@pytest.mark.parametrize("char", ["\x01", "\\", '"', "\u00e9", "\u20ac", "\U0001f600", "\x7f"])
def test_every_line_travels_within_its_bound_whatever_it_holds(char: str) -> None:
    # The worst a raw line of at most MAX_LINE_BYTES can become, in each place a line carries
    # text: CSV id and metadata columns (quoted, so '"' doubles), a JSONL id and metadata.
    quoted = '"' + char.replace('"', '""') * (MAX_LINE_BYTES // 2 // len(char.encode())) + '"'
    csv_text = f"url,id,note\nhttps://img.example/a.png,{quoted},{quoted}\n"
    escaped = json.dumps(char * (MAX_LINE_BYTES // 12))
    jsonl_text = f'{{"url": "https://img.example/a.png", "id": {escaped}, "metadata": {{"n": {escaped}}}}}\n'
    for fmt, text in ((ManifestFormat.CSV, csv_text), (ManifestFormat.JSONL, jsonl_text)):
        for item, _ in iter_manifest(_Stream(text.encode()), fmt, False):
            carried = work_item(item)
            assert work_item_bytes(carried) <= MAX_WORK_ITEM_BYTES
            assert carried.index == item.index


def test_a_full_chunk_fits_sqs_and_a_full_predict_event_fits_lambda() -> None:
    # Items at the bound, the longest envelope a chunk can have.
    from batchpredict.records import WorkItem

    overhead = work_item_bytes(WorkItem(index=999_999_999, url=""))
    # Backslashes: 2 bytes each in the body, 4 in the event, the most any character grows.
    item = WorkItem(index=999_999_999, url="\\" * ((MAX_WORK_ITEM_BYTES - overhead) // 2))
    assert MAX_WORK_ITEM_BYTES - 1 <= work_item_bytes(item) <= MAX_WORK_ITEM_BYTES
    chunk = Chunk("job-" + "f" * 20, 99_999_999, [item] * MAX_CHUNK_SIZE, top_k=1000, max_failures="99.99%")
    body = chunk.body()
    assert len(body.encode()) <= SQS_MAX_MESSAGE_BYTES
    # A predict event of WorkBatchSize such messages, as Lambda's SQS mapping shapes it.
    record = {
        "messageId": "0" * 36,
        "receiptHandle": "r" * 1024,
        "body": body,
        "attributes": {"ApproximateReceiveCount": "5", "SentTimestamp": "0" * 13},
        "messageAttributes": {},
        "md5OfBody": "0" * 32,
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:" + "q" * 80,
        "awsRegion": "us-east-1",
    }
    # The event is UTF-8 JSON: re-embedding a body escapes its quotes and backslashes (at most
    # 2x), not its non-ASCII text.
    event = json.dumps({"Records": [record] * MAX_WORK_BATCH_SIZE}, ensure_ascii=False)
    assert len(event.encode()) < LAMBDA_MAX_PAYLOAD_BYTES


class _Stream:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, size: int) -> bytes:
        data, self._data = self._data[:size], self._data[size:]
        return data


def test_an_invalid_lines_raw_text_is_bounded_and_encodable() -> None:
    line = '{"url": "' + "\\ud800" * 1000 + '"}'
    (item, _), *_ = list(iter_manifest(_Stream(line.encode()), ManifestFormat.JSONL, False))
    assert isinstance(item, InvalidLine)
    work_item_bytes(work_item(item))


# --- a split that cannot go on fails its job --------------------------------------------------


class BoomError(Exception):
    pass


def _raise_boom() -> None:
    raise BoomError("a bug after the JOB record exists")


def test_any_error_after_the_job_exists_fails_the_job_with_a_summary() -> None:
    stack = Stack(on_batch=_raise_boom)
    stack.s3.add(IN, "manifests/a.txt", b"https://img.example/a.png\n")

    (outcome,) = stack.handle(s3_event("manifests/a.txt"))

    job_id = job_of("manifests/a.txt")
    job = stack.jobs.jobs[job_id]
    assert outcome.action == "failed"
    assert job.status == JobStatus.FAILED
    assert "could not be split: BoomError: a bug after the JOB record exists" in str(job.error)
    summary = json.loads(stack.s3.objects[OUT][summary_key(job_id)])
    assert summary["status"] == "FAILED" and "BoomError" in summary["error"]


def test_a_queue_that_refuses_the_chunks_fails_the_job() -> None:
    def refuse(call: int, entries: list[dict[str, str]]) -> list[dict[str, object]]:
        return [
            {"Id": e["Id"], "SenderFault": True, "Code": "InvalidMessageContents", "Message": "no"}
            for e in entries
        ]

    stack = Stack()
    stack.sqs._fail = refuse
    stack.s3.add(IN, "manifests/a.txt", b"https://img.example/a.png\n")

    (outcome,) = stack.handle(s3_event("manifests/a.txt"))

    job = stack.jobs.jobs[job_of("manifests/a.txt")]
    assert (outcome.action, job.status) == ("failed", JobStatus.FAILED)
    assert "QueueSendError" in str(job.error)


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="https://sqs.local"),
        client_error("InternalError", "SendMessageBatch", ResponseMetadata={"HTTPStatusCode": 500}),
    ],
)
def test_a_transient_error_is_raised_for_a_redelivery_that_resumes(error: Exception) -> None:
    def fail() -> None:
        raise error

    stack = Stack(on_batch=fail)
    stack.s3.add(IN, "manifests/a.txt", b"https://img.example/a.png\n")

    with pytest.raises(type(error)):
        stack.handle(s3_event("manifests/a.txt"))

    assert stack.jobs.jobs[job_of("manifests/a.txt")].status == JobStatus.SPLITTING


def test_a_redelivery_with_a_corrupt_checkpoint_fails_the_job() -> None:
    stack = Stack()
    stack.s3.add(IN, "manifests/a.txt", b"https://img.example/a.png\n")
    stack.jobs.create(job_of("manifests/a.txt"), "s3://input-bucket/manifests/a.txt", "msg-1")
    job_id = job_of("manifests/a.txt")
    stack.jobs.jobs[job_id] = replace(stack.jobs.jobs[job_id], position={"index": "not a number"})

    (outcome,) = stack.handle(s3_event("manifests/a.txt"), message_id="msg-1")

    assert (outcome.action, stack.jobs.jobs[job_id].status) == ("failed", JobStatus.FAILED)
    assert "ValueError" in str(stack.jobs.jobs[job_id].error)
