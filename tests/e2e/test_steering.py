"""Steering jobs through the CLI on the embedded local stack (DynamoDB Local, moto's S3, SQS
and EventBridge, worker processes): options, listing, cancel mid-job, events."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

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
    # What the predict invocations running at the cancel may still finish: each worker's batch.
    in_flight = len(stack.runner.workers["PredictFunction"]) * 2 * 16
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
