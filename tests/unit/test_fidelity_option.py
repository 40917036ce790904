"""The fidelity option (issue 18): parsed like every option, stored on the JOB, carried by every
chunk, given to the decoder and the engine seam per line, recorded in every result record and
in the summary. (What ``fast`` does to pixels and answers: test_fidelity_decode.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchpredict.cli import main
from batchpredict.cli.render import job_view
from batchpredict.fidelity import DEFAULT_FIDELITY, Fidelity, engine_for
from batchpredict.finalize import record_summary
from batchpredict.images import DecodedImage
from batchpredict.jobs import Job, JobStatus
from batchpredict.messages import Chunk
from batchpredict.options import JobOptions, OptionError, parse_options
from batchpredict.records import ResultRecord, WorkItem
from batchpredict.writer import storable
from tests.unit.fakes import ScriptedFetcher
from tests.unit.test_option_limits import _split
from tests.unit.test_pipeline_split import WORK_URL
from tests.unit.test_pipeline_stream import FakeDecoder, FakeEngine, _img, _run, _stream, _url


@pytest.mark.parametrize(("raw", "parsed"), [("fast", Fidelity.FAST), (" EXACT ", Fidelity.EXACT)])
def test_the_option_parses_and_round_trips(raw: str, parsed: Fidelity) -> None:
    options = parse_options({"fidelity": raw})
    assert options == JobOptions(fidelity=parsed)
    assert parse_options(options.as_metadata()) == options
    assert options.as_item() == {"fidelity": parsed.value}
    assert JobOptions().as_item() == {} and JobOptions().fidelity is None  # None: exact


@pytest.mark.parametrize("raw", ["faster", "", "fást", "exact,fast"])
def test_a_bad_value_is_an_option_error_naming_it(raw: str) -> None:
    with pytest.raises(OptionError, match=re.escape(f"fidelity={raw!r}: give one of exact, fast")):
        parse_options({"fidelity": raw})


def test_a_bad_fidelity_fails_the_job_at_once_naming_it() -> None:
    stack, job_id = _split({"fidelity": "slow"})
    job = stack.jobs.jobs[job_id]
    assert job.status == JobStatus.FAILED and "fidelity='slow'" in (job.error or "")
    assert stack.sqs.delivered[WORK_URL] == []


def test_fast_reaches_the_job_and_every_chunk_and_each_of_its_lines() -> None:
    stack, job_id = _split({"fidelity": "fast", "top-k": "3"}, lines=10)
    assert stack.jobs.jobs[job_id].fidelity == "fast"
    chunks = stack.sqs.chunks()
    assert chunks and {(c.fidelity, c.top_k) for c in chunks} == {(Fidelity.FAST, 3)}
    assert {item.fidelity for c in chunks for item in c.items} == {Fidelity.FAST}


def test_a_job_without_the_option_sends_chunks_as_before() -> None:
    stack, job_id = _split({})
    assert stack.jobs.jobs[job_id].fidelity is None
    bodies = [json.loads(body) for body in stack.sqs.delivered[WORK_URL]]
    assert bodies and not any("fidelity" in body for body in bodies)
    assert {item.fidelity for c in stack.sqs.chunks() for item in c.items} == {Fidelity.EXACT}


def test_the_chunk_carries_it_once_not_on_each_line() -> None:
    chunk = Chunk("job-1", 0, [WorkItem(0, "https://a/0.jpg"), WorkItem(1, "https://a/1.jpg")], None, None)
    fast = Chunk("job-1", 0, chunk.items, fidelity=Fidelity.FAST)
    body = json.loads(fast.body())
    assert body["fidelity"] == "fast" and all("fidelity" not in item for item in body["items"])
    assert Chunk.parse(fast.body()).items == [
        WorkItem(0, "https://a/0.jpg", fidelity=Fidelity.FAST),
        WorkItem(1, "https://a/1.jpg", fidelity=Fidelity.FAST),
    ]
    assert Chunk.parse(chunk.body()).fidelity is None


def test_every_record_says_its_fidelity_and_old_lines_read_as_exact() -> None:
    fast = ResultRecord.failed(
        "job-1", WorkItem(3, "https://a/3.jpg", fidelity=Fidelity.FAST), "http_error", "404"
    )
    line = fast.to_json()
    assert line["fidelity"] == "fast" and list(line).index("fidelity") == list(line).index("model") + 1
    assert ResultRecord.from_json(line) == fast
    assert fast.to_item()["fidelity"] == "fast"
    old = {k: v for k, v in line.items() if k != "fidelity"}  # written before the option existed
    assert ResultRecord.from_json(old).fidelity == Fidelity.EXACT
    # A row too big for DynamoDB is cut down, its fidelity kept.
    huge = ResultRecord.for_item(
        "job-1",
        WorkItem(4, "https://a/4.jpg", metadata={"x": "y" * 500_000}, fidelity=Fidelity.FAST),
        model="m",
    )
    assert storable(huge).fidelity == Fidelity.FAST and storable(huge).metadata is None


def test_the_summary_names_the_fidelity() -> None:
    job = Job("job-1", JobStatus.FAILED, "s3://in/manifests/a.txt")
    assert record_summary(job)["fidelity"] == "exact"
    assert (
        record_summary(Job("job-1", JobStatus.FAILED, "s3://in/m.txt", fidelity="fast"))["fidelity"] == "fast"
    )


def test_submit_refuses_a_bad_fidelity_before_it_looks_for_a_stack(tmp_path: Path) -> None:
    manifest = tmp_path / "urls.txt"
    manifest.write_text("https://example.com/a.jpg\n")
    result = CliRunner().invoke(main, ["submit", str(manifest), "--fidelity", "slow"])
    assert result.exit_code == 2 and "'slow' is not one of 'exact', 'fast'" in result.output


class RecordingDecoder(FakeDecoder):
    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[bytes, Fidelity] = {}

    def decode(self, payload: bytes, deadline: float, fidelity: Fidelity) -> DecodedImage:
        self.seen[payload] = fidelity
        return super().decode(payload, deadline, fidelity)


def test_the_stream_decodes_each_line_at_its_fidelity_and_fast_lines_take_fasts_engine() -> None:
    fetcher = ScriptedFetcher({_url(i): [_img(i)] for i in range(6)})
    decoder = RecordingDecoder()
    predictor, exact_engine = _stream(fetcher, decoder=decoder, bucket=6, linger=0.05)
    fast_engine = FakeEngine()
    predictor.fast_engine = fast_engine  # type: ignore[assignment]
    exact = [WorkItem(i, _url(i)) for i in range(3)]
    fast = [WorkItem(i, _url(i), fidelity=Fidelity.FAST) for i in range(3, 6)]

    done, _, unfinished = _run(predictor, [exact, fast])

    assert unfinished == set()
    assert decoder.seen == {_img(i): Fidelity.EXACT if i < 3 else Fidelity.FAST for i in range(6)}
    assert sorted(i for p in exact_engine.passes for i in p) == [0, 1, 2]
    assert sorted(i for p in fast_engine.passes for i in p) == [3, 4, 5]
    assert [r.outcome.predictions[0].class_index for g in (0, 1) for r in done[g]] == list(range(6))


def test_without_an_engine_of_its_own_fast_uses_the_exact_engine() -> None:
    exact, int8 = object(), object()
    assert engine_for(Fidelity.FAST, exact) is exact
    assert engine_for(Fidelity.FAST, exact, int8) is int8
    assert engine_for(Fidelity.EXACT, exact, int8) is exact
    assert DEFAULT_FIDELITY is Fidelity.EXACT


def test_status_shows_a_fast_jobs_fidelity_among_its_options() -> None:
    fast = Job("job-1", JobStatus.RUNNING, "s3://in/manifests/a.txt", top_k=3, fidelity="fast")
    assert "options  top-k=3 fidelity=fast\n" in job_view(fast, "table")
    assert "fidelity" not in job_view(Job("job-1", JobStatus.RUNNING, "s3://in/manifests/a.txt"), "table")
