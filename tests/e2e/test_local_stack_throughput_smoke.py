"""benchmarks/local_stack_throughput.py, tiny: a 16-line job with one predict worker and with two,
each on its own local stack, and the billing figures the benchmark prints (issue 18's must-show);
an 8-line job at fidelity exact and at fast, each against its own bound and floor."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(bundle_dir: Path, samples_dir: Path, *options: str) -> str:
    """The benchmark's report (stdout) on a 3-photo workload, once it exits 0."""
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "local_stack_throughput.py"),
        *("--photos", "3", "--reference-seconds", "0.1", "--timeout", "300"),
        *("--model", str(bundle_dir), "--samples", str(samples_dir), *options),
    ]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, cwd=ROOT, env=os.environ, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_throughput_benchmark_prints_gb_seconds_against_the_floor_for_each_worker_count(
    bundle_dir: Path, samples_dir: Path
) -> None:
    out = run_benchmark(bundle_dir, samples_dir, "--images", "16", "--workers", "1", "2")
    for workers in (1, 2):
        assert re.search(rf"{workers} workers +run 1: .* COMPLETED \(16/16 succeeded", out), out
        # GB-s per line from the REPORT lines and from _summary.json, the floor and the ratio
        row = re.search(rf"{workers} workers run 1 +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)x", out)
        assert row is not None, out
        report, summary, floor, ratio = map(float, row.groups())
        assert report > 0 and summary > 0 and floor > 0
        # As printed: the floor to 4 decimals and the ratio to 2, so the ratio agrees to ~0.2%.
        assert ratio == pytest.approx(report / floor, rel=0.01)
    assert re.search(r"invariance: 2 workers / 1: GB-s per line [\d.]+x", out), out
    assert "waited for CPU slots while another computed" in out


def test_the_throughput_benchmark_runs_a_leg_per_fidelity_against_its_own_bound(
    bundle_dir: Path, samples_dir: Path
) -> None:
    out = run_benchmark(
        bundle_dir, samples_dir, "--images", "8", "--workers", "1", "--fidelity", "exact", "fast"
    )
    bounds, per_image, floors = {}, {}, {}
    for fidelity in ("exact", "fast"):
        # the option reached the job: its _summary.json recorded the leg's fidelity
        assert re.search(
            rf", {fidelity} +run 1: .* COMPLETED \(8/8 succeeded.*; fidelity {fidelity}\)", out
        ), out
        decode = re.search(rf"decode CPU per image +[\d.]+ ms +\(decode_image\(.*fidelity={fidelity}\)", out)
        bound = re.search(rf"bound \({fidelity}\) = \d+ cores / ([\d.]+) ms = ([\d.]+) images/s", out)
        assert decode is not None and bound is not None, out
        per_image[fidelity], bounds[fidelity] = float(bound[1]), float(bound[2])
        # the leg's ratios are against its own fidelity's bound
        row = re.search(
            rf", {fidelity} run 1 +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)x +([\d.]+) +([\d.]+)x", out
        )
        assert row is not None, out
        report, _, floor, ratio, rate, to_bound = map(float, row.groups())
        # As printed: the floor to 4 decimals and the ratio to 2, so the ratio agrees to ~0.2%.
        assert ratio == pytest.approx(report / floor, rel=0.01)
        assert abs(to_bound - rate / bounds[fidelity]) <= 0.01
        floors[fidelity] = floor
    # each floor is its own fidelity's decode + inference CPU (the memory and vCPUs are the same)
    assert floors["fast"] / floors["exact"] == pytest.approx(per_image["fast"] / per_image["exact"], rel=0.02)
    assert re.search(r"fast changes the tensor of [\d.]+% of the lines", out), out
    assert re.search(r"fast / exact \(1 workers\): GB-s per line [\d.]+x .*; images/s [\d.]+x", out), out
