"""Steering jobs through the CLI on the embedded local stack (DynamoDB Local, moto's S3, SQS
and EventBridge, worker processes): options, listing, cancel mid-job, events."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batchpredict import aws
from batchpredict.cli.client import Client
from batchpredict.messages import ManifestObject

pytestmark = pytest.mark.integration


def test_options_listing_and_events_through_the_cli(run_cli, photos_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_cli("watch", "--events", "--idle", "1")  # drop the events of earlier tests
    manifest = tmp_path / "tagged.txt"
    manifest.write_text(f"{photos_url}/coffee.png\n{photos_url}/missing.jpg\n")
    bad = run_cli("submit", str(manifest), "--max-failures", "lots")
    assert bad.exit_code == 1 and "max-failures='lots'" in bad.output  # refused before uploading
    submitted = run_cli(
        "submit", str(manifest), "--key", "nightly.txt", "--name", "nightly", "--tag", "team=vision",
        "--top-k", "2", "--max-failures", "10%", "--wait",
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.splitlines()[0]
    status = run_cli("status", job_id).stdout
    assert "nightly" in status and "team=vision" in status and "top-k=2 max-failures=10%" in status
    lines = [json.loads(line) for line in run_cli("results", job_id).stdout.splitlines()]
    assert len(lines[0]["predictions"]) == 2
    listed = run_cli(
        "jobs", "--name", "nightly", "--status", "completed_with_errors", "--since", "1h", "--output", "text"
    ).stdout
    assert listed.splitlines()[0].startswith(job_id)
    assert run_cli("jobs", "--status", "CANCELLED", "--name", "nightly", "--output", "text").stdout == ""
    ref = run_cli(
        "jobs", "--manifest", "s3://e2e-inputbucket/manifests/nightly.txt", "--output", "text"
    ).stdout
    assert ref.startswith(job_id)
    again = run_cli("cancel", job_id)
    assert again.exit_code == 1 and "is COMPLETED_WITH_ERRORS: only SPLITTING or RUNNING" in again.output
    events = [json.loads(line) for line in run_cli("watch", "--events", "--idle", "1").stdout.splitlines()]
    assert [(e["detail"]["job_id"], e["detail"]["status"]) for e in events] == [
        (job_id, "COMPLETED_WITH_ERRORS")
    ]
    assert events[0]["detail"]["name"] == "nightly" and events[0]["detail"]["tags"] == {"team": "vision"}


def test_cancel_mid_job_on_the_local_stack(run_cli, local_stack, photo_job) -> None:  # type: ignore[no-untyped-def]
    stack, _ = local_stack
    total = 480
    client, job_id = photo_job("long.txt", total)
    deadline = time.monotonic() + 300
    while client.job(job_id).succeeded < 32 and time.monotonic() < deadline:
        time.sleep(0.2)
    # The cancel's own conditional update returns the counts at that moment (the CLI's `cancel`
    # makes the same call, after starting a process and a session).
    done_at_cancel = client.cancel(job_id).succeeded
    # What the predict invocations running at the cancel may still finish: each worker's batch
    # (the template's WorkBatchSize chunks of 16; no refill fits the 5 s timeout of these tests).
    (predict,) = [m for m in stack.runner.mappings if m.function == "PredictFunction"]
    in_flight = len(stack.runner.workers["PredictFunction"]) * predict.batch_size * 16
    followed = run_cli("watch", job_id)
    assert followed.exit_code == 0 and "CANCELLED" in followed.output, followed.output
    job = client.job(job_id)
    assert job.status.value == "CANCELLED"
    lines = list(client.result_lines(job_id))
    assert [r.index for r in lines] == list(range(total))  # every line once, in order
    rows = list(client.result_lines(job_id, from_table=True))
    assert rows == lines
    codes = Counter(r.error.code if r.error else "ok" for r in lines)
    assert codes["cancelled"] > 0 and set(codes) <= {"ok", "cancelled"}
    assert (job.succeeded, job.failed) == (codes["ok"], codes["cancelled"])
    # Images/s drops to zero within one invocation: after the cancel only the batches already in
    # the running invocations were predicted (the moto stack's test shows not one fetch after it).
    assert codes["ok"] - done_at_cancel <= in_flight < total - done_at_cancel
    print(f"\ncancel mid-job: {done_at_cancel} done at the cancel, {codes['ok']} in all, of {total}")


def _events_of(run_cli, job_id: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    lines = run_cli("watch", "--events", "--idle", "1").stdout.splitlines()
    return [e["detail"] for e in map(json.loads, lines) if e["detail"]["job_id"] == job_id]


def test_a_job_its_split_left_splitting_ends_failed_from_the_dead_letter_queue(run_cli, local_stack) -> None:  # type: ignore[no-untyped-def]
    stack, ref = local_stack
    client = Client(ref)
    # What a split that dies right after creating its job leaves, delivery after delivery: the
    # JOB SPLITTING for ever (before reconcile read this queue), and the S3 event moved by SQS
    # to the manifest dead-letter queue.
    manifest = ManifestObject(ref.input_bucket, "manifests/crashed.txt", "v-crash", "e-crash")
    assert client.jobs.create(manifest.job_id, manifest.uri, "m-crash", manifest_version="v-crash")
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": manifest.bucket},
                    "object": {"key": manifest.key, "versionId": "v-crash", "eTag": "e-crash"},
                },
            }
        ]
    }
    dead_letters, _ = stack.plan.queues["ManifestDeadLetterQueue"]
    aws.client("sqs").send_message(QueueUrl=dead_letters, MessageBody=json.dumps(event))

    job = client.watch(manifest.job_id, lambda _: None, timeout=60)  # reconcile's worker polls every second

    assert (
        job.status.value == "FAILED"
        and job.error is not None
        and job.error.startswith(
            f"manifest {manifest.uri} could not be split: split_manifest failed on every delivery"
        )
    )
    summary = client.summary(manifest.job_id)
    assert (summary["status"], summary["error"]) == ("FAILED", job.error)
    assert [(e["status"], e["reason"]) for e in _events_of(run_cli, manifest.job_id)] == [
        ("FAILED", job.error)
    ]


def test_a_job_past_its_timeout_ends_failed_timed_out_by_the_sweeper(  # type: ignore[no-untyped-def]
    run_cli, local_stack, tarpit_url: str, tmp_path: Path
) -> None:
    # Last in this module: its hanging fetches hold predict's fetch threads a while after.
    manifest = tmp_path / "hangs.txt"
    manifest.write_text("".join(f"{tarpit_url}/never-{n}.jpg\n" for n in range(4)))
    started = time.monotonic()

    submitted = run_cli("submit", str(manifest), "--timeout", "10")
    job_id = submitted.stdout.splitlines()[0]
    client = Client(local_stack[1])

    job = client.watch(job_id, lambda _: None, timeout=90)  # the sweeper runs every 3 s locally

    assert job.status.value == "FAILED" and job.error is not None
    assert (
        job.error.startswith("timed_out: still RUNNING at its deadline")
        and "(its timeout of 10 s)" in job.error
    )
    summary = client.summary(job_id)
    assert (summary["status"], summary["error"]) == ("FAILED", job.error)
    assert [e["status"] for e in _events_of(run_cli, job_id)] == ["FAILED"]
    print(f"\ntimed out: {time.monotonic() - started:.1f} s after its submit, for a timeout of 10 s")
