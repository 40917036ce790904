"""benchmarks/model_throughput.py end to end, tiny: every runtime's row at batch 1 on 1 thread,
the CPU named, the int8 variant's recorded agreement, and ORT int8's row or the reason it has none."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from batchpredict.model import HOT_THREADS, Agreement
from tests.fake_int8 import add_fake_int8_variant

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "model_throughput.py"


def test_model_throughput_shows_fp32_int8_and_ort_rows(
    bundle_dir: Path, samples_dir: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    add_fake_int8_variant(bundle, Agreement(320, 0.8, (0, 0, 10, 20, 90, 200)))
    args = ["--model", str(bundle), "--samples", str(samples_dir), "--batches", "1", "--threads", "1"]
    args += ["--seconds", "0.05", "--rounds", "1"]
    command = [sys.executable, str(SCRIPT), *args]
    run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert re.search(r"^CPU .+ \(\w+, family \d+ model \d+\), AVX-512 (yes|no)", out, re.M)
    assert "top-1 equal to fp32 on 80.0%, top-5 sharing >= 4 on 90.6%" in out and "gate FAILED" in out
    # The fake variant is the fp32 graph: on the samples it must agree with fp32 exactly.
    assert "mxnet-int8 vs mxnet fp32: top-1 equal on 100.0% of 6, top-5 sharing >= 4 on 100.0%" in out
    rows = {m[1] for m in re.finditer(r"^\s+1\s+1\s+(\S+)\s+\d+\.\d\s+\d+\.\d\dx", out, re.M)}
    assert {"mxnet", "mxnet-int8", "onnxruntime"} <= rows
    hot = " ".join(f"{k}={v}" for k, v in HOT_THREADS.items())
    assert re.search(rf"^\s+1\s+1\s+mxnet {hot}\s+\d+\.\d", out, re.M)
    assert "onnxruntime-int8" in rows or "ONNX Runtime int8: its quantizer does not run here (" in out
