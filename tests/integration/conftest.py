"""A real moto server on loopback (started and stopped here), a fresh stack per test, an
image server on loopback, and the synchronous driver of the local stack."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from batchpredict.local.provision import LocalOptions, provision_from_template
from batchpredict.local.servers import FileServer, MotoServer
from batchpredict.local.stack import Stack, clear_handler_caches
from tests.aws_env import dummy_aws


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = MotoServer()
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def image_server(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The sample photos (and a text file) over HTTP on 127.0.0.1; anything else is a 404."""
    root = tmp_path_factory.mktemp("www")
    for photo in samples_dir.iterdir():
        shutil.copy(photo, root / photo.name)
    (root / "notes.txt").write_text("this is not an image")
    server = FileServer(root)
    yield server.start()
    server.stop()


RUN_REDRAINS = 3


class PipelineStack(Stack):
    """The local stack plus the read helpers the tests share."""

    samples_bucket: str = ""

    def run(self, max_seconds: float = 120.0) -> None:
        """Drain the queues; if a job is still open once they are empty (a message between
        queues, e.g. a redrive to a dead-letter queue, as the depths were read), drain again a
        few times, a second apart."""
        self.drain(max_seconds=max_seconds)
        for _ in range(RUN_REDRAINS):
            if not self._open_jobs():
                return
            time.sleep(1.0)
            self.drain(max_seconds=max_seconds)

    def _open_jobs(self) -> list[str]:
        items = self.dynamodb.scan(
            TableName=self.table, FilterExpression="sk = :j", ExpressionAttributeValues={":j": {"S": "JOB"}}
        )["Items"]
        final = {"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELLED"}
        return [str(i["pk"]["S"]) for i in items if i.get("status", {}).get("S") not in final]

    def job_dict(self, job_id: str) -> dict[str, Any]:
        return self.job(job_id).as_dict()

    def only_job_id(self) -> str:
        items = self.dynamodb.scan(
            TableName=self.table, FilterExpression="sk = :j", ExpressionAttributeValues={":j": {"S": "JOB"}}
        )["Items"]
        assert len(items) == 1, f"expected one job, found {len(items)}"
        return str(items[0]["pk"]["S"])

    def results_lines(self, job_id: str) -> list[dict[str, Any]]:
        body = self.s3.get_object(Bucket=self.output_bucket, Key=f"results/{job_id}/results.jsonl")["Body"]
        return [json.loads(line) for line in body.read().splitlines()]

    def summary(self, job_id: str) -> dict[str, Any]:
        body = self.s3.get_object(Bucket=self.output_bucket, Key=f"results/{job_id}/_summary.json")["Body"]
        return json.loads(body.read())  # type: ignore[no-any-return]


@pytest.fixture
def moto_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This process's boto3 pointed at the moto server, with test credentials."""
    dummy_aws(monkeypatch, moto_endpoint)
    return moto_endpoint


@pytest.fixture
def stack(
    moto_env: str, bundle_dir: Path, samples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PipelineStack]:
    """Buckets, queues (with dead-letter queues), table and handler settings, unique to the test."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    s3, sqs, dynamodb = boto3.client("s3"), boto3.client("sqs"), boto3.client("dynamodb")
    # Provisioned from the SAM template, as the local stack is. A 0.2 s function timeout gives
    # visibility timeouts of 2-3 s by the template's rule, which keeps the redelivery tests fast.
    options = LocalOptions(
        model_uri=str(bundle_dir),
        prefix=prefix,
        max_function_timeout=0.2,
        # These tests start image servers on 127.0.0.1 ports of their own (moto shares the address;
        # test_fetch shows a port-level entry keeps it out).
        allowed_networks="127.0.0.1",
        # Both lists: the in-process driver runs every function under one merged environment.
        parameters={"ChunkSize": "4"}
        | dict.fromkeys(("ImageSourcePrefixes", "ApiImageSourcePrefixes"), f"s3://{prefix}-samples/photos/"),
        environment={
            "MAX_BATCH": "16",
            "FETCH_BACKOFF_SECONDS": "0.05",
            "FETCH_READ_TIMEOUT": "5",
            "POWERTOOLS_METRICS_NAMESPACE": "batchpredict-test",
            # The test image servers take any rate: paced at the default 10 a second, a job's
            # lines would wait for their turns, and an invocation's refill would take in every
            # chunk of a small job before a stop could keep any from being fetched (the job
            # control tests). Politeness has tests of its own (test_host_politeness.py).
            "HOST_RPS": "1000",
        },
    )
    stack = PipelineStack(s3, sqs, dynamodb, provision_from_template(s3, sqs, dynamodb, options))
    stack.samples_bucket = f"{prefix}-samples"
    stack.s3.create_bucket(Bucket=stack.samples_bucket)
    for photo in samples_dir.iterdir():
        stack.s3.upload_file(str(photo), stack.samples_bucket, f"photos/{photo.name}")
    settings = stack.environment()
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    clear_handler_caches()
    yield stack
    clear_handler_caches()
