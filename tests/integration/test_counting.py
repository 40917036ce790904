"""Counting under redelivery and concurrent deliveries, against a real engine on loopback
(DynamoDB Local, or moto's DynamoDB where Java is missing): every chunk delivered three times
at once from eight threads still counts once, the sharded counts equal results.jsonl, and
the paged IMG# rows read back in manifest order."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from batchpredict.errors import ErrorCode
from batchpredict.finalize import Finalizer
from batchpredict.jobs import PAGE_LINES, JobStore
from batchpredict.local.dynamodb_local import DynamoDBLocal, DynamoDBLocalUnavailableError
from batchpredict.local.provision import LocalOptions, provision_tables
from batchpredict.merges import MergeStore
from batchpredict.messages import Chunk
from batchpredict.queues import Queue
from batchpredict.records import SUCCEEDED, ResultRecord, WorkItem
from batchpredict.results import ResultStore
from batchpredict.writer import ChunkBusyError, ChunkWriter

pytestmark = pytest.mark.integration

CHUNK_LINES = 40
CHUNKS = 28  # 1,120 lines: two result pages
DELIVERIES = 3


def _clients(endpoint: str) -> dict[str, Any]:
    return {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }


@pytest.fixture(scope="module")
def dynamodb_endpoint(moto_endpoint: str) -> Iterator[str]:
    """DynamoDB Local (the engine with DynamoDB's transaction rules), else moto's DynamoDB."""
    try:
        server = DynamoDBLocal()
        endpoint = server.start()
    except DynamoDBLocalUnavailableError:
        yield moto_endpoint
        return
    yield endpoint
    server.stop()


def _records(job_id: str, chunk: int) -> list[ResultRecord]:
    records = []
    for index in range(chunk * CHUNK_LINES, (chunk + 1) * CHUNK_LINES):
        item = WorkItem(index=index, url=f"https://img.example/{index}.jpg")
        if index % 7 == 0:
            records.append(ResultRecord.failed(job_id, item, ErrorCode.HTTP_ERROR, "HTTP 404", "m:1"))
        else:
            records.append(ResultRecord.for_item(job_id, item, model="m:1"))
    return records


def test_concurrent_redeliveries_count_each_chunk_once(moto_endpoint: str, dynamodb_endpoint: str) -> None:
    dynamodb = boto3.client("dynamodb", **_clients(dynamodb_endpoint))
    s3 = boto3.client("s3", **_clients(moto_endpoint))
    sqs = boto3.client("sqs", **_clients(moto_endpoint))
    name = f"count-{uuid.uuid4().hex[:8]}"
    (table,) = provision_tables(dynamodb, LocalOptions(model_uri="", prefix=name))
    s3.create_bucket(Bucket=name)
    finalize_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    jobs = JobStore(dynamodb, table)
    results = ResultStore(s3, name)
    writer = ChunkWriter(jobs, results, Queue(sqs, finalize_url))
    job_id = f"job-{name}"
    assert jobs.create(job_id, "s3://in/manifests/m.txt", "m-0")
    # Half the chunks are counted while the job is still splitting, as happens on a fast queue.
    deliveries = [chunk for chunk in range(CHUNKS) for _ in range(DELIVERIES)]
    random.Random(9).shuffle(deliveries)

    def deliver(chunk: int) -> bool:
        records = _records(job_id, chunk)
        while True:  # a busy chunk's message comes back later, as SQS would bring it
            try:
                return writer.write(Chunk(job_id, chunk, []), records, "m:1", lease_seconds=60)
            except ChunkBusyError:
                time.sleep(0.05)

    half = len(deliveries) // 2
    with ThreadPoolExecutor(8) as pool:
        counted = list(pool.map(deliver, deliveries[:half]))
        assert jobs.finish_split(job_id, CHUNKS * CHUNK_LINES, CHUNKS) is not None
        counted += list(pool.map(deliver, deliveries[half:]))

    assert sum(counted) == CHUNKS  # each chunk counted by exactly one delivery
    job = jobs.get(job_id)
    assert job is not None and job.all_chunks_done
    # The last counting delivery (or a later one) asked for finalize; finalize is idempotent.
    messages = sqs.receive_message(QueueUrl=finalize_url, MaxNumberOfMessages=10)["Messages"]
    assert {json.loads(m["Body"])["job_id"] for m in messages} == {job_id}
    Finalizer(jobs, results, MergeStore(dynamodb, table), Queue(sqs, finalize_url)).finalize(job_id)

    body = s3.get_object(Bucket=name, Key=f"results/{job_id}/results.jsonl")["Body"].read()
    lines = [json.loads(line) for line in body.splitlines()]
    final = jobs.get(job_id)
    assert final is not None
    assert [line["index"] for line in lines] == list(range(CHUNKS * CHUNK_LINES))
    assert final.succeeded == sum(1 for line in lines if line["status"] == SUCCEEDED)
    assert final.failed == sum(1 for line in lines if line["status"] != SUCCEEDED) > 0
    assert final.chunks_done == CHUNKS
    rows = [row.to_json() for row in jobs.query_results(job_id)]
    assert [row["index"] for row in rows] == list(range(CHUNKS * CHUNK_LINES))
    assert rows == lines
    # The rows really are on two pages: the first page alone holds PAGE_LINES of them.
    first_page = dynamodb.query(
        TableName=table,
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": f"{job_id}#0"}},
        Select="COUNT",
    )
    assert first_page["Count"] == PAGE_LINES
