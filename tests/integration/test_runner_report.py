"""The local runner's worker processes account for every invocation as Lambda does: one REPORT
line each in the function's log, with the mapping's memory, and Lambda's runtime variables."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import boto3
import pytest

from batchpredict.local.lambda_shim import parse_report
from batchpredict.local.runner import Mapping, Runner
from tests.aws_env import dummy_aws

HANDLER = """
import json, os

def handler(event, context):
    seen = {
        "records": len(event["Records"]),
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "AWS_LAMBDA_FUNCTION_NAME": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
    }
    with open(os.environ["SEEN_FILE"], "a") as f:
        f.write(json.dumps(seen) + "\\n")
    return {"batchItemFailures": []}
"""


def test_each_invocation_writes_one_report_line(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dummy_aws(monkeypatch, moto_endpoint)
    (tmp_path / "reporttest_handler.py").write_text(HANDLER)
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=f"report-{tmp_path.name[-8:]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    for i in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    seen_file = tmp_path / "seen.jsonl"
    mapping = Mapping(
        function="ReportFunction",
        handler="reporttest_handler.handler",
        queue_url=url,
        queue_arn=arn,
        batch_size=1,  # one message per invocation: three invocations
        timeout_seconds=42.0,
        memory_mb=3538,
        environment={
            "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
            "SEEN_FILE": str(seen_file),
        },
    )
    runner = Runner([mapping], log_dir=tmp_path / "logs")
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if seen_file.exists() and len(seen_file.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
    finally:
        runner.stop()
    seen = [json.loads(line) for line in seen_file.read_text().splitlines()]
    assert len(seen) == 3
    for invocation in seen:
        assert invocation["records"] == 1 and invocation["memory_limit_in_mb"] == 3538
        assert 40_000 < invocation["remaining_ms"] <= 42_000
        assert invocation["AWS_LAMBDA_FUNCTION_NAME"] == "ReportFunction"
        assert invocation["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "3538"
    log = (tmp_path / "logs" / "ReportFunction.log").read_text().splitlines()
    reports = [r for r in map(parse_report, log) if r is not None]
    assert len(reports) == 3, log
    assert len({r.request_id for r in reports}) == 3
    assert all(r.memory_mb == 3538 and r.max_memory_used_mb > 0 for r in reports)
    assert all(r.billed_ms >= r.duration_ms for r in reports)
