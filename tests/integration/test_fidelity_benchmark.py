"""benchmarks/fidelity_agreement.py, tiny: it builds its photos, decodes them both ways, infers,
and reports the agreement table, so that a change to the decode or engine contract breaks here
and not at the next measurement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.fidelity_agreement import main


def test_the_benchmark_runs_tiny_and_reports_its_table(
    bundle_dir: Path, samples_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "agreement.json"
    args = ["--model", str(bundle_dir), "--samples", str(samples_dir), "--wheels", "", "--images", "6"]
    code = main(
        [*args, "--max-megapixels", "3", "--rule", "0:none", "--json", str(report), "--cache", str(tmp_path)]
    )
    printed = capsys.readouterr().out
    tallies = json.loads(report.read_text())
    production, plain = tallies["draft>=3x, reduce>=4x"], tallies["no draft, no reduce"]
    overall = production["all"]
    assert overall["images"] == 6 and sum(overall["top5_shared"].values()) == 6
    assert overall["exact_decode_cpu_ms"] > 0 and overall["fast_decode_cpu_ms"] > 0
    assert code == (0 if overall["passes_gate"] else 1)
    # Neither drafting nor reducing is the exact decode itself: nothing changes, all agree.
    assert plain["all"]["changed"] == 0 and plain["all"]["top1_agreement"] == 1.0
    assert "fast rule: draft>=3x, reduce>=4x (production)" in printed and "CPU:" in printed
    assert len(list(tmp_path.glob("18-*.bin"))) == 6  # the cache the next run reads
