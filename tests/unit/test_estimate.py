"""The estimate before a job (issue 18, item 6): the manifest read as the splitter reads it, the
per-line figures from the stack's recent jobs of the same model and fidelity (else the shipped
defaults, named), priced by the same arithmetic as _summary.json's ``compute``."""

from __future__ import annotations

import gzip
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchpredict.cli import main
from batchpredict.cli.client import Client, StackRef
from batchpredict.cli.targets import StackTarget
from batchpredict.costs import compute_summary
from batchpredict.estimate import (
    DEFAULT_MODEL,
    DEFAULTS,
    EXACT,
    SPLIT_SETTINGS,
    TEMPLATE_PARAMETERS,
    ManifestScan,
    StackSettings,
    estimate,
    from_jobs,
    per_line_for,
    scan_manifest,
)
from batchpredict.jobs import Job, JobStatus
from batchpredict.local.template import load_sam
from batchpredict.manifest import MAX_LINE_BYTES
from batchpredict.split import SplitSettings

MODEL = "efficientnet-lite0:1"
GOOD = "https://images.example/a.jpg"


def scan(text: str, key: str = "m.txt", settings: SplitSettings = SPLIT_SETTINGS) -> ManifestScan:
    data = text.encode()
    return scan_manifest(io.BytesIO(gzip.compress(data) if key.endswith(".gz") else data), key, settings)


def finished_job(job_id: str = "job-1", **fields: Any) -> Job:
    """A job of 640 lines: 40 chunks in 20 invocations of 2, 64 s of billed time, 100 s end to end."""
    values: dict[str, Any] = {
        "total": 640,
        "succeeded": 640,
        "chunks_total": 40,
        "chunks_done": 40,
        "split_done": True,
        "model": MODEL,
        "created_at": "2026-12-04T10:00:00.000Z",
        "completed_at": "2026-12-04T10:01:40.000Z",
        "compute_ms": 64_000,
        "compute_mb_ms": 64_000 * 3538,
        "invocations": 20,
        "write_units": 1_200,
    }
    return Job(job_id, JobStatus.COMPLETED, f"s3://in/manifests/{job_id}.txt", **(values | fields))


# --- the manifest, as the splitter sees it ---------------------------------------------------


def test_the_lines_that_would_fail_at_split_are_counted_by_code_with_examples() -> None:
    long_url = "https://images.example/" + "a" * (MAX_LINE_BYTES + 10)
    text = "\n".join(
        [GOOD, "ftp://x/y.jpg", "# a comment", "not a url", "", "https://[::1", long_url, GOOD, "gopher://z"]
    )
    found = scan(text)
    assert found.error is None
    assert found.lines == 7  # the comment and the blank line are no lines
    assert {code: f.count for code, f in found.failing.items()} == {
        "invalid_manifest_line": 2,  # whitespace in the url; the overlong line
        "invalid_url": 1,
        "unsupported_scheme": 2,
    }
    assert found.predicted_lines == 2
    assert found.failing["unsupported_scheme"].examples[0] == (
        "line 2: unsupported scheme 'ftp' (allowed: https, http, s3)"
    )
    assert "'gopher'" in found.failing["unsupported_scheme"].examples[1]


def test_a_manifest_of_no_line_is_a_job_that_ends_at_once() -> None:
    found = estimate(scan("# only a comment\n\n"), DEFAULTS[DEFAULT_MODEL, EXACT], StackSettings())
    assert (found.scan.lines, found.chunks, found.wall_seconds) == (0, 0, 0.0)
    assert found.text().splitlines() == [
        "lines: 0 (0 to predict, 0 would fail)",
        "no line: the job would end COMPLETED at once",
    ]


def test_examples_are_a_few_per_code_however_many_lines_fail() -> None:
    found = scan("ftp://x/y.jpg\n" * 50)
    assert found.failing["unsupported_scheme"].count == 50
    assert len(found.failing["unsupported_scheme"].examples) == 3


def test_every_format_the_splitter_reads_is_read_the_same_way() -> None:
    jsonl = f'{{"url": "{GOOD}"}}\n{{"url": 7}}\n{{"id": "x"}}\n'
    assert scan(jsonl, "m.jsonl").lines == 3 and scan(jsonl, "m.jsonl").predicted_lines == 1
    csv = f"id,url\n1,{GOOD}\n2,mailto:me\n"
    assert {c: f.count for c, f in scan(csv, "m.csv").failing.items()} == {"unsupported_scheme": 1}
    gz = scan(f"{GOOD}\n" * 5, "m.txt.gz")
    assert (gz.lines, gz.predicted_lines, gz.error) == (5, 5, None)


def test_a_manifest_the_split_would_refuse_as_a_whole_says_why() -> None:
    assert "unsupported manifest extension" in (scan(GOOD, "m.pdf").error or "")
    assert "binary" in (scan("\0\0\0", "m.txt").error or "")
    capped = scan(f"{GOOD}\n" * 4, settings=SplitSettings(max_manifest_lines=3))
    assert "more than 3 lines" in (capped.error or "")
    assert "not a valid gzip" in (scan_manifest(io.BytesIO(b"nope"), "m.txt.gz").error or "")


# --- the figures and the arithmetic -------------------------------------------------------------


def test_a_manifest_like_a_finished_job_is_estimated_at_that_jobs_cost_and_time() -> None:
    """The estimate's arithmetic is the summary's: the same lines, the same figures, the same bill."""
    job = finished_job()
    settings = StackSettings(predict_concurrency=20, work_batch_size=2, chunk_size=16, predict_memory_mb=3538)
    per_line = from_jobs([job], settings)
    assert per_line is not None and "job-1" in per_line.source
    found = estimate(scan(f"{GOOD}\n" * 640), per_line, settings, MODEL)
    assert found.compute == compute_summary(640, 40, job.usage)
    assert found.parallel_invocations == 20
    assert found.wall_seconds == pytest.approx(100.0)  # created -> completed


def test_the_wall_time_follows_the_stacks_concurrency_and_the_jobs_size() -> None:
    per_line = from_jobs([finished_job()], StackSettings(predict_concurrency=20, work_batch_size=2))
    assert per_line is not None  # 100 ms a line; 100 s - 64 s / 20 = 96.8 s besides predict
    assert per_line.billed_ms == 100 and per_line.overhead_seconds == pytest.approx(96.8)
    lines = scan(f"{GOOD}\n" * 6400)  # 400 chunks: 200 batches
    wide = estimate(lines, per_line, StackSettings(predict_concurrency=100, work_batch_size=2))
    narrow = estimate(lines, per_line, StackSettings(predict_concurrency=10, work_batch_size=2))
    assert (wide.parallel_invocations, narrow.parallel_invocations) == (100, 10)
    assert wide.wall_seconds == pytest.approx(96.8 + 640 / 100)
    assert narrow.wall_seconds == pytest.approx(96.8 + 640 / 10)
    wide_settings = StackSettings(predict_concurrency=100, work_batch_size=2)
    small = estimate(scan(f"{GOOD}\n" * 40), per_line, wide_settings)
    assert small.parallel_invocations == 2  # 3 chunks, 2 an invocation
    assert wide.compute["predict_gb_seconds"] == narrow.compute["predict_gb_seconds"]


def test_lines_that_fail_at_split_cost_no_predict_time() -> None:
    per_line = DEFAULTS[DEFAULT_MODEL, EXACT]
    half = estimate(scan(f"{GOOD}\nftp://x/y\n" * 100), per_line, StackSettings())  # 200 lines, 100 good
    whole = estimate(scan(f"{GOOD}\n" * 100), per_line, StackSettings())
    assert half.compute["predict_billed_ms"] == whole.compute["predict_billed_ms"]
    # Every line is still written (its FAILED row), and counted in the figures per line.
    assert half.compute["dynamodb_write_units"] == whole.compute["dynamodb_write_units"] * 2


def test_the_figures_are_the_recent_jobs_of_the_same_model_and_fidelity() -> None:
    settings = StackSettings()
    mine = finished_job("job-mine", compute_ms=32_000)
    other_model = finished_job("job-resnet", model="resnet-18:1", compute_ms=999_000)
    fast = replace(finished_job("job-fast", compute_ms=6_400), fidelity="fast") if _has_fidelity() else None
    history = [other_model, mine, *([fast] if fast else [])]
    used = per_line_for(history, MODEL, EXACT, settings)
    assert used.billed_ms == 50 and "job-mine" in used.source and "job-resnet" not in used.source
    unmeasured = finished_job("job-new", compute_ms=0)  # counted before predict measured anything
    assert per_line_for([unmeasured], MODEL, EXACT, settings) == DEFAULTS[MODEL, EXACT]
    assert "shipped defaults" in per_line_for([], MODEL, EXACT, settings).source


def test_a_fidelity_or_model_without_figures_of_its_own_uses_the_nearest_and_says_so() -> None:
    exact = per_line_for([finished_job()], MODEL, "fast", StackSettings())  # the job is exact
    assert exact.billed_ms == DEFAULTS[MODEL, EXACT].billed_ms
    assert "none measured for efficientnet-lite0:1 fast" in exact.source
    other = per_line_for([], "resnet-18:1", EXACT, StackSettings())
    assert f"of {DEFAULT_MODEL} exact" in other.source


def _has_fidelity() -> bool:
    return "fidelity" in Job.__dataclass_fields__


def test_the_settings_default_to_the_templates_parameters() -> None:
    parameters = load_sam()["Parameters"]
    for name, parameter in TEMPLATE_PARAMETERS.items():
        assert getattr(StackSettings(), name) == int(parameters[parameter]["Default"]), parameter
    deployed = StackSettings.from_parameters({"PredictMaxConcurrency": "100", "ChunkSize": "", "Other": "x"})
    assert deployed == StackSettings(predict_concurrency=100)


# --- the client and the command -----------------------------------------------------------------


class FakeHistory:
    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.asked: list[tuple[JobStatus, ...]] = []

    def list_jobs(self, statuses: tuple[JobStatus, ...], **_: Any) -> list[Job]:
        self.asked.append(tuple(statuses))
        return [j for j in self.jobs if j.status in statuses]


class NoUploads:
    def put_object(self, **_: Any) -> None:
        raise AssertionError("a dry run uploads nothing")


def client_with(jobs: list[Job], parameters: dict[str, str] | None = None) -> Client:
    client = Client(StackRef("in", "out", "table", parameters=parameters), s3=NoUploads(), dynamodb=object())  # type: ignore[arg-type]
    client.jobs = FakeHistory(jobs)  # type: ignore[assignment]
    return client


def test_the_client_estimates_from_the_stacks_history_and_uploads_nothing(tmp_path: Path) -> None:
    manifest = tmp_path / "photos.txt"
    manifest.write_text(f"{GOOD}\n" * 640)
    client = client_with([finished_job()], {"PredictMaxConcurrency": "20"})
    found = client.dry_run(manifest)
    assert (found.model, found.fidelity) == (MODEL, EXACT)
    assert found.compute == compute_summary(640, 40, finished_job().usage)
    assert found.settings == StackSettings(predict_concurrency=20)
    assert client.jobs.asked == [(JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_ERRORS)]  # type: ignore[attr-defined]
    fresh = client_with([]).dry_run(manifest)
    assert fresh.model == DEFAULT_MODEL and "shipped defaults" in fresh.per_line.source


def test_submit_dry_run_prints_the_lines_the_failures_and_the_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "photos.txt"
    manifest.write_text(f"{GOOD}\nftp://x/y.jpg\n{GOOD}\n")
    monkeypatch.setattr(StackTarget, "client", lambda self: client_with([finished_job()], {}))
    result = CliRunner().invoke(main, ["submit", str(manifest), "--dry-run", "--stack", "s"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "lines: 3 (2 to predict, 1 would fail)" in out
    assert "unsupported_scheme: 1\n    line 2: unsupported scheme 'ftp'" in out
    assert "recent job(s) of this model and fidelity (job-1)" in out
    assert "estimate at predict concurrency 20" in out and "GB-s 0.691" in out and "wall time" in out
    refused = tmp_path / "photos.pdf"
    refused.write_text(GOOD)
    result = CliRunner().invoke(main, ["submit", str(refused), "--dry-run", "--stack", "s"])
    assert result.exit_code == 1 and "the job would FAIL: unsupported manifest extension" in result.output


def test_a_deployed_stacks_settings_are_its_cloudformation_parameters() -> None:
    class Stacks:
        def describe_stacks(self, StackName: str) -> dict[str, Any]:
            outputs = {"InputBucketName": "in", "OutputBucketName": "out", "ResultsTableName": "t"}
            return {
                "Stacks": [
                    {
                        "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()],
                        "Parameters": [
                            {"ParameterKey": "PredictMaxConcurrency", "ParameterValue": "200"},
                            {"ParameterKey": "PredictMemorySize", "ParameterValue": "5307"},
                            {"ParameterKey": "AlarmEmail", "ParameterValue": ""},
                        ],
                    }
                ]
            }

    ref = StackRef.from_cloudformation("prod", Stacks())  # type: ignore[arg-type]
    client = Client(ref, s3=NoUploads(), dynamodb=object())  # type: ignore[arg-type]
    assert client.settings() == StackSettings(predict_concurrency=200, predict_memory_mb=5307)
