"""A real moto server on loopback (started and stopped here), a fresh stack per test, an
image server on loopback, and a driver that plays Lambda's SQS event-source mappings."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from batchpredict.handlers import finalize, predict, reconcile, split_manifest
from batchpredict.local.lambda_shim import deliver_once

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def image_server(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The sample photos (and a text file) over HTTP on 127.0.0.1; anything else is a 404."""
    root = tmp_path_factory.mktemp("www")
    for photo in samples_dir.iterdir():
        shutil.copy(photo, root / photo.name)
    (root / "notes.txt").write_text("this is not an image")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@dataclass
class Queue:
    url: str
    arn: str


@dataclass
class Stack:
    s3: Any
    sqs: Any
    dynamodb: Any
    input_bucket: str
    output_bucket: str
    samples_bucket: str
    table: str
    queues: dict[str, Queue] = field(default_factory=dict)

    def submit(self, name: str, body: bytes | str) -> None:
        self.s3.put_object(
            Bucket=self.input_bucket,
            Key=f"manifests/{name}",
            Body=body.encode() if isinstance(body, str) else body,
        )

    def job(self, job_id: str) -> dict[str, Any]:
        from batchpredict.jobs import JobStore

        job = JobStore(self.dynamodb, self.table).get(job_id)
        assert job is not None, f"no job {job_id}"
        return job.as_dict()

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

    def depth(self, name: str) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queues[name].url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def deliver(self, name: str, handler: Callable[..., Any], batch_size: int = 10) -> int:
        q = self.queues[name]
        return deliver_once(self.sqs, q.url, q.arn, handler, function_name=name, batch_size=batch_size)

    def run(self, max_seconds: float = 120.0) -> None:
        """Drive every mapping until all queues are empty (messages in flight included)."""
        mappings = [
            ("manifest", split_manifest.lambda_handler),
            ("work", predict.lambda_handler),
            ("finalize", finalize.lambda_handler),
            ("work-dlq", reconcile.lambda_handler),
        ]
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            delivered = sum(self.deliver(name, handler) for name, handler in mappings)
            if not delivered:
                if not any(self.depth(name) for name, _ in mappings):
                    return
                time.sleep(0.2)  # messages in flight come back after their visibility timeout
        raise AssertionError("the pipeline did not drain in time")


def _clear_handler_caches() -> None:
    split_manifest.splitter.cache_clear()
    predict.service.cache_clear()
    finalize.finalizer.cache_clear()
    reconcile.writer.cache_clear()


@pytest.fixture
def stack(
    moto_endpoint: str, bundle_dir: Path, samples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    """Buckets, queues (with dead-letter queues), table and handler settings, unique to the test."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    suffix = uuid.uuid4().hex[:8]
    s3, sqs, ddb = boto3.client("s3"), boto3.client("sqs"), boto3.client("dynamodb")
    stack = Stack(s3, sqs, ddb, f"input-{suffix}", f"output-{suffix}", f"samples-{suffix}", f"table-{suffix}")
    for name in ("manifest", "work", "finalize"):
        dlq = sqs.create_queue(QueueName=f"{name}-dlq-{suffix}")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        stack.queues[f"{name}-dlq"] = Queue(dlq, dlq_arn)
        url = sqs.create_queue(
            QueueName=f"{name}-{suffix}",
            Attributes={
                "VisibilityTimeout": "1",
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
            },
        )["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        stack.queues[name] = Queue(url, arn)
    for bucket in (stack.input_bucket, stack.output_bucket, stack.samples_bucket):
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(
        Bucket=stack.input_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": stack.queues["manifest"].arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "manifests/"}]}},
                }
            ]
        },
    )
    for photo in samples_dir.iterdir():
        s3.upload_file(str(photo), stack.samples_bucket, f"photos/{photo.name}")
    ddb.create_table(
        TableName=stack.table,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    )
    settings = {
        "TABLE_NAME": stack.table,
        "OUTPUT_BUCKET": stack.output_bucket,
        "WORK_QUEUE_URL": stack.queues["work"].url,
        "MANIFEST_QUEUE_URL": stack.queues["manifest"].url,
        "FINALIZE_QUEUE_URL": stack.queues["finalize"].url,
        "MODEL_URI": str(bundle_dir),
        "ALLOWED_NETWORKS": "127.0.0.0/8",
        "CHUNK_SIZE": "4",
        "MAX_BATCH": "16",
        "FETCH_BACKOFF_SECONDS": "0.05",
        "FETCH_READ_TIMEOUT": "5",
        "POWERTOOLS_METRICS_NAMESPACE": "batchpredict-test",
        "POWERTOOLS_SERVICE_NAME": "batchpredict",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    _clear_handler_caches()
    yield stack
    _clear_handler_caches()
