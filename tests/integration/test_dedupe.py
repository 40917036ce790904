"""Dedupe end to end on a moto server (issue 19, must show): 1,000 manifest lines over 100
distinct URLs, in several spellings of each, make 100 requests (counted at the image server) and
100 inferences (counted at the engine); every line has its result, in order, with its original's
predictions, naming the line whose fetch it shares; and a shared line whose original another
invocation wrote copies its row, without a fetch. The table is DynamoDB Local's when it can
start (moto's DynamoDB copies the whole table in every transaction: 40 chunks of a 1,000-row
table took ~10 s); benchmarks/dedupe.py runs the same job on the embedded local stack (worker
processes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from benchmarks.dedupe import CountingImageServer, check, dedupe_manifest, distinct_photos

from batchpredict import batch
from batchpredict.handlers import split_manifest
from batchpredict.jobs import JobStore
from batchpredict.local.dynamodb_local import DynamoDBLocal, DynamoDBLocalUnavailableError
from batchpredict.model import Engine
from batchpredict.urlkey import url_key

from .conftest import PipelineStack as Stack
from .test_pipeline import _assert_consistent

DISTINCT = 100
LINES = 1000


@pytest.fixture
def real_table(moto_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """DynamoDB Local for the stack's table (set before ``stack`` provisions it); False: it did
    not start, and moto's DynamoDB stands in."""
    try:
        server = DynamoDBLocal()
        endpoint = server.start()
    except DynamoDBLocalUnavailableError:
        yield False
        return
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", endpoint)
    yield True
    server.stop()


@pytest.fixture
def serve(samples_dir: Path, tmp_path: Path) -> Iterator[Callable[[int], CountingImageServer]]:
    """``serve(n)``: n distinct JPEGs p0.jpg … on a server that counts the requests for each."""
    servers: list[CountingImageServer] = []

    def start(count: int) -> CountingImageServer:
        distinct_photos(samples_dir, tmp_path, count)
        servers.append(CountingImageServer(tmp_path))
        servers[-1].start()
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def inferred(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images of every forward pass of the engine."""
    passes: list[int] = []
    real = Engine.run_inference

    def counted(self: Engine, images: np.ndarray, k: int = 5) -> Any:
        passes.append(len(images))
        return real(self, images, k)

    monkeypatch.setattr(Engine, "run_inference", counted)
    return passes


@pytest.fixture
def rows_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows each JobStore.result_rows call found (shared lines whose original was elsewhere)."""
    found: list[int] = []
    real = JobStore.result_rows

    def counted(self: JobStore, lines: Any) -> Any:
        rows = real(self, lines)
        found.append(len(rows))
        return rows

    monkeypatch.setattr(JobStore, "result_rows", counted)
    return found


def test_a_thousand_lines_over_a_hundred_urls_make_a_hundred_fetches_and_inferences(
    real_table: bool,
    stack: Stack,
    serve: Callable[[int], CountingImageServer],
    inferred: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = serve(DISTINCT)
    monkeypatch.setenv("CHUNK_SIZE", "25")  # 40 chunks
    monkeypatch.setenv("HOST_RPS", "100")  # the one test host's pace is not what is tested here
    if not real_table:
        # One chunk written at a time: moto's TransactWriteItems deep-copies the table while
        # another request thread writes to it ("dictionary changed size during iteration"),
        # which a counted chunk's transaction then fails on. DynamoDB has no such race.
        monkeypatch.setattr(batch, "WRITER_THREADS", 1)
    urls = dedupe_manifest(images.url, LINES, DISTINCT)
    stack.submit("dedupe.txt", "\n".join(urls) + "\n")

    stack.run()

    results = _assert_consistent(stack, stack.only_job_id(), LINES)  # rows = results.jsonl, counts
    tally = check(urls, results)
    assert tally.wrong == []  # in order, own URL, SUCCEEDED, the predictions and image shared
    assert (tally.lines, tally.distinct, tally.shared, tally.refetched) == (
        LINES,
        DISTINCT,
        LINES - DISTINCT,
        0,
    )
    first: dict[str, int] = {}  # each line names the first of its URL, none the first itself
    originals = [first.setdefault(url_key(line["url"]), line["index"]) for line in results]
    assert [line.get("shared_with") for line in results] == [
        None if original == index else original for index, original in enumerate(originals)
    ]
    assert sorted(images.requests.values()) == [1] * DISTINCT  # each image fetched once
    assert sum(inferred) == DISTINCT == tally.own_inference


def test_a_shared_line_whose_original_another_invocation_wrote_copies_its_row(
    real_table: bool,
    stack: Stack,
    serve: Callable[[int], CountingImageServer],
    inferred: list[int],
    rows_read: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = serve(5)
    monkeypatch.setenv("CHUNK_SIZE", "4")
    urls = [f"{images.url}/p{k}.jpg" for k in (0, 1, 2, 3)]
    urls += [f"{images.url}/p0.jpg#again", urls[1], f"{images.url}/p4.jpg", urls[2]]
    stack.submit("two-chunks.txt", "\n".join(urls) + "\n")
    stack.deliver("ManifestQueue", split_manifest.lambda_handler)
    # The chunks one after the other, each alone in its invocation: chunk 1's lines 4, 5 and 7
    # find their originals' rows, written by chunk 0's.
    work_url, _ = stack.queue("WorkQueue")
    bodies = []
    for message in stack.sqs.receive_message(QueueUrl=work_url, MaxNumberOfMessages=10)["Messages"]:
        bodies.append(message["Body"])
        stack.sqs.delete_message(QueueUrl=work_url, ReceiptHandle=message["ReceiptHandle"])
    assert len(bodies) == 2
    for body in sorted(bodies, key=lambda b: '"chunk":1' in b):
        stack.sqs.send_message(QueueUrl=work_url, MessageBody=body)
        stack.run()

    results = _assert_consistent(stack, stack.only_job_id(), len(urls))
    assert check(urls, results).wrong == []
    assert [line.get("shared_with") for line in results] == [None] * 4 + [0, 1, None, 2]
    assert rows_read == [3]  # one read, by chunk 1, of its three originals' rows (chunk 0 needs none)
    assert sorted(images.requests.values()) == [1] * 5 and sum(inferred) == 5
