"""benchmarks/local_stack_throughput.py, tiny: a 16-line job with one predict worker and with two,
each on its own local stack, and the billing figures the benchmark prints (issue 18's must-show)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_throughput_benchmark_prints_gb_seconds_against_the_floor_for_each_worker_count(
    bundle_dir: Path, samples_dir: Path
) -> None:
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "local_stack_throughput.py"),
        *("--images", "16", "--photos", "3", "--workers", "1", "2", "--reference-seconds", "0.1"),
        *("--model", str(bundle_dir), "--samples", str(samples_dir), "--timeout", "300"),
    ]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, cwd=ROOT, env=os.environ, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for workers in (1, 2):
        assert re.search(rf"{workers} workers +run 1: .* COMPLETED \(16/16 succeeded", out), out
        # GB-s per line from the REPORT lines and from _summary.json, the floor and the ratio
        row = re.search(rf"{workers} workers run 1 +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)x", out)
        assert row is not None, out
        report, summary, floor, ratio = map(float, row.groups())
        assert report > 0 and summary > 0 and floor > 0
        assert abs(ratio - report / floor) <= 0.01  # the figures are printed rounded
    assert re.search(r"invariance: 2 workers / 1: GB-s per line [\d.]+x", out), out
    assert "waited for CPU slots while another computed" in out
