"""Hostile lines cost only their own results: a tarpit, an IPv6 zone id, an unparsable redirect,
beside good photos, on a moto server with the real fetcher, decoder and engine."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from batchpredict.handlers import predict
from batchpredict.jobs import JobStore
from batchpredict.local.lambda_shim import LocalContext
from batchpredict.messages import Chunk
from batchpredict.records import WorkItem

from .conftest import PipelineStack as Stack

PHOTOS = ["coffee.png", "chelsea.png", "rocket.jpg", "china.jpg", "flower.jpg"]
IMAGE_DEADLINE = 2.0  # FETCH_TOTAL_TIMEOUT in these tests


@pytest.fixture(scope="module")
def tarpit() -> Iterator[str]:
    """Accepts connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


class _BadRedirect(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", "http://[::1")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def bad_redirect() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BadRedirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def quick_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FETCH_TOTAL_TIMEOUT", str(IMAGE_DEADLINE))
    predict.service.cache_clear()


def _hostile_urls(image_server: str, tarpit: str, bad_redirect: str) -> list[str]:
    good = [f"{image_server}/{photo}" for photo in PHOTOS]
    return [
        *good[:2],
        f"{tarpit}/never.jpg",
        "http://[fe80::1%eth0]/a.jpg",
        f"{bad_redirect}/x.jpg",
        *good[2:],
    ]


def _sqs_event(chunks: dict[str, Chunk]) -> dict[str, Any]:
    """The SQS event of a predict invocation: one record a chunk, keyed by message id."""
    return {
        "Records": [
            {
                "messageId": message_id,
                "body": chunk.body(),
                "receiptHandle": f"r-{message_id}",
                "attributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:1:q",
                "awsRegion": "us-east-1",
            }
            for message_id, chunk in chunks.items()
        ]
    }


def test_a_hostile_chunk_fails_only_its_own_lines_and_the_invocation_returns(
    stack: Stack, image_server: str, tarpit: str, bad_redirect: str, quick_deadline: None
) -> None:
    # Sent as a chunk message directly: the zone id must not reach predict's fetcher past the
    # splitter's check, but a message from anywhere else must not sink the batch either.
    urls = _hostile_urls(image_server, tarpit, bad_redirect)
    job_id = "job-hostile"
    JobStore(stack.dynamodb, stack.table).create(job_id, "s3://in/manifests/hostile.txt", "m-0")
    hostile = Chunk(job_id, 0, [WorkItem(index=i, url=u) for i, u in enumerate(urls)])
    neighbour = Chunk("job-neighbour", 0, [WorkItem(index=0, url=f"{image_server}/coffee.png")])
    JobStore(stack.dynamodb, stack.table).create("job-neighbour", "s3://in/manifests/n.txt", "m-1")
    event = _sqs_event({"hostile": hostile, "neighbour": neighbour})

    started = time.monotonic()
    response = predict.lambda_handler(event, LocalContext("PredictFunction", timeout_seconds=60))
    elapsed = time.monotonic() - started

    assert response == {"batchItemFailures": []}
    assert elapsed < IMAGE_DEADLINE + 15  # bounded by the tarpit's own deadline, not the invocation's
    rows = {row.index: row.to_json() for row in JobStore(stack.dynamodb, stack.table).query_results(job_id)}
    assert sorted(rows) == list(range(len(urls)))  # every line exactly once
    codes = {i: (row["error"] or {}).get("code") for i, row in rows.items()}
    assert codes[2] == "fetch_timeout"
    assert codes[3] == "invalid_url"
    assert codes[4] == "invalid_redirect"
    assert [rows[i]["status"] for i in (0, 1, 5, 6, 7)] == ["SUCCEEDED"] * 5
    (other,) = JobStore(stack.dynamodb, stack.table).query_results("job-neighbour")
    assert other.status == "SUCCEEDED"
    part = stack.s3.get_object(Bucket=stack.output_bucket, Key=f"results/{job_id}/parts/000000.jsonl")
    assert [json.loads(line)["index"] for line in part["Body"].read().splitlines()] == list(range(len(urls)))


def test_a_hostile_manifest_completes_with_one_result_per_line(
    stack: Stack, image_server: str, tarpit: str, bad_redirect: str, quick_deadline: None
) -> None:
    urls = _hostile_urls(image_server, tarpit, bad_redirect)
    stack.submit("hostile.txt", "\n".join(urls))

    stack.run(max_seconds=120)

    job_id = stack.only_job_id()
    lines = stack.results_lines(job_id)
    assert [line["index"] for line in lines] == list(range(len(urls)))
    codes = [(line["error"] or {}).get("code") for line in lines]
    assert codes == [None, None, "fetch_timeout", "invalid_url", "invalid_redirect", None, None, None]
    summary = stack.summary(job_id)
    assert summary["status"] == "COMPLETED_WITH_ERRORS"
    assert summary["compute"]["predict_invocations"] >= 1


def test_a_stalled_invocation_takes_more_chunks_from_the_work_queue_and_deletes_them(
    stack: Stack, image_server: str, tarpit: str, quick_deadline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stall of 1.5 s before a refill, in a 2 s tarpit deadline: room for exactly one.
    monkeypatch.setenv("REFILL_AFTER_SECONDS", "1.5")
    predict.service.cache_clear()
    jobs = JobStore(stack.dynamodb, stack.table)
    for job_id in ("job-stalled", "job-waiting"):
        jobs.create(job_id, f"s3://in/manifests/{job_id}.txt", f"m-{job_id}")
    stalled = Chunk("job-stalled", 0, [WorkItem(index=0, url=f"{tarpit}/never.jpg")])
    waiting = [
        Chunk("job-waiting", i, [WorkItem(index=i, url=f"{image_server}/{photo}")])
        for i, photo in enumerate(PHOTOS[:2])
    ]
    work_queue = stack.queue("WorkQueue")[0]
    for chunk in waiting:  # queued behind the invocation's own batch
        stack.sqs.send_message(QueueUrl=work_queue, MessageBody=chunk.body())

    response = predict.lambda_handler(
        _sqs_event({"stalled": stalled}), LocalContext("PredictFunction", timeout_seconds=60)
    )

    assert response == {"batchItemFailures": []}
    (row,) = jobs.query_results("job-stalled")
    assert row.error is not None and row.error.code == "fetch_timeout"
    # The stall left time for one refill of as many chunks as the event had (one): that
    # chunk was predicted and written while line 0 of job-stalled hung, then deleted; the
    # other is still queued, untouched.
    (done,) = jobs.query_results("job-waiting")
    assert done.status == "SUCCEEDED"
    attributes = stack.sqs.get_queue_attributes(
        QueueUrl=work_queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attributes == {"ApproximateNumberOfMessages": "1", "ApproximateNumberOfMessagesNotVisible": "0"}
    (left,) = stack.sqs.receive_message(QueueUrl=work_queue)["Messages"]
    assert Chunk.parse(left["Body"]).chunk != done.index
