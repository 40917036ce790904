"""End to end through the CLI against the embedded local stack (moto server, DynamoDB Local,
worker processes provisioned from the SAM template)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

from batchpredict.cli.client import Client
from tests.e2e.conftest import PHOTOS


def test_submit_watch_results_report(run_cli, photos_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    manifest = tmp_path / "photos.csv"
    manifest.write_text(
        "url,id\n" + "".join(f"{photos_url}/{p},{p}\n" for p in PHOTOS) + f"{photos_url}/missing.jpg,gone\n"
    )
    submitted = run_cli("submit", str(manifest), "--wait")
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.splitlines()[0]
    assert job_id.startswith("job-")

    status = run_cli("status", job_id)
    assert "COMPLETED_WITH_ERRORS" in status.stdout and "succeeded  6" in status.stdout

    table = run_cli("results", job_id, "--output", "table")
    assert "espresso" in table.stdout and "http_error" in table.stdout
    rows = [json.loads(line) for line in run_cli("results", job_id, "--from-table").stdout.splitlines()]
    lines = [json.loads(line) for line in run_cli("results", job_id).stdout.splitlines()]
    assert rows == lines and [r["index"] for r in rows] == list(range(7))
    failed = run_cli("results", job_id, "--failed-only", "--output", "csv").stdout.splitlines()
    assert len(failed) == 2 and failed[1].startswith("6,gone,")

    report = tmp_path / "report.html"
    assert run_cli("report", job_id, "-o", str(report)).exit_code == 0
    html = report.read_text()
    assert html.count("data:image/jpeg;base64,") == 6 and "http_error" in html

    assert job_id in run_cli("jobs").stdout
    retried = run_cli("retry-failed", job_id, "--wait")
    assert retried.exit_code == 0, retried.output
    new_id = retried.stdout.splitlines()[0]
    assert "1 failed lines resubmitted" in retried.output
    assert "COMPLETED_WITH_ERRORS" in run_cli("status", new_id).stdout


def test_unknown_job_and_manifest_are_one_line_errors(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing_job = run_cli("status", "job-doesnotexist")
    assert missing_job.exit_code == 1 and "job job-doesnotexist not found" in missing_job.output
    missing_manifest = run_cli("submit", str(tmp_path / "nope.jsonl"))
    assert missing_manifest.exit_code == 1 and "manifest not found" in missing_manifest.output
    assert "Traceback" not in missing_job.output + missing_manifest.output


def test_a_predict_worker_killed_mid_job_costs_no_line_and_counts_none_twice(local_stack, photo_job) -> None:  # type: ignore[no-untyped-def]
    # 15 chunks of 16 in invocations of 2: the victim is killed once a first chunk is counted,
    # with most of the job still to run. Its chunks come back by visibility timeout, to be
    # written again and counted once. (Throughput: benchmarks/local_stack_throughput.py.)
    stack, _ = local_stack
    total = 240
    client, job_id = photo_job("lines.txt", total)
    killed = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if job.status.value.startswith("COMPLETED"):
            break
        if killed is None and job.succeeded + job.failed > 0:
            victim = stack.runner.workers["PredictFunction"][0]
            os.kill(victim.pid, signal.SIGKILL)
            killed = victim.pid
        time.sleep(0.2)
    assert killed is not None, "the job finished before a worker could be killed"
    assert stack.runner.replaced >= 1
    job = client.job(job_id)
    assert job.status.value == "COMPLETED", job
    lines = list(client.result_lines(job_id))
    assert [r.index for r in lines] == list(range(total))  # every line once, in order, no duplicates
    assert Counter(r.status for r in lines) == {"SUCCEEDED": total}
    summary = client.summary(job_id)
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (total, total, 0)
    assert (job.total, job.succeeded, job.failed, job.chunks_done) == (total, total, 0, job.chunks_total)
    rows = list(client.result_lines(job_id, from_table=True))
    assert len(rows) == total and {r.index for r in rows} == set(range(total))


FORMATS = {
    ".jsonl": lambda url: (
        f'{{"url": "{url}/coffee.png", "id": "a"}}\n{{"url": "{url}/rocket.jpg", "id": "b"}}\n'
    ),
    ".csv": lambda url: f"url,id\n{url}/coffee.png,a\n{url}/rocket.jpg,b\n",
    ".txt": lambda url: f"# two photos\n{url}/coffee.png\n\n{url}/rocket.jpg\n",
}


def test_submit_every_manifest_format_plain_and_gzipped(run_cli, photos_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    submitted = {}
    for suffix, body in FORMATS.items():
        for gz in ("", ".gz"):
            manifest = tmp_path / f"formats{suffix}{gz}"
            data = body(photos_url).encode()
            manifest.write_bytes(gzip.compress(data) if gz else data)
            result = run_cli("submit", str(manifest))
            assert result.exit_code == 0, result.output
            submitted[manifest.name] = result.stdout.strip()
    assert len(set(submitted.values())) == 6
    for name, job_id in submitted.items():
        assert run_cli("watch", job_id).exit_code == 0
        lines = [
            json.loads(line) for line in run_cli("results", job_id, "--output", "json").stdout.splitlines()
        ]
        assert [(r["index"], r["status"]) for r in lines] == [(0, "SUCCEEDED"), (1, "SUCCEEDED")], name
        assert [r["predictions"][0]["label"] for r in lines] == ["espresso", "missile"], name
        if not name.startswith("formats.txt"):
            assert [r["id"] for r in lines] == ["a", "b"], name


def test_the_chaos_benchmark_kills_workers_and_every_line_stays_exactly_once(  # type: ignore[no-untyped-def]
    local_stack, photos_url: str, tmp_path: Path
) -> None:
    # benchmarks/chaos.py's leg, small: 2 predict or finalize workers killed by SIGKILL in the
    # first 2 s of a 160-line job. What it reads back is what the benchmark reports on.
    from benchmarks.chaos import chaos_job

    stack, ref = local_stack
    total = 160
    manifest = tmp_path / "chaos.txt"
    manifest.write_text("".join(f"{photos_url}/{PHOTOS[i % len(PHOTOS)]}?chaos={i}\n" for i in range(total)))

    result = chaos_job(stack, Client(ref), manifest, total, kills=2, within=2.0, seed=1, timeout=600)

    assert [k["function"] in {"PredictFunction", "FinalizeFunction"} for k in result["kills"]] == [True, True]
    assert result["replaced"] >= 2
    assert (result["status"], result["lines"], result["rows"]) == ("COMPLETED", total, total)
    assert result["lines_in_order"] and result["rows_once"] and result["counted"]
    assert result["exactly_once"] and result["codes"] == {"SUCCEEDED": total}
    assert 0 < result["counted_at"] <= result["wall"]  # predict's part, then finalize's
