"""The batch pipeline end to end on a moto server: S3 notification -> split -> predict -> finalize."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batchpredict import batch
from batchpredict.handlers import split_manifest
from batchpredict.jobs import JobStore
from batchpredict.messages import ManifestObject
from tests.unit.test_robots import Answer, Host, host

from .conftest import PipelineStack as Stack

__all__ = ["host"]  # the fixture

PHOTOS = ["coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "china.jpg", "flower.jpg"]


def _top1(record: dict[str, Any]) -> str:
    return str(record["predictions"][0]["label"]).split(",")[0]


def _assert_consistent(stack: Stack, job_id: str, total: int) -> list[dict[str, Any]]:
    """results.jsonl, the IMG# rows, the JOB record and _summary.json all tell the same story."""
    lines = stack.results_lines(job_id)
    assert [line["index"] for line in lines] == list(range(total))
    rows = [row.to_json() for row in JobStore(stack.dynamodb, stack.table).query_results(job_id)]
    assert [row["index"] for row in rows] == list(range(total))
    assert rows == lines
    job, summary = stack.job_dict(job_id), stack.summary(job_id)
    succeeded = sum(1 for line in lines if line["status"] == "SUCCEEDED")
    errors = Counter(line["error"]["code"] for line in lines if line["status"] == "FAILED")
    assert (job["total"], job["succeeded"], job["failed"]) == (total, succeeded, total - succeeded)
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (
        total,
        succeeded,
        total - succeeded,
    )
    assert summary["errors_by_code"] == dict(errors)
    assert job["chunks_done"] == job["chunks_total"]
    expected = "COMPLETED" if succeeded == total else "COMPLETED_WITH_ERRORS"
    assert job["status"] == summary["status"] == expected
    assert job["results_uri"] == f"s3://{stack.output_bucket}/results/{job_id}/results.jsonl"
    return lines


def test_mixed_manifest_gives_one_result_per_line(stack: Stack, image_server: str, samples_dir: Path) -> None:
    lines = [{"url": f"{image_server}/{photo}", "id": photo} for photo in PHOTOS]
    lines += [
        {"url": f"s3://{stack.samples_bucket}/photos/coffee.png", "id": "s3-coffee"},
        {"url": f"{image_server}/missing.jpg"},
        {"url": f"{image_server}/notes.txt"},
        {"url": "http://169.254.169.254/latest/meta-data/"},
        {"url": "http://10.1.2.3/cat.jpg"},
        {"url": "ftp://example.com/cat.jpg"},
        {"url": f"s3://{stack.samples_bucket}/photos/absent.png"},
    ]
    body = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n"
    stack.submit("mixed batch.jsonl", body)  # a space: keys arrive URL-encoded
    stack.run()
    job_id = stack.only_job_id()
    results = _assert_consistent(stack, job_id, len(lines) + 1)
    by_id = {r["id"]: r for r in results if r["id"]}
    assert (
        _top1(by_id["coffee.png"]) == "espresso"
        and by_id["coffee.png"]["predictions"][0]["probability"] >= 0.9
    )
    assert {p["label"].split(",")[0] for p in by_id["chelsea.png"]["predictions"][:3]} == {
        "tiger cat",
        "Egyptian cat",
        "tabby",
    }
    assert _top1(by_id["flower.jpg"]) == "daisy"
    assert _top1(by_id["s3-coffee"]) == "espresso"
    coffee = (samples_dir / "coffee.png").read_bytes()
    assert by_id["coffee.png"]["image"] == {
        "width": 600,
        "height": 400,
        "bytes": 466706,
        "sha256": hashlib.sha256(coffee).hexdigest(),
        "format": "png",
    }
    assert by_id["s3-coffee"]["image"] == by_id["coffee.png"]["image"]  # the same bytes over s3://
    assert by_id["rocket.jpg"]["image"]["format"] == "jpeg"
    assert by_id["coffee.png"]["model"] == "efficientnet-lite0:1"
    codes = [r["error"]["code"] if r["error"] else None for r in results[len(PHOTOS) + 1 :]]
    assert codes == [
        "http_error",
        "not_an_image",
        "blocked_address",
        "blocked_address",
        "unsupported_scheme",
        "s3_not_found",
        "invalid_manifest_line",
    ]
    assert stack.job_dict(job_id)["manifest_uri"] == f"s3://{stack.input_bucket}/manifests/mixed batch.jsonl"


def test_duplicate_s3_event_makes_one_job(stack: Stack, image_server: str) -> None:
    stack.submit("dup.txt", "\n".join(f"{image_server}/{p}" for p in PHOTOS))
    # Re-send every notification S3 produced: a duplicate delivery of the same event.
    q_url, _ = stack.queue("ManifestQueue")
    messages = stack.sqs.receive_message(QueueUrl=q_url, MaxNumberOfMessages=10).get("Messages", [])
    assert any("ObjectCreated" in m["Body"] for m in messages)
    for m in messages:
        stack.sqs.send_message(QueueUrl=q_url, MessageBody=m["Body"])
        stack.sqs.send_message(QueueUrl=q_url, MessageBody=m["Body"])
        stack.sqs.delete_message(QueueUrl=q_url, ReceiptHandle=m["ReceiptHandle"])
    stack.run()
    job_id = stack.only_job_id()
    _assert_consistent(stack, job_id, len(PHOTOS))
    assert stack.job_dict(job_id)["status"] == "COMPLETED"


def test_redelivered_chunks_are_counted_once(stack: Stack, image_server: str) -> None:
    stack.submit(
        "twice.csv", "url,id,colour\n" + "".join(f"{image_server}/{p},{p},red\n" for p in PHOTOS * 2)
    )
    stack.deliver("ManifestQueue", split_manifest.lambda_handler)
    # Every chunk message twice, as SQS at-least-once delivery may do.
    work_url, _ = stack.queue("WorkQueue")
    messages = stack.sqs.receive_message(QueueUrl=work_url, MaxNumberOfMessages=10).get("Messages", [])
    assert len(messages) == 3  # 12 lines in chunks of 4
    for m in messages:
        stack.sqs.send_message(QueueUrl=work_url, MessageBody=m["Body"])
    stack.run()
    job_id = stack.only_job_id()
    results = _assert_consistent(stack, job_id, 12)
    assert results[0]["metadata"] == {"colour": "red"}
    assert stack.job_dict(job_id)["chunks_done"] == 3


def test_dead_lettered_chunk_is_reconciled(
    stack: Stack, image_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchpredict.writer import ChunkWriter

    real_write = ChunkWriter.write

    def flaky_write(
        self: ChunkWriter, chunk: Any, records: Any, model: Any, *args: Any, **kwargs: Any
    ) -> bool:
        if chunk.chunk == 1 and model is not None:  # predict's writes fail; reconcile's (model None) work
            raise RuntimeError("simulated DynamoDB outage for chunk 1")
        return real_write(self, chunk, records, model, *args, **kwargs)

    monkeypatch.setattr(ChunkWriter, "write", flaky_write)
    # A failed chunk waits a delay growing with its receives (tests/unit/test_refill.py): here 1 s.
    monkeypatch.setattr(batch, "retry_delay", lambda receive_count, step: 1)
    stack.submit("dlq.txt", "\n".join(f"{image_server}/{p}" for p in PHOTOS * 2))
    stack.run()  # chunk 1 fails maxReceiveCount (10) times, is redriven to the DLQ, and reconciled
    job_id = stack.only_job_id()
    results = _assert_consistent(stack, job_id, 12)
    assert [r["error"]["code"] for r in results if r["error"]] == ["dead_lettered"] * 4
    assert [r["index"] for r in results if r["error"]] == [4, 5, 6, 7]
    assert stack.summary(job_id)["errors_by_code"] == {"dead_lettered": 4}


def test_long_manifest_is_split_over_several_invocations(
    stack: Stack, image_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reserve larger than any invocation's time: hand over after every SendMessageBatch.
    monkeypatch.setenv("SPLIT_TIME_RESERVE_MS", str(10**9))
    monkeypatch.setenv("CHUNK_SIZE", "2")
    lines = [f"{image_server}/{PHOTOS[i % len(PHOTOS)]}" for i in range(45)]
    stack.submit("long.txt.gz", gzip.compress("\n".join(lines).encode()))
    stack.run()
    job_id = stack.only_job_id()
    _assert_consistent(stack, job_id, 45)
    job = stack.job_dict(job_id)
    assert job["chunks_total"] == 23
    assert job["position"]["index"] == 40  # the last checkpoint: after 2 hand-overs of 10 chunks


def test_unreadable_manifest_fails_the_job_with_a_reason(stack: Stack) -> None:
    stack.submit("photo.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00binary")
    stack.run()
    job_id = stack.only_job_id()
    job, summary = stack.job_dict(job_id), stack.summary(job_id)
    assert job["status"] == summary["status"] == "FAILED"
    assert "binary" in job["error"] and summary["error"] == job["error"]


def test_empty_manifest_completes_with_no_lines(stack: Stack) -> None:
    stack.submit("empty.txt", "# nothing to do\n\n")
    stack.run()
    job_id = stack.only_job_id()
    assert stack.results_lines(job_id) == []
    assert stack.job_dict(job_id)["status"] == "COMPLETED"


def test_job_id_is_deterministic() -> None:
    a = ManifestObject("bucket", "manifests/a.txt", "v1", '"etag"')
    assert a.job_id == ManifestObject("bucket", "manifests/a.txt", "v1", '"etag"').job_id
    assert a.job_id != ManifestObject("bucket", "manifests/a.txt", "v2", '"etag"').job_id


def test_local_queues_take_the_templates_visibility_rule_and_the_pollers_know_it(stack: Stack) -> None:
    # Timeouts capped at 0.2 s here. The work and finalize queues' visibility is their consumer's
    # timeout (+ the window), as the template has it; the manifest queue keeps the template's 6x.
    expected = {"WorkQueue": 2, "FinalizeQueue": 1, "ManifestQueue": 2}  # ceil(0.2 + 1), 0.2, 6 x 0.2
    visibility = {
        name: int(
            stack.sqs.get_queue_attributes(
                QueueUrl=stack.queue(name)[0], AttributeNames=["VisibilityTimeout"]
            )["Attributes"]["VisibilityTimeout"]
        )
        for name in expected
    }
    assert visibility == expected
    # Each worker's poller is told its queue's, to hand its batch over (lambda_shim.deliver_once).
    by_url = {stack.queue(name)[0]: name for name in expected}
    assert {
        by_url[m.queue_url]: m.visibility_seconds for m in stack.plan.mappings if m.queue_url in by_url
    } == expected


def test_a_job_honours_x_robots_tag_unless_it_says_ignore(
    stack: Stack, host: Host, samples_dir: Path
) -> None:
    photo = (samples_dir / "coffee.png").read_bytes()
    headers = [("X-Robots-Tag", "otherbot: none"), ("X-Robots-Tag", "noindex, NoImageAI")]
    host.answer("/mine.png", Answer(body=photo, headers=headers))
    host.answer("/open.png", Answer(body=photo, headers=[("X-Robots-Tag", "otherbot: noai")]))
    manifest = f"{host.url('/mine.png')}\n{host.url('/open.png')}\n"
    for key, metadata in (("honour.txt", {}), ("ignore.txt", {"robots": "ignore"})):
        stack.s3.put_object(
            Bucket=stack.input_bucket, Key=f"manifests/{key}", Body=manifest.encode(), Metadata=metadata
        )
    stack.run()

    outcomes = {}
    for job in JobStore(stack.dynamodb, stack.table).list_jobs():
        lines = _assert_consistent(stack, job.job_id, 2)
        outcomes[job.manifest_uri.rsplit("/", 1)[1]] = [
            line["error"] and line["error"]["code"] for line in lines
        ]
    assert outcomes == {"honour.txt": ["robots_disallowed", None], "ignore.txt": [None, None]}
    assert host.paths().count("/mine.png") == 2  # asked once by each job, never retried
