"""Lambda's REPORT line, as the local runner writes it after every invocation, and its parser."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from batchpredict.local.lambda_shim import Report, deliver_once, parse_report
from tests.unit.fakes import FakeSQS

# The shape of Lambda's own line (a warm invocation), field by field.
REPORT_SHAPE = re.compile(
    r"REPORT RequestId: [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"\tDuration: \d+\.\d\d ms\tBilled Duration: \d+ ms\tMemory Size: \d+ MB\tMax Memory Used: \d+ MB"
)


def test_line_has_lambdas_shape_and_bills_whole_milliseconds_rounded_up() -> None:
    report = Report.measured("3604209a-e9a3-11e6-939a-754dd98c7be3", 1234.5612, 3538, 812)
    assert report.line() == (
        "REPORT RequestId: 3604209a-e9a3-11e6-939a-754dd98c7be3\tDuration: 1234.56 ms"
        "\tBilled Duration: 1235 ms\tMemory Size: 3538 MB\tMax Memory Used: 812 MB"
    )
    assert Report.measured("x", 1234.001, 128, 1).billed_ms == 1234  # 1234.00 as shown
    assert Report.measured("x", 1234.006, 128, 1).billed_ms == 1235
    assert Report.measured("x", 0.2, 128, 1).billed_ms == 1  # never less than 1 ms
    assert Report.measured("x", 2000.0, 1536, 1).gb_seconds == pytest.approx(3.0)


def test_parse_report_reads_ours_and_cloudwatchs_and_nothing_else() -> None:
    report = Report.measured("3604209a-e9a3-11e6-939a-754dd98c7be3", 87.304, 3538, 412)
    assert parse_report(report.line()) == report
    # Lambda's own line: trailing tab, Init Duration on a cold start, a timestamp before it.
    cloudwatch = (
        "2026-11-30T10:00:00.000Z REPORT RequestId: 8f5a-1\tDuration: 2.46 ms\tBilled Duration: 3 ms\t"
        "Memory Size: 128 MB\tMax Memory Used: 39 MB\tInit Duration: 128.33 ms\t\n"
    )
    assert parse_report(cloudwatch) == Report("8f5a-1", 2.46, 3, 128, 39, 128.33)
    assert parse_report('{"level": "INFO", "message": "REPORT of the day"}') is None
    assert parse_report("START RequestId: 8f5a-1 Version: $LATEST") is None


def test_deliver_once_reports_every_invocation_with_the_configured_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[int] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(context.memory_limit_in_mb)
        return {"batchItemFailures": []}

    sqs = FakeSQS(receive=(["a", "b"], ["c"]))
    for _ in range(3):  # the third poll finds nothing: no invocation, no line
        deliver_once(sqs, "url", "arn", handler, function_name="f", batch_size=2, memory_mb=3538)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(REPORT_SHAPE.fullmatch(line) for line in lines), lines
    reports = [parse_report(line) for line in lines]
    assert all(r is not None and r.memory_mb == 3538 and r.max_memory_used_mb > 0 for r in reports)
    assert seen == [3538, 3538] and sqs.deleted == ["r-a", "r-b", "r-c"]


def test_a_failed_invocation_is_reported_too() -> None:
    reports: list[Report] = []

    def handler(event: dict[str, Any], context: Any) -> None:
        raise RuntimeError("boom")

    sqs = FakeSQS(receive=(["a"],))
    assert deliver_once(sqs, "url", "arn", handler, function_name="f", report=reports.append) == 1
    assert len(reports) == 1 and reports[0].memory_mb == 1024 and sqs.deleted == []


class WaitingGate:
    """A CpuGate whose holder waits 30 ms for its cores in the middle of the invocation."""

    def __init__(self) -> None:
        self.waited = 3.0  # the worker had waited 3 s before this invocation
        self.held = 0

    @contextmanager
    def computing(self) -> Iterator[None]:
        self.held += 1
        yield
        self.held -= 1

    @contextmanager
    def idle(self) -> Iterator[None]:
        yield
        self.waited += 0.03

    def waited_seconds(self) -> float:
        return self.waited


def test_the_time_a_worker_waited_for_cpu_slots_is_left_out_of_the_billed_duration() -> None:
    reports: list[Report] = []
    gate = WaitingGate()
    held: list[int] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        held.append(gate.held)  # the invocation runs on its cores
        with gate.idle():
            time.sleep(0.05)  # of these 50 ms, the last 30 were spent waiting for its cores back
        return {"batchItemFailures": []}

    sqs = FakeSQS(receive=(["a"],))
    deliver_once(sqs, "url", "arn", handler, function_name="f", report=reports.append, gate=gate)
    (report,) = reports
    assert held == [1] and gate.held == 0
    assert report.cpu_wait_ms == pytest.approx(30.0)
    assert report.duration_ms + report.cpu_wait_ms >= 50.0  # the wall time, less the wait
    assert report.billed_ms == math.ceil(report.duration_ms)


def test_a_report_with_a_cpu_wait_reads_back() -> None:
    report = Report.measured("id-1", 2500.0, 3538, 700, cpu_wait_ms=1000.0)
    assert (report.duration_ms, report.billed_ms, report.cpu_wait_ms) == (1500.0, 1500, 1000.0)
    assert report.line().endswith("\tCPU Wait: 1000.00 ms")
    assert parse_report(report.line()) == report
