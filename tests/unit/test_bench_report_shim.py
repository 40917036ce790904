"""benchmarks/report_shim: an older tree's runner, which wrote no REPORT lines, gets the current
accounting in the ``--before`` leg of benchmarks/local_stack_throughput.py; a tree that reports
by itself is left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from batchpredict.local.lambda_shim import parse_report

SHIM = Path(__file__).resolve().parents[2] / "benchmarks" / "report_shim"

OLD_LAMBDA_SHIM = """
class Context:
    aws_request_id = "8f5a3c1e-0000-4000-8000-000000000001"
    memory_limit_in_mb = 1024

def deliver_once(sqs, queue_url, queue_arn, handler, *, function_name, batch_size=10):
    handler({"Records": []}, Context())
    return 1
"""

CALLER = """
from batchpredict.local import lambda_shim
lambda_shim.deliver_once(None, "url", "arn", lambda event, context: None, function_name="f")
"""


def run_old_tree(tmp_path: Path, lambda_shim: str, *argv: str) -> str:
    local = tmp_path / "batchpredict" / "local"
    local.mkdir(parents=True)
    (tmp_path / "batchpredict" / "__init__.py").write_text("")
    (local / "__init__.py").write_text("")
    (local / "lambda_shim.py").write_text(lambda_shim)
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SHIM)]),
        "BATCHPREDICT_BENCH_REPORT_SHIM": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", CALLER, *argv], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_an_old_runner_reports_each_invocation_with_the_mappings_memory(tmp_path: Path) -> None:
    out = run_old_tree(tmp_path, OLD_LAMBDA_SHIM, json.dumps({"memory_mb": 3538}))
    report = parse_report(out)
    assert report is not None, out
    assert report.request_id == "8f5a3c1e-0000-4000-8000-000000000001"
    assert report.memory_mb == 3538 and report.billed_ms >= report.duration_ms


def test_a_tree_that_reports_by_itself_is_left_alone(tmp_path: Path) -> None:
    out = run_old_tree(tmp_path, OLD_LAMBDA_SHIM + "\ndef parse_report(line):\n    return None\n")
    assert out == ""
