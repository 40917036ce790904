"""Dedupe end to end on a moto server (issue 19, must show): 1,000 manifest lines over 100
distinct URLs, in several spellings of each, make 100 requests (counted at the image server) and
100 inferences (counted at the engine); every line has its result, in order, with its original's
predictions, naming the line whose fetch it shares. The table is DynamoDB Local's when it can
start (moto's DynamoDB copies the whole table in every transaction: 40 chunks of a 1,000-row
table took ~10 s); benchmarks/dedupe.py runs the same job on the embedded local stack (worker
processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from benchmarks.dedupe import CountingImageServer, check, dedupe_manifest, distinct_photos

from batchpredict import batch
from batchpredict.jobs import JobStore
from batchpredict.local.dynamodb_local import DynamoDBLocal, DynamoDBLocalUnavailableError
from batchpredict.model import Engine

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
def images(samples_dir: Path, tmp_path: Path) -> Iterator[CountingImageServer]:
    distinct_photos(samples_dir, tmp_path, DISTINCT)
    server = CountingImageServer(tmp_path)
    server.start()
    yield server
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
    images: CountingImageServer,
    inferred: list[int],
    rows_read: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHUNK_SIZE", "25")  # 40 chunks over a few predict invocations
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
    assert tally.wrong == []  # in order, own URL, SUCCEEDED, the original's predictions and image
    assert (tally.lines, tally.distinct, tally.shared) == (LINES, DISTINCT, LINES - DISTINCT)
    assert sorted(images.requests.values()) == [1] * DISTINCT  # each image fetched once
    assert sum(inferred) == DISTINCT == tally.own_inference
    # Both ways were taken: duplicates whose original was in the same invocation, and copies of
    # an original's row written by an earlier one.
    assert 0 < sum(rows_read) < LINES - DISTINCT
