"""Per-host politeness in the stream (pipeline.py with a HostLimiter) and the deferral of a
chunk's refused lines through ChunkBatch, with fakes (a process-local limiter, no DynamoDB)."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest

from batchpredict.batch import ChunkBatch
from batchpredict.deferral import ChunkDeferrer
from batchpredict.errors import ErrorCode, RefusedError
from batchpredict.fetch import Fetched
from batchpredict.hostlimiter import HostLimiter
from batchpredict.hostlimits import HostPolicy
from batchpredict.jobs import Job, JobStatus
from batchpredict.messages import Chunk
from batchpredict.queues import Queue
from batchpredict.records import FAILED, WorkItem
from batchpredict.results import ResultStore
from batchpredict.writer import ChunkWriter
from tests.unit.fakes import FakeJobs, FakeS3, FakeSQS, ScriptedFetcher
from tests.unit.test_pipeline_stream import _img, _run, _stream

WORK = "https://sqs/work"


class TimedFetcher(ScriptedFetcher):
    """A ScriptedFetcher that notes when each request was sent (epoch seconds)."""

    def __init__(self, scripts: dict[str, list[Any]]) -> None:
        super().__init__(scripts)
        self.sent: list[tuple[str, float]] = []
        self._sent_lock = threading.Lock()

    def fetch(self, url: str, deadline: float | None = None, *, robots: bool = True) -> Fetched:
        with self._sent_lock:
            self.sent.append((url, time.time()))
        return super().fetch(url, deadline, robots=robots)


def _limited(fetcher: ScriptedFetcher, policy: HostPolicy, **kwargs: Any) -> Any:
    predictor, engine = _stream(fetcher, **kwargs)
    predictor.fetcher.limiter = HostLimiter(None, policy)
    return predictor, engine


def test_requests_to_one_host_are_spaced_at_its_rate_and_other_hosts_are_not_held_up() -> None:
    slow = [f"https://slow.example/{i}.jpg" for i in range(6)]
    fast = [f"https://fast.example/{i}.jpg" for i in range(6)]
    scripts = {url: [_img(i)] for i, url in enumerate(slow + fast)}
    fetcher = TimedFetcher(scripts)
    predictor, _ = _limited(fetcher, HostPolicy(rps=10.0, max_rps=10.0), concurrency=4)
    items = [WorkItem(index=i, url=url) for i, url in enumerate(slow + fast)]
    done, _, unfinished = _run(predictor, [items[:6], items[6:]])
    assert not unfinished
    assert all(r.outcome.error is None for g in done.values() for r in g)
    for host in ("slow", "fast"):
        times = sorted(t for url, t in fetcher.sent if host in url)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Never closer than the rate allows (a loaded machine only spreads them further).
        assert min(gaps) >= 0.1 - 0.01, (host, gaps)
    # Both hosts' turns ran side by side (the waits are on a timer, not on the 4 fetch threads):
    # the fast host was served while the slow host's turns were still to come.
    assert min(t for url, t in fetcher.sent if "fast" in url) < max(
        t for url, t in fetcher.sent if "slow" in url
    )


def test_a_refusal_defers_its_line_and_pauses_its_host_for_the_rest_of_the_run() -> None:
    refusing = [f"https://busy.example/{i}.jpg" for i in range(3)]
    other = "https://calm.example/0.jpg"
    scripts: dict[str, list[Any]] = {
        url: [RefusedError("HTTP 429 from busy.example", 60.0)] for url in refusing
    }
    scripts[other] = [_img(7)]
    fetcher = ScriptedFetcher(scripts)
    predictor, _ = _limited(fetcher, HostPolicy(rps=50.0, max_rps=50.0), concurrency=1)
    items = [WorkItem(index=i, url=url) for i, url in enumerate([*refusing, other])]
    started = time.time()
    done, _, unfinished = _run(predictor, [items])
    assert not unfinished
    results = {r.item.url: r for r in done[0]}
    assert results[other].outcome.error is None
    first = results[refusing[0]].outcome
    assert first.refused and first.deferred_until is not None and first.deferred_until >= started + 59
    assert first.error is not None and first.error.code == ErrorCode.RATE_LIMITED
    # The host asked for 60 s: its other lines were deferred without another request.
    assert sum(fetcher.calls.get(url, 0) for url in refusing) == 1
    for url in refusing[1:]:
        outcome = results[url].outcome
        assert not outcome.refused and outcome.deferred_until is not None


def test_a_chunk_with_a_refused_line_comes_back_and_is_written_whole_once_served() -> None:
    urls = ["https://calm.example/0.jpg", "https://busy.example/1.jpg"]
    fetcher = ScriptedFetcher(
        {urls[0]: [_img(0)], urls[1]: [RefusedError("HTTP 429 from busy.example", 2.0), _img(1)]}
    )
    policy = HostPolicy(rps=50.0, max_rps=50.0)
    predictor, _ = _limited(fetcher, policy)
    job = Job("job-1", JobStatus.RUNNING, "s3://in/manifests/a.txt", total=2, chunks_total=1, split_done=True)
    jobs, s3, sqs = FakeJobs(job), FakeS3(), FakeSQS()
    results = ResultStore(s3, "out")  # type: ignore[arg-type]
    writer = ChunkWriter(jobs, results, Queue(sqs, "https://sqs/finalize"))  # type: ignore[arg-type]
    deferrer = ChunkDeferrer(results, jobs, Queue(sqs, WORK), policy)  # type: ignore[arg-type]
    batch = ChunkBatch(predictor, writer, memory_mb=0, write_reserve_seconds=0.0, deferrer=deferrer)
    chunk = Chunk("job-1", 0, [WorkItem(index=i, url=u) for i, u in enumerate(urls)])

    outcomes = batch.run([("m-1", chunk.body())], lambda: 30.0)
    assert outcomes["m-1"].deferred and outcomes["m-1"].error is None  # the message is done with
    assert "results/job-1/parts/000000.jsonl" not in s3.objects["out"]
    assert jobs.job.deferred_lines == 1 and jobs.job.chunks_done == 0
    [resent] = [c for c in sqs.sent if c["QueueUrl"] == WORK]
    assert resent["DelaySeconds"] >= 2

    time.sleep(2.0)  # the host's Retry-After, before the chunk comes back
    outcomes = batch.run([("m-2", resent["MessageBody"])], lambda: 30.0)
    assert outcomes["m-2"].counted
    lines = s3.objects["out"]["results/job-1/parts/000000.jsonl"].splitlines()
    assert len(lines) == 2
    assert (jobs.job.succeeded, jobs.job.failed, jobs.job.deferred_lines, jobs.job.chunks_done) == (
        2,
        0,
        0,
        1,
    )
    assert fetcher.calls == {urls[0]: 1, urls[1]: 2}  # the finished line was not fetched again


def test_without_a_deferrer_a_refused_line_fails_rate_limited() -> None:
    url = "https://busy.example/1.jpg"
    predictor, _ = _limited(
        ScriptedFetcher({url: [RefusedError("HTTP 429 from busy.example", None)]}), HostPolicy()
    )
    job = Job("job-1", JobStatus.RUNNING, "s3://in/manifests/a.txt", total=1, chunks_total=1, split_done=True)
    jobs, s3, sqs = FakeJobs(job), FakeS3(), FakeSQS()
    writer = ChunkWriter(jobs, ResultStore(s3, "out"), Queue(sqs, "https://sqs/finalize"))  # type: ignore[arg-type]
    batch = ChunkBatch(predictor, writer, memory_mb=0, write_reserve_seconds=0.0)
    outcomes = batch.run([("m-1", Chunk("job-1", 0, [WorkItem(index=0, url=url)]).body())], lambda: 30.0)
    [record] = outcomes["m-1"].records
    assert (
        record.status == FAILED and record.error is not None and record.error.code == ErrorCode.RATE_LIMITED
    )


def test_a_late_fetch_does_not_go_out_right_beside_the_next_one() -> None:
    now = [1_800_000_000.0]
    limiter = HostLimiter(None, HostPolicy(rps=10.0, max_rps=10.0), wall=lambda: now[0])
    url = "https://busy.example/a.jpg"
    assert limiter.turn(url, None, now[0] + 10, pending=3).at == now[0]
    assert limiter.hold(url) == 0.0
    # The next slot was due 0.1 s later, but its fetch only started now (a busy pool): it waits.
    assert limiter.hold(url) == pytest.approx(0.09)
    now[0] += 1.0
    assert limiter.hold(url) == 0.0
    assert limiter.hold("s3://bucket/key.jpg") == 0.0


def test_a_host_that_refuses_everything_gets_one_probe_now_and_then_and_its_lines_end() -> None:
    now = [1_800_000_000.0]
    policy = HostPolicy(rps=10.0)
    limiter = HostLimiter(None, policy, wall=lambda: now[0])
    url = "https://wall.example/a.jpg"
    for _ in range(policy.breaker_refusals):
        limiter.refused(url, None)
        now[0] += policy.breaker_seconds / (policy.breaker_refusals - 1) + 0.1
    probe = limiter.turn(url, None, now[0] + 60)
    assert not probe.refusing and probe.defer_until is None  # the first look after: one probe
    assert limiter.turn(url, None, now[0] + 60).refusing  # every other line ends rate_limited
    now[0] += policy.breaker_seconds
    assert not limiter.turn(url, None, now[0] + 60).refusing  # the next probe
    limiter.answered(url, 0.1)  # it succeeded: the host serves again
    now[0] += 1
    limiter.turn(url, None, now[0] + 60)  # its report goes out with the next lease
    assert not limiter.turn(url, None, now[0] + 60).refusing
