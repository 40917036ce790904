"""benchmarks/fairness.py, tiny: a small job behind a larger one on a local stack whose work queue
delivers as SQS fair queues do, and on one that ignores the groups (--no-fair), with the figures
the benchmark prints (issue 19's must-show). No time is asserted: this is a run, not a measurement."""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.test_benchmarks import bench


def test_the_fairness_benchmark_times_a_small_job_alone_and_behind_a_large_one_with_and_without_groups(
    bundle_dir: Path, samples_dir: Path
) -> None:
    out = bench(
        "fairness.py",
        *("--images", "96", "--small", "4", "--delay", "0.5", "--photos", "2", "--side", "96"),
        *("--workers", "1", "--warmup", "8", "--no-fair", "--timeout", "300"),
        *("--model", str(bundle_dir), "--samples", str(samples_dir)),
        timeout=600,
    )
    for queue in ("no-fair", "fair"):
        leg = re.search(
            rf"^{queue} +run 1: small job alone +([\d.]+) s, behind the large job +([\d.]+) s \(([\d.]+)x; "
            r"COMPLETED/COMPLETED\); large job (\d+)/96 lines done by then",
            out,
            re.MULTILINE,
        )
        assert leg is not None, out
        alone, behind, ratio = map(float, leg.groups()[:3])
        assert alone > 0 and behind > 0
        assert abs(ratio - behind / alone) <= 0.01 + 0.02 * ratio  # as printed: seconds to 0.01
        row = re.search(rf"^  {queue} +[\d.]+ +[\d.]+ +[\d.]+x$", out, re.MULTILINE)
        assert row is not None, out
    assert re.search(r"^behind the large job, no-fair / fair: [\d.]+x$", out, re.MULTILINE), out
    heading = r"^4-line job submitted 0.5 s after a 96-line job, 1 predict workers, 1 run\(s\)$"
    assert re.search(heading, out, re.MULTILINE), out
