"""The robots option (issue 19): ``x-amz-meta-robots`` ``honour`` (default) or ``ignore``, parsed
like every option, stored on the JOB, carried once by every chunk, and handed to each line's
fetch, which then skips X-Robots-Tag and robots.txt (test_robots.py shows what they do)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchpredict.cli import main
from batchpredict.cli.render import job_view
from batchpredict.errors import ErrorCode, PredictionError
from batchpredict.jobs import Job, JobStatus
from batchpredict.messages import Chunk
from batchpredict.options import JobOptions, OptionError, parse_options
from batchpredict.records import WorkItem
from tests.unit.fakes import ScriptedFetcher
from tests.unit.test_option_limits import _split
from tests.unit.test_pipeline_split import WORK_URL
from tests.unit.test_pipeline_stream import _img, _run, _stream, _url


@pytest.mark.parametrize(("raw", "stored"), [("ignore", "ignore"), (" IGNORE ", "ignore"), ("honour", None)])
def test_the_option_parses_and_round_trips(raw: str, stored: str | None) -> None:
    options = parse_options({"robots": raw})
    assert options == JobOptions(robots=stored)
    assert parse_options(options.as_metadata()) == options
    assert options.as_item() == ({"robots": stored} if stored else {})  # honour: no option at all


@pytest.mark.parametrize("raw", ["", "honor", "no", "ignore,honour", "ígnore"])
def test_a_bad_value_is_an_option_error_naming_it(raw: str) -> None:
    with pytest.raises(OptionError, match=re.escape(f"robots={raw!r}: give honour or ignore")):
        parse_options({"robots": raw})


def test_a_bad_robots_option_fails_the_job_at_once_naming_it() -> None:
    stack, job_id = _split({"robots": "maybe"})
    job = stack.jobs.jobs[job_id]
    assert job.status == JobStatus.FAILED and "robots='maybe'" in (job.error or "")
    assert stack.sqs.delivered[WORK_URL] == []


def test_ignore_reaches_the_job_and_every_chunk_and_each_of_its_lines() -> None:
    stack, job_id = _split({"robots": "ignore"}, lines=20)
    assert stack.jobs.jobs[job_id].robots == "ignore"
    chunks = stack.sqs.chunks()
    assert len(chunks) > 1 and all(chunk.ignore_robots for chunk in chunks)
    assert {item.honour_robots for chunk in chunks for item in chunk.items} == {False}


def test_a_job_without_the_option_honours_robots_and_its_chunks_say_nothing() -> None:
    stack, job_id = _split({})
    assert stack.jobs.jobs[job_id].robots is None
    assert not any("robots" in json.loads(body) for body in stack.sqs.delivered[WORK_URL])
    assert {item.honour_robots for c in stack.sqs.chunks() for item in c.items} == {True}


def test_the_chunk_carries_it_once_not_on_each_line() -> None:
    items = [WorkItem(0, "https://a/0.jpg"), WorkItem(1, "https://a/1.jpg")]
    body = json.loads(Chunk("job-1", 0, items, ignore_robots=True).body())
    assert body["robots"] == "ignore" and all("robots" not in item for item in body["items"])
    parsed = Chunk.parse(json.dumps(body))
    assert parsed.ignore_robots and [i.honour_robots for i in parsed.items] == [False, False]
    assert not Chunk.parse(Chunk("job-1", 0, items).body()).ignore_robots


def test_each_line_is_fetched_as_its_job_asks() -> None:
    refusal = PredictionError(ErrorCode.ROBOTS_DISALLOWED, "X-Robots-Tag 'noai'", transient=False)
    fetcher = ScriptedFetcher({_url(0): [refusal], _url(1): [_img(1)]})
    predictor, _ = _stream(fetcher, attempts=3)
    items = [WorkItem(0, _url(0)), WorkItem(1, _url(1), honour_robots=False)]

    done, _, unfinished = _run(predictor, [items])

    assert not unfinished and fetcher.robots == {_url(0): True, _url(1): False}
    first, second = done[0]
    assert first.outcome.error is refusal and fetcher.calls[_url(0)] == 1  # permanent: not retried
    assert second.outcome.error is None
    predictor.close()


def test_submit_ignore_robots_sends_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchpredict.cli import job_commands

    sent: list[JobOptions] = []

    def fake_job_options(metadata: dict[str, object]) -> JobOptions:
        sent.append(parse_options({k: str(v) for k, v in metadata.items() if v is not None}))
        raise SystemExit(0)  # stop before any stack is looked for

    monkeypatch.setattr(job_commands, "_job_options", fake_job_options)
    manifest = tmp_path / "urls.txt"
    manifest.write_text("https://example.com/a.jpg\n")
    for flags, robots in (([], None), (["--ignore-robots"], "ignore")):
        result = CliRunner().invoke(main, ["submit", str(manifest), *flags])
        assert result.exit_code == 0, result.output
        assert sent.pop().robots == robots


def test_status_shows_a_job_that_ignores_robots() -> None:
    mine = Job("job-1", JobStatus.RUNNING, "s3://in/manifests/a.txt", top_k=3, robots="ignore")
    assert "options  top-k=3 robots=ignore\n" in job_view(mine, "table")
    assert "robots" not in job_view(Job("job-1", JobStatus.RUNNING, "s3://in/manifests/a.txt"), "table")
