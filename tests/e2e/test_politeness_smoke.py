"""benchmarks/politeness.py, tiny: a job of 30 lines over 2 polite test hosts and, beside it, the
same job with a host that refuses everything (``--all-429-host``), each on its own local stack.
No figure and no verdict is asserted (the limits are the code's business, not this run's): only
that each host saw its lines, the report holds every check of the issue's must-show, and its
counts add up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERDICT = r"(PASS|FAIL|N/A ) "


def test_the_politeness_benchmark_reads_each_host_log_and_prints_every_check(
    bundle_dir: Path, samples_dir: Path
) -> None:
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "politeness.py"),
        *("--lines", "30", "--hosts", "5:2:20,20:4:20", "--grace", "0", "--workers", "2", "--timeout", "300"),
        *("--all-429-host", "--all-429-lines", "4"),
        *("--model", str(bundle_dir), "--samples", str(samples_dir)),
        # The all-429 host's lines end at their first refusal, not after the budget's five.
        *("--env", "RATE_LIMIT_REFUSALS=1"),
    ]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, cwd=ROOT, env=os.environ, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"host 1: 5 rps, 2 concurrent, 20 ms a request; 15 lines", out), out
    legs = re.findall(
        r"^run 1, (peer \(no all-429 host\)|with the all-429 host): job \S+ (\w+), wall", out, re.M
    )
    assert [leg for leg, _ in legs] == ["peer (no all-429 host)", "with the all-429 host"], out
    totals = [int(n) for n in re.findall(r"lines by status and code: .* \(of (\d+)\)", out)]
    assert totals == [30, 34], out
    for by_code, total in zip(re.findall(r"lines by status and code: (.*) \(of", out), totals, strict=True):
        assert sum(int(n) for n in re.findall(r"\w+ (\d+)", by_code)) == total, out
    # every host saw every one of its lines at least once; the all-429 host refused them all
    for lines, requests in re.findall(r"(\d+) lines: .*\n\s+whole job: +(\d+) requests", out):
        assert int(requests) >= int(lines), out
    refused = re.search(
        r"http://\S+: no rate limit, no concurrency limit, .*429 to everything\n.*\n.*refused \(([\d.]+)%\)",
        out,
    )
    assert refused is not None and refused[1] == "100.0", out
    checks = re.findall(rf"^  {VERDICT}(.*)$", out, re.M)
    whats = [what for _, what in checks]
    for n in (1, 2):
        assert sum(w.startswith(f"host {n}: refused") for w in whats) == 2, out
        assert sum(w.startswith(f"host {n}: after the first 0 s, max") for w in whats) == 4, out
    assert (
        sum(w.startswith("no line of a serving host failed http_error or rate_limited") for w in whats) == 2
    )
    assert sum(w.startswith("wall ") for w in whats) == 2, out
    assert any(w == "all-429 host: every line rate_limited" for w in whats), out
    assert any(w.startswith("the other hosts not slowed by more than 10%") for w in whats), out
    summary = re.search(r"(\d+) checks: (\d+) PASS, (\d+) FAIL, (\d+) N/A", out)
    assert summary is not None, out
    assert int(summary[1]) == len(checks) == sum(map(int, summary.groups()[1:])), out
