"""The options' bounds where they are used: the splitter (a bad option fails the job at once,
naming it; a good one reaches the JOB and every chunk in the form the writer reads back) and the
CLI's --top-k, --max-failures and --timeout."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from batchpredict.cli import main
from batchpredict.jobs import JobStatus
from tests.unit.test_pipeline_split import IN, WORK_URL, Stack, job_of, s3_event, txt_manifest

KEY = "manifests/photos.txt"


def _split(metadata: dict[str, str], lines: int = 10) -> tuple[Stack, str]:
    stack = Stack()
    stack.s3.add(IN, KEY, txt_manifest(lines))
    stack.s3.metadata[KEY] = metadata
    stack.handle(s3_event(KEY))
    return stack, job_of(KEY)


@pytest.mark.parametrize(
    ("metadata", "named"),
    [
        ({"max-failures": "1" + "0" * 310}, "max-failures='1000"),  # was an OverflowError: no job, DLQ
        ({"max-failures": "1000001"}, "max-failures='1000001'"),
        ({"max-failures": "\u0661\u0662"}, "max-failures='\u0661\u0662'"),
        ({"top-k": "21"}, "top-k='21': a whole number from 1 to 20"),
        ({"timeout": "604801"}, "timeout='604801'"),
    ],
)
def test_an_option_past_its_bounds_fails_the_job_at_once_naming_it(
    metadata: dict[str, str], named: str
) -> None:
    stack, job_id = _split(metadata)
    job = stack.jobs.jobs[job_id]
    assert job.status == JobStatus.FAILED
    assert job.error is not None and named in job.error and len(job.error) < 400
    assert stack.sqs.delivered[WORK_URL] == []  # nothing was sent to predict


def test_the_options_reach_the_job_and_every_chunk_as_the_writer_reads_them() -> None:
    stack, job_id = _split({"max-failures": "1000000", "top-k": "20", "timeout": "604800"})
    job = stack.jobs.jobs[job_id]
    assert job.status == JobStatus.RUNNING
    assert (job.max_failures, job.top_k, job.timeout_seconds) == ("1000000", 20, 604800)
    chunks = stack.sqs.chunks()
    assert chunks and {(c.max_failures, c.top_k) for c in chunks} == {("1000000", 20)}


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_submit_refuses_options_past_their_bounds_before_uploading(tmp_path: Path) -> None:
    manifest = tmp_path / "urls.txt"
    manifest.write_text("https://example.com/a.jpg\n")
    # (no stack runs here: a refused option must stop the command before it looks for one)
    code, output = _cli("submit", str(manifest), "--top-k", "21")
    assert code == 2 and "21 is not in the range 1<=x<=20" in output
    code, output = _cli("submit", str(manifest), "--timeout", "604801")
    assert code == 2 and "604801 is not in the range 1<=x<=604800" in output
    code, output = _cli("submit", str(manifest), "--max-failures", "1e6")
    assert code == 1 and "max-failures='1e6'" in output


def test_predict_top_k_has_the_same_cap(tmp_path: Path) -> None:
    code, output = _cli("predict", str(tmp_path / "cat.jpg"), "--top-k", "21")
    assert code == 2 and "21 is not in the range 1<=x<=20" in output
