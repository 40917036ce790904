"""`submit --dry-run` against the real job on the embedded local stack (issue 18, item 6): the
lines and failures it reads are those the job's summary counts; its figures come from the shipped
defaults on a stack with no finished job, and from that job once it has ended. The GB-s and wall
time it estimated are printed beside the job's measured ones (`pytest -s`), not asserted: they are
timings (benchmarks/estimate_accuracy.py measures them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchpredict.cli.client import Client, StackRef
from batchpredict.local.stack import LocalStack
from tests.e2e.conftest import PHOTOS


def test_the_dry_run_reads_the_manifest_as_the_job_does_and_learns_from_it(  # type: ignore[no-untyped-def]
    run_cli, local_stack: tuple[LocalStack, StackRef], photos_url: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "estimated.txt"
    good = [f"{photos_url}/{PHOTOS[i % len(PHOTOS)]}?estimate={i}" for i in range(40)]
    manifest.write_text("\n".join([*good[:20], "ftp://example.com/a.jpg", "not a url", *good[20:]]) + "\n")
    client = Client(local_stack[1])

    printed = run_cli("submit", str(manifest), "--dry-run")
    assert printed.exit_code == 0, printed.output
    assert "lines: 42 (40 to predict, 2 would fail)" in printed.output
    assert "shipped defaults" in printed.output  # this module's stack has run no job yet
    before = client.dry_run(manifest)
    assert client.jobs.list_jobs() == []  # nothing was uploaded

    job_id = run_cli("submit", str(manifest), "--wait").stdout.splitlines()[0]
    summary = client.summary(job_id)
    assert summary["total"] == before.scan.lines == 42
    split_codes = {c: n for c, n in summary["errors_by_code"].items() if c in before.scan.failing}
    assert split_codes == {code: f.count for code, f in before.scan.failing.items()}
    assert split_codes == {"unsupported_scheme": 1, "invalid_manifest_line": 1}

    after = client.dry_run(manifest)
    assert job_id in after.per_line.source
    # Write units are figured per line over every line: the same manifest costs the job's own.
    assert after.compute["dynamodb_write_units"] == summary["compute"]["dynamodb_write_units"]
    for name, found in (("defaults", before), ("the job", after)):
        report(name, found.compute, found.wall_seconds, summary)
    print(run_cli("submit", str(manifest), "--dry-run").output)


def report(name: str, compute: dict[str, Any], wall: float, summary: dict[str, Any]) -> None:
    measured = summary["compute"]["predict_gb_seconds"]
    print(
        f"\nestimate from {name}: GB-s {compute['predict_gb_seconds']} (job {measured}), "
        f"wall {wall:.1f} s (job {summary['duration_seconds']} s)"
    )
