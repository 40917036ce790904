"""finalize on a moto server: a merge of real multipart parts (S3's 5 MiB floor) interrupted
again and again, and a finalize message dead-lettered by the queue's redrive policy."""

from __future__ import annotations

import json
from typing import Any

import pytest

from batchpredict.finalize import Finalizer
from batchpredict.jobs import FINAL_STATUSES, JobStore
from batchpredict.merge import MIB, MergeSettings
from batchpredict.merges import MergeStore
from batchpredict.messages import Chunk
from batchpredict.queues import Queue
from batchpredict.records import ResultRecord, WorkItem
from batchpredict.results import ResultStore, results_key
from batchpredict.writer import ChunkWriter

from .conftest import PipelineStack as Stack

pytestmark = pytest.mark.integration

JOB = "job-resume"
CHUNK = 25
CHUNKS = 66  # 25 lines of ~7 KB a chunk: ~11.5 MB, two parts of >= 5 MiB and a last one
SETTINGS = MergeSettings(read_concurrency=4, prefetch_chunks=16, part_bytes=5 * MIB, time_reserve_seconds=1.0)


def _records(chunk: int) -> list[ResultRecord]:
    out = []
    for index in range(chunk * CHUNK, (chunk + 1) * CHUNK):
        url, pad = f"https://img.example/{index}.jpg", f"{index:08x}" * 850
        item = WorkItem(index=index, url=url, metadata={"pad": pad})
        out.append(ResultRecord.for_item(JOB, item, model="m:1"))
    return out


def _finalizer(stack: Stack, settings: MergeSettings = SETTINGS) -> Finalizer:
    return Finalizer(
        JobStore(stack.dynamodb, stack.table),
        ResultStore(stack.s3, stack.output_bucket),
        MergeStore(stack.dynamodb, stack.table),
        Queue(stack.sqs, stack.queue("FinalizeQueue")[0]),
        settings,
    )


def _counted_job(stack: Stack) -> None:
    jobs = JobStore(stack.dynamodb, stack.table)
    assert jobs.create(JOB, "s3://in/manifests/resume.txt", "m-1")
    jobs.finish_split(JOB, CHUNKS * CHUNK, CHUNKS)
    writer = ChunkWriter(jobs, ResultStore(stack.s3, stack.output_bucket), Queue(stack.sqs, "unused"))
    writer.request_finalize_if_done = lambda *args: None  # type: ignore[method-assign]
    jobs.put_results = lambda *args: 0  # type: ignore[method-assign]  # no IMG# rows: finalize reads parts
    for chunk in range(CHUNKS):
        records = _records(chunk)
        writer.write(Chunk(JOB, chunk, [WorkItem(index=r.index) for r in records]), records, "m:1")


def test_a_merge_interrupted_at_every_part_is_byte_identical_to_one_in_one_go(stack: Stack) -> None:
    _counted_job(stack)
    expected = b"".join(
        json.dumps(r.to_json(), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        for chunk in range(CHUNKS)
        for r in _records(chunk)
    )
    finalize_queue = stack.queue("FinalizeQueue")[0]
    jobs = JobStore(stack.dynamodb, stack.table)
    invocations = 0
    # No time left in any invocation: each uploads one part, checkpoints it and asks for a
    # continuation on the finalize queue, which the next invocation (a new Finalizer) takes.
    while (job := jobs.get(JOB)) is not None and job.status not in FINAL_STATUSES:
        assert invocations < 10
        invocations += 1
        _finalizer(stack).finalize(JOB, lambda: 0.0)
        if invocations == 2:  # and once the checkpoint is written but the merge dies before the next part
            merges = MergeStore(stack.dynamodb, stack.table)
            assert len(merges.get(JOB).etags) == 2 and merges.get(JOB).upload_id
    interrupted = stack.s3.get_object(Bucket=stack.output_bucket, Key=results_key(JOB))["Body"].read()
    received = stack.sqs.receive_message(QueueUrl=finalize_queue, MaxNumberOfMessages=10)
    continuations = received.get("Messages", [])

    assert invocations == 3 and len(continuations) == 2
    assert interrupted == expected
    assert stack.s3.list_multipart_uploads(Bucket=stack.output_bucket).get("Uploads", []) == []
    assert jobs.get(JOB).status.value == "COMPLETED"  # type: ignore[union-attr]

    # The same job merged again in one go (a fresh checkpoint) gives the same bytes.
    stack.dynamodb.delete_item(TableName=stack.table, Key={"pk": {"S": JOB}, "sk": {"S": "MERGE"}})
    stack.dynamodb.update_item(
        TableName=stack.table,
        Key={"pk": {"S": JOB}, "sk": {"S": "JOB"}},
        UpdateExpression="SET #s = :r",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":r": {"S": "RUNNING"}},
    )
    _finalizer(stack).finalize(JOB)
    assert stack.s3.get_object(Bucket=stack.output_bucket, Key=results_key(JOB))["Body"].read() == expected


def test_a_dead_lettered_finalize_ends_the_job_failed_with_the_reason(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchpredict.merge import Merger

    def broken(self: Merger, *args: Any) -> Any:
        raise RuntimeError("simulated S3 outage")

    monkeypatch.setattr(Merger, "run", broken)
    stack.submit("doomed.txt", "ftp://a/1.jpg\nftp://a/2.jpg\n")  # invalid lines: no fetch needed
    # finalize fails maxReceiveCount (5) times, the message goes to its DLQ, reconcile fails the job.
    stack.run()
    job_id = stack.only_job_id()
    job, summary = stack.job_dict(job_id), stack.summary(job_id)
    assert job["status"] == summary["status"] == "FAILED"
    assert job["error"].startswith("results could not be merged: finalize failed on every delivery")
    assert job["error"].endswith("last error: RuntimeError: simulated S3 outage")
    assert summary["error"] == job["error"]
