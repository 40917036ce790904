"""Every script in benchmarks/ runs, tiny, as a user would start it (issue 18, item 7): a change
of the contracts a benchmark uses breaks this test, not the next measurement. Each asserts what
the script prints, a few seconds each. No figure is asserted: these are runs, not measurements.

Elsewhere: chaos.py (tests/e2e/test_local_stack.py runs its chaos_job), report_shim
(tests/unit/test_bench_report_shim.py), fidelity_agreement.py (test_fidelity_benchmark.py),
politeness.py (tests/e2e/test_politeness_smoke.py: it starts the local stack);
local_stack_throughput.py and model_throughput.py get theirs with the work of issue 18 that
changes them, fairness.py in tests/e2e/test_fairness_smoke.py (it needs the local stack)
(SMOKED_ELSEWHERE).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.aws_env import DUMMY_CREDENTIALS, LEAKS

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
SMOKED_ELSEWHERE = {
    "chaos.py",
    "fairness.py",
    "fidelity_agreement.py",
    "local_stack_throughput.py",
    "model_throughput.py",
    "politeness.py",
}


def bench(script: str, *args: str, timeout: float = 120) -> str:
    """Run ``benchmarks/<script> args`` in a fresh interpreter with the repo's packages on its path
    and nothing of the test process's AWS settings; its stdout (it must exit 0)."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKS} | DUMMY_CREDENTIALS
    paths = [ROOT / "functions", ROOT / "infrastructure" / "model", ROOT]
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")])
    env["POWERTOOLS_LOG_LEVEL"] = "WARNING"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        env=env,
        cwd=ROOT,
        check=False,  # the output is shown when it fails
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout


def test_every_benchmark_script_has_a_smoke_run() -> None:
    """A new script in benchmarks/ gets a smoke here (or names where it has one)."""
    smoked = set(re.findall(r'bench\(\s*"([\w.]+)"', Path(__file__).read_text()))
    scripts = {p.name for p in BENCHMARKS.glob("*.py")}
    assert scripts - smoked - SMOKED_ELSEWHERE == set(), "benchmarks without a smoke run"


def test_scale_runs_split_count_and_finalize_of_a_small_job() -> None:
    # The count stage failed with `ConfigError: EVENT_BUS_NAME is not set` (issue 18).
    out = bench("scale.py", "--lines", "50", "--s3-ms", "0", "--workers", "2", "--dynamodb", "moto")
    stages = re.findall(r"^\s+(split|count|finalize)\s+[\d.]+\s+(\d+)", out, re.MULTILINE)
    assert [name for name, _ in stages] == ["split", "count", "finalize"], out
    assert all(int(invocations) >= 1 for _, invocations in stages), out
    assert "_summary.json: COMPLETED, total 50 (N 50), 1 results file(s)" in out, out


def test_scale_feeds_the_count_stage_directly() -> None:
    out = bench("scale.py", "--lines", "40", "--s3-ms", "0", "--dynamodb", "moto", "--feed", "direct")
    assert re.search(r"^\s+count\s+[\d.]+\s+\d+", out, re.MULTILINE), out
    assert "_summary.json: COMPLETED, total 40 (N 40)" in out, out


def test_sqs_depth_times_each_call_at_each_depth() -> None:
    # Each receive keeps its 10 messages in flight: a depth holds 2 x 10 x repeats receives.
    out = bench("sqs_depth.py", "--depths", "100", "200", "--repeats", "2")
    rows = re.findall(r"^\s+(100|200)\s+((?:[\d.]+ ms \(\s*[\d.]+x\)\s*){4})$", out, re.MULTILINE)
    assert [depth for depth, _ in rows] == ["100", "200"], out


def test_manifest_fuzz_tries_the_examples_and_reports_no_escape() -> None:
    out = bench("manifest_fuzz.py", "--examples", "20", "--seed", "1")
    found = re.search(r"(\d+) examples in .*: (\d+) split with every line one item, (\d+) FAILED", out)
    assert found, out
    tried, split, failed = map(int, found.groups())
    assert tried == 20 and split + failed == tried, out
    assert out.rstrip().endswith("0 escapes"), out


def test_cold_start_reports_each_step_to_the_first_prediction(bundle_dir: Path, samples_dir: Path) -> None:
    out = bench("cold_start.py", "--model", str(bundle_dir), "--samples", str(samples_dir), "--runs", "1")
    steps = (
        "imports",
        "service (settings, clients)",
        "model load + bind (the first run's)",
        "first prediction",
    )
    for step in steps:
        assert re.search(rf"^\s+{re.escape(step)}\s+[\d.]+\s+[\d.]+-[\d.]+", out, re.MULTILINE), (step, out)
    assert "total: process start -> first prediction" in out, out


def test_pipeline_throughput_runs_a_job_to_completed(bundle_dir: Path, samples_dir: Path) -> None:
    out = bench(
        "pipeline_throughput.py", "--model", str(bundle_dir), "--samples", str(samples_dir), "--images", "16"
    )
    assert "job of 16 images, chunk size 16, max batch 32, status COMPLETED" in out, out
    assert re.search(r"end to end \(submit -> COMPLETED\)\s+[\d.]+ s\s+[\d.]+ images/s", out), out
    assert re.search(r"predict handler / bare engine: [\d.]+x", out), out


def test_estimate_accuracy_sets_the_dry_run_beside_real_jobs(bundle_dir: Path, samples_dir: Path) -> None:
    out = bench(
        "estimate_accuracy.py", "--model", str(bundle_dir), "--samples", str(samples_dir), "--images", "8",
        "--photos", "4",
    )  # fmt: skip
    rows = re.findall(r"^\s+(defaults|history|history 2)\s{2,}(?:[\d.]+x?\s+){6}(\w+)$", out, re.MULTILINE)
    assert rows == [("defaults", "COMPLETED"), ("history", "COMPLETED"), ("history 2", "COMPLETED")], out
    assert re.search(r"defaults: GB-s ratio [\d.]+, wall ratio [\d.]+ \(shipped defaults", out), out
    assert re.search(r"history: GB-s ratio [\d.]+, wall ratio [\d.]+ \(the stack's 1 recent job", out), out
    assert re.search(r"history 2: GB-s ratio [\d.]+, wall ratio [\d.]+ \(the stack's 2 recent job", out), out
    figures = r"^defaults: billed_ms=[\d.]+, invocations=[\d.]+, write_units=[\d.]+, overhead_seconds="
    assert re.search(figures, out, re.MULTILINE), out


def test_dedupe_counts_one_request_and_one_inference_per_distinct_url() -> None:
    # 40 lines over 4 URLs on a local stack of one predict worker (issue 19, must show, tiny).
    out = bench("dedupe.py", "--lines", "40", "--urls", "4", "--workers", "1", timeout=300)
    assert re.search(r"^CPU: .+; load average [\d.]+ at start$", out, re.MULTILINE), out
    line = re.search(
        r"^1 workers run 1: 40 lines, 4 distinct URLs: (\d+) requests \(1 at most for one URL\), "
        r"(\d+) inferences, 36 lines sharing another's fetch, 0 fetched again, 0 wrong; "
        r"COMPLETED \(40/40 succeeded\)",
        out,
        re.MULTILINE,
    )
    assert line is not None, out
    assert (int(line[1]), int(line[2])) == (4, 4)
