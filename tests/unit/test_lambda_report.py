"""Lambda's REPORT line, as the local runner writes it after every invocation, and its parser."""

from __future__ import annotations

import re
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
