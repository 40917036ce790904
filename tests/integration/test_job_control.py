"""Steering a job on the moto stack: options from S3 metadata, listing by index, cancel,
failure thresholds and the state change events (moto's EventBridge -> the local events queue)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from collections import Counter
from typing import Any

import pytest

from batchpredict import wiring
from batchpredict.config import fetch_limits, finalize_config, sweep_config
from batchpredict.events import DETAIL_TYPE, SOURCE, JobEvents
from batchpredict.finalize import Finalizer
from batchpredict.handlers import finalize, predict, reconcile, split_manifest, sweep
from batchpredict.jobs import JobStatus, JobStore
from batchpredict.local.lambda_shim import LocalContext
from batchpredict.local.schedules import scheduled_event
from batchpredict.merges import MergeStore
from batchpredict.messages import ManifestObject, finalize_body, parse_manifest_message
from batchpredict.queues import Queue
from batchpredict.results import ResultStore
from batchpredict.sweep import Sweeper
from batchpredict.useragent import DEFAULT_USER_AGENT

from .conftest import PipelineStack as Stack

pytestmark = pytest.mark.integration

PHOTOS = ["coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "china.jpg", "flower.jpg"]


def _upload(stack: Stack, key: str, body: str | bytes, metadata: dict[str, str]) -> None:
    stack.s3.put_object(
        Bucket=stack.input_bucket,
        Key=f"manifests/{key}",
        Body=body.encode() if isinstance(body, str) else body,
        Metadata=metadata,
    )


def _events(stack: Stack) -> list[dict[str, Any]]:
    """Every event the bus delivered to the local events queue so far (read and deleted)."""
    found = []
    while True:
        messages = stack.sqs.receive_message(
            QueueUrl=stack.plan.events_queue, MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", [])
        if not messages:
            return found
        for m in messages:
            found.append(json.loads(m["Body"]))
            stack.sqs.delete_message(QueueUrl=stack.plan.events_queue, ReceiptHandle=m["ReceiptHandle"])


def _exactly_once(stack: Stack, job_id: str, total: int) -> list[dict[str, Any]]:
    """results.jsonl and the IMG# rows hold every line once, in order; the counts close."""
    lines = stack.results_lines(job_id)
    assert [line["index"] for line in lines] == list(range(total))
    rows = [row.to_json() for row in JobStore(stack.dynamodb, stack.table).query_results(job_id)]
    assert rows == lines
    job, summary = stack.job(job_id), stack.summary(job_id)
    failed = sum(1 for line in lines if line["status"] == "FAILED")
    assert (job.total, job.succeeded, job.failed) == (total, total - failed, failed)
    assert (summary["total"], summary["failed"]) == (total, failed)
    assert job.chunks_done == job.chunks_total
    return lines


def _counting_fetches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """URLs predict fetches from now on (the handlers run in this process)."""
    from batchpredict.fetch import Fetcher

    fetched: list[str] = []
    real = Fetcher.fetch

    def fetch(self: Fetcher, url: str, *args: Any, **kwargs: Any) -> Any:
        fetched.append(url)
        return real(self, url, *args, **kwargs)

    monkeypatch.setattr(Fetcher, "fetch", fetch)
    return fetched


def test_options_from_metadata_reach_the_job_the_results_and_the_event(
    stack: Stack, image_server: str
) -> None:
    _upload(
        stack,
        "tagged.txt",
        "\n".join(f"{image_server}/{p}" for p in PHOTOS[:3]),
        {
            "name": "nightly run",
            "tags": "team=vision,run=7",
            "top-k": "2",
            "max-failures": "5%",
            "notify": "email",
            "fidelity": "fast",
        },
    )
    stack.run()
    job_id = stack.only_job_id()
    job = stack.job(job_id)
    assert (job.name, job.tags, job.top_k, job.max_failures, job.notify) == (
        "nightly run",
        {"team": "vision", "run": "7"},
        2,
        "5%",
        ["email"],
    )
    assert job.status == JobStatus.COMPLETED
    lines = _exactly_once(stack, job_id, 3)
    assert [(len(line["predictions"]), line["fidelity"]) for line in lines] == [(2, "fast")] * 3
    summary = stack.summary(job_id)
    assert (summary["name"], summary["tags"]) == ("nightly run", {"team": "vision", "run": "7"})
    assert (job.fidelity, summary["fidelity"]) == ("fast", "fast")
    (event,) = _events(stack)
    assert (event["source"], event["detail-type"]) == (SOURCE, DETAIL_TYPE)
    detail = event["detail"]
    assert (detail["job_id"], detail["status"], detail["name"], detail["notify"]) == (
        job_id,
        "COMPLETED",
        "nightly run",
        ["email"],
    )
    assert detail["counts"] == {"total": 3, "succeeded": 3, "failed": 0}
    assert detail["results_uri"] == job.results_uri
    assert detail["summary_uri"] == f"s3://{stack.output_bucket}/results/{job_id}/_summary.json"
    assert detail["compute"] == summary["compute"] and detail["model"] == summary["model"]


@pytest.mark.parametrize(
    ("metadata", "named"),
    [({"colour": "red"}, "x-amz-meta-colour"), ({"top-k": "many"}, "top-k='many'")],
)
def test_a_bad_option_fails_the_job_at_once_naming_it(
    stack: Stack, image_server: str, monkeypatch: pytest.MonkeyPatch, metadata: dict[str, str], named: str
) -> None:
    fetched = _counting_fetches(monkeypatch)
    _upload(stack, "bad.txt", f"{image_server}/coffee.png\n", metadata)
    stack.run()
    job = stack.job(stack.only_job_id())
    assert job.status == JobStatus.FAILED and named in (job.error or "")
    assert stack.summary(job.job_id)["error"] == job.error
    assert stack.depth("WorkQueue") == 0 and fetched == []  # nothing was sent or fetched
    assert [e["detail"]["status"] for e in _events(stack)] == ["FAILED"]


def test_jobs_are_listed_from_the_status_index_and_found_by_manifest(stack: Stack) -> None:
    jobs = JobStore(stack.dynamodb, stack.table)
    _upload(stack, "a.txt", "# nothing\n", {"name": "alpha"})
    _upload(stack, "b.txt", "# nothing\n", {"name": "beta"})
    _upload(stack, "c.txt", "ftp://x/y.jpg\n", {"name": "alpha"})
    stack.deliver("ManifestQueue", split_manifest.lambda_handler)  # the three jobs, split
    stack.run()  # finalized: two COMPLETED, one COMPLETED_WITH_ERRORS
    everything = jobs.list_jobs()
    assert len(everything) == 3
    assert [j.created_at for j in everything] == sorted((j.created_at for j in everything), reverse=True)
    assert {j.name for j in jobs.list_jobs(name="alpha")} == {"alpha"}
    assert len(jobs.list_jobs(name="alpha")) == 2
    (errors,) = jobs.list_jobs([JobStatus.COMPLETED_WITH_ERRORS])
    assert errors.manifest_uri.endswith("/manifests/c.txt")
    assert jobs.list_jobs(since="9999") == []
    assert len(jobs.list_jobs(limit=2)) == 2
    # A second upload of the same key is a second job of that manifest, newest first.
    _upload(stack, "a.txt", "# again\n", {"name": "alpha-2"})
    stack.run()
    versions = jobs.jobs_of_manifest(f"s3://{stack.input_bucket}/manifests/a.txt")
    assert [j.name for j in versions] == ["alpha-2", "alpha"]
    # The index is sparse: no IMG# row (which has a status) shows up as a job.
    rows = stack.dynamodb.scan(TableName=stack.table, IndexName="by-status")["Items"]
    assert len(rows) == 4 and {r["sk"]["S"] for r in rows} == {"JOB"}


def test_cancel_mid_job_stops_fetching_and_keeps_every_line_once(
    stack: Stack, image_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched = _counting_fetches(monkeypatch)
    # Distinct URLs (a query of their own): a repeated URL is fetched once a job (dedupe).
    urls = [f"{image_server}/{p}?n={i}" for i, p in enumerate(PHOTOS * 4)]
    stack.submit("cancel.txt", "\n".join(urls))  # 6 chunks of 4
    stack.deliver("ManifestQueue", split_manifest.lambda_handler)
    job_id = stack.only_job_id()

    # One invocation: 8 images. 30 s leave no time for a refill's whole fetch and decode, so it
    # takes no more chunks at the tail of its compute.
    def invocation(event: dict[str, Any], context: LocalContext) -> Any:
        return predict.lambda_handler(event, LocalContext(context.function_name, timeout_seconds=30))

    stack.deliver("WorkQueue", invocation, batch_size=2)
    assert len(fetched) == 8
    jobs = JobStore(stack.dynamodb, stack.table)
    assert jobs.cancel(job_id) is not None
    assert jobs.cancel(job_id) is None  # only SPLITTING or RUNNING jobs can be cancelled
    stack.run()
    assert len(fetched) == 8  # not one fetch (or forward pass) after the cancel
    lines = _exactly_once(stack, job_id, 24)
    assert Counter(line["status"] for line in lines[:8]) == {"SUCCEEDED": 8}
    assert {line["error"]["code"] for line in lines[8:]} == {"cancelled"}
    job, summary = stack.job(job_id), stack.summary(job_id)
    assert job.status == summary["status"] == "CANCELLED"
    assert summary["stop"]["reason"] == "cancelled" and summary["errors_by_code"] == {"cancelled": 16}
    assert [e["detail"]["status"] for e in _events(stack)] == ["CANCELLED"]


def test_cancel_mid_split_stops_sending_chunks(
    stack: Stack, image_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hand over after every SendMessageBatch (10 chunks of 2 lines).
    monkeypatch.setenv("SPLIT_TIME_RESERVE_MS", str(10**9))
    monkeypatch.setenv("CHUNK_SIZE", "2")
    fetched = _counting_fetches(monkeypatch)
    stack.submit("long.txt", "\n".join(f"{image_server}/{PHOTOS[i % 6]}" for i in range(45)))
    # S3's test event and the upload's: one split invocation, 10 chunks sent, then a hand-over.
    stack.deliver("ManifestQueue", split_manifest.lambda_handler, batch_size=2)
    job_id = stack.only_job_id()
    assert stack.depth("WorkQueue") == 10
    assert JobStore(stack.dynamodb, stack.table).cancel(job_id) is not None
    stack.run()  # the continuations write the other 13 chunks as cancelled; predict skips the 10
    assert fetched == []
    lines = _exactly_once(stack, job_id, 45)
    assert {line["error"]["code"] for line in lines} == {"cancelled"}
    assert stack.job(job_id).status == JobStatus.CANCELLED
    assert [e["detail"]["status"] for e in _events(stack)] == ["CANCELLED"]


def test_a_manifest_failing_late_has_its_queued_chunks_written_not_fetched(
    stack: Stack, image_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHUNK_SIZE", "25")
    fetched = _counting_fetches(monkeypatch)
    # ~100 KB: the reader's first 64 KiB give 20 chunks (sent) before the truncation shows.
    lines = [f"{image_server}/{PHOTOS[i % 6]}?v={hashlib.sha256(bytes(i)).hexdigest()}" for i in range(1000)]
    good = gzip.compress("\n".join(lines).encode())
    stack.submit("late.txt.gz", good[: len(good) - 40])  # truncated
    stack.run()
    job = stack.job(stack.only_job_id())
    assert job.status == JobStatus.FAILED and "cannot be read" in (job.error or "")
    assert fetched == []
    rows = list(JobStore(stack.dynamodb, stack.table).query_results(job.job_id))
    assert len(rows) == 500 and {row.error.code if row.error else None for row in rows} == {"cancelled"}
    assert (job.failed, job.succeeded, job.chunks_done) == (len(rows), 0, len(rows) // 25)
    assert [e["detail"]["status"] for e in _events(stack)] == ["FAILED"]


def test_passing_max_failures_stops_the_job_and_fails_it(
    stack: Stack, image_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 300 lines that all fail (404s on loopback): 4% tolerated, passed at 100 finished lines,
    # within the first invocation's 8 chunks (WorkBatchSize) of 16.
    fetched = _counting_fetches(monkeypatch)
    _upload(
        stack,
        "bad.txt",
        "\n".join(f"{image_server}/missing-{i}.jpg" for i in range(300)),
        {"max-failures": "4%"},
    )
    stack.run()
    job_id = stack.only_job_id()
    lines = _exactly_once(stack, job_id, 300)
    codes = Counter(line["error"]["code"] for line in lines)
    assert codes["http_error"] >= 100 and codes["cancelled"] > 0
    assert len(fetched) == codes["http_error"]  # the cancelled lines were never fetched
    job, summary = stack.job(job_id), stack.summary(job_id)
    assert job.status == summary["status"] == "FAILED"
    assert (job.error or "").startswith("tolerated_failures_exceeded: ") and summary["error"] == job.error
    assert summary["stop"] == {
        "reason": "tolerated_failures_exceeded",
        "threshold": "max-failures 4%",
        "requested_at": job.stop_requested_at,
    }
    (event,) = _events(stack)
    assert event["detail"]["status"] == "FAILED" and event["detail"]["reason"] == job.error


def test_one_event_per_state_change_under_redelivery(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    _upload(stack, "once.txt", "ftp://x/1.jpg\n", {})
    stack.run()
    job_id = stack.only_job_id()
    assert len(_events(stack)) == 1
    # The finalize message again, twice: the job is final and its event was put.
    finalize_url, _ = stack.queue("FinalizeQueue")
    for _ in range(2):
        stack.sqs.send_message(QueueUrl=finalize_url, MessageBody=finalize_body(job_id))
    stack.run()
    assert _events(stack) == []


def test_an_event_that_could_not_be_put_is_put_by_the_redelivery(stack: Stack) -> None:
    """PutEvents fails once: the finalize raises (message comes back), the next puts it once."""
    from batchpredict import aws

    _upload(stack, "flaky.txt", "ftp://x/1.jpg\n", {})
    stack.deliver("ManifestQueue", split_manifest.lambda_handler)
    stack.deliver("WorkQueue", predict.lambda_handler)
    job_id = stack.only_job_id()
    jobs, results = JobStore(stack.dynamodb, stack.table), ResultStore(stack.s3, stack.output_bucket)
    real = aws.client("events")

    class Flaky:
        calls = 0

        def put_events(self, **kwargs: Any) -> Any:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise ConnectionError("EventBridge unreachable")
            return real.put_events(**kwargs)

    merges = MergeStore(stack.dynamodb, stack.table)
    finalize_queue = Queue(stack.sqs, stack.queue("FinalizeQueue")[0])
    finalizer = Finalizer(
        jobs, results, merges, finalize_queue, events=JobEvents(Flaky(), stack.plan.event_bus)
    )
    with pytest.raises(ConnectionError):
        finalizer.finalize(job_id)
    assert stack.job(job_id).status == JobStatus.COMPLETED_WITH_ERRORS and _events(stack) == []
    finalizer.finalize(job_id)  # the redelivery
    finalizer.finalize(job_id)  # and another: nothing more
    (event,) = _events(stack)
    assert event["detail"]["status"] == "COMPLETED_WITH_ERRORS" and Flaky.calls == 2
    finalize.finalizer.cache_clear()


# --- no job stays open for ever: the sweeper, and the manifest dead-letter queue -----------------


def _counted_not_finalized(stack: Stack, key: str) -> str:
    """A job whose chunks are all counted, its finalize message waiting: finalize is next."""
    _upload(stack, key, "ftp://x/1.jpg\nftp://x/2.jpg\n", {})
    stack.deliver("ManifestQueue", split_manifest.lambda_handler)
    stack.deliver("WorkQueue", predict.lambda_handler)
    job_id = stack.only_job_id()
    assert stack.job(job_id).all_chunks_done and stack.depth("FinalizeQueue") == 1
    return job_id


def _late_sweeper() -> Sweeper:
    """The sweeper as wired from the functions' settings, its clock a day ahead: every open job
    is past its deadline."""
    wired = wiring.sweeper(sweep_config(os.environ))
    return Sweeper(wired.jobs, wired.results, wired.events, now=lambda: time.time() + 86_400)


def test_a_finalize_that_loses_to_the_sweeper_leaves_its_ending_alone(stack: Stack) -> None:
    job_id = _counted_not_finalized(stack, "late.txt")
    finalizer, sweeper = wiring.finalizer(finalize_config(os.environ)), _late_sweeper()
    merge = finalizer.merger.run

    def swept_meanwhile(*args: Any, **kwargs: Any) -> Any:  # the job times out while finalize merges
        outcome = merge(*args, **kwargs)
        assert [job.job_id for job in sweeper.sweep().ended] == [job_id]
        return outcome

    finalizer.merger.run = swept_meanwhile  # type: ignore[method-assign]

    assert finalizer.finalize(job_id) is None

    job, summary = stack.job(job_id), stack.summary(job_id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.startswith("timed_out: still RUNNING at its deadline")
    assert (summary["status"], summary["error"], summary["total"]) == ("FAILED", job.error, 2)
    assert [(e["detail"]["status"], e["detail"]["reason"]) for e in _events(stack)] == [("FAILED", job.error)]


def test_a_sweeper_that_loses_to_a_finalize_writes_nothing(stack: Stack) -> None:
    job_id = _counted_not_finalized(stack, "just-in-time.txt")
    finalizer, sweeper = wiring.finalizer(finalize_config(os.environ)), _late_sweeper()
    expire = sweeper.jobs.expire

    def finalized_first(*args: Any, **kwargs: Any) -> Any:  # finalize ends it between read and write
        assert finalizer.finalize(job_id) is not None
        return expire(*args, **kwargs)

    sweeper.jobs.expire = finalized_first  # type: ignore[method-assign]

    report = sweeper.sweep()

    assert (report.ended, report.lost) == ([], [job_id])
    job, summary = stack.job(job_id), stack.summary(job_id)
    assert job.status is JobStatus.COMPLETED_WITH_ERRORS and job.error is None
    assert summary["status"] == "COMPLETED_WITH_ERRORS" and "error" not in summary
    assert [e["detail"]["status"] for e in _events(stack)] == ["COMPLETED_WITH_ERRORS"]


def test_the_scheduled_sweep_ends_a_job_past_its_timeout(stack: Stack) -> None:
    job_id = "job-timed"
    minute_ago = JobStore(stack.dynamodb, stack.table, wall=lambda: time.time() - 60)
    minute_ago.create(
        job_id, f"s3://{stack.input_bucket}/manifests/t.txt", "m-1", options={"timeout_seconds": 10}
    )
    minute_ago.create("job-fresh", f"s3://{stack.input_bucket}/manifests/f.txt", "m-2")

    answer = sweep.lambda_handler(scheduled_event("sweep"), LocalContext("SweepFunction", timeout_seconds=30))

    assert answer["ended"] == {job_id: "FAILED"} and answer["looked_at"] == 2
    job = stack.job(job_id)
    assert job.error is not None and job.error.endswith("(its timeout of 10 s)")
    assert stack.summary(job_id)["error"] == job.error
    assert stack.job("job-fresh").status is JobStatus.SPLITTING
    assert [e["detail"]["job_id"] for e in _events(stack)] == [job_id]
    sweep.sweeper.cache_clear()


def _upload_event(stack: Stack, key: str) -> str:
    """Upload ``key`` and take its S3 event off the manifest queue (its body; S3's test event,
    sent when the notification was set up, goes too)."""
    _upload(stack, key, "ftp://x/1.jpg\n", {})
    manifest_url = stack.queue("ManifestQueue")[0]
    messages = stack.sqs.receive_message(QueueUrl=manifest_url, MaxNumberOfMessages=10)["Messages"]
    for message in messages:
        stack.sqs.delete_message(QueueUrl=manifest_url, ReceiptHandle=message["ReceiptHandle"])
    (event,) = [m["Body"] for m in messages if "Records" in json.loads(m["Body"])]
    return event


def _dead_lettered(stack: Stack, body: str) -> ManifestObject:
    """``body`` on the manifest dead-letter queue, as SQS moves it after split failed every receive."""
    stack.sqs.send_message(QueueUrl=stack.queue("ManifestDeadLetterQueue")[0], MessageBody=body)
    (manifest,) = parse_manifest_message(body).objects
    return manifest


def test_a_dead_lettered_manifest_fails_the_job_it_left_splitting(stack: Stack) -> None:
    # A job that split (a duplicate of its event was dead-lettered): it is not the DLQ's business.
    fine_event = _upload_event(stack, "fine.txt")
    stack.sqs.send_message(QueueUrl=stack.queue("ManifestQueue")[0], MessageBody=fine_event)
    stack.run()
    _events(stack)
    fine = _dead_lettered(stack, fine_event)
    # split died after creating the job (left SPLITTING), and before creating it.
    crashed = _dead_lettered(stack, _upload_event(stack, "crashed.txt"))
    assert JobStore(stack.dynamodb, stack.table).create(crashed.job_id, crashed.uri, "m-1")
    never = _dead_lettered(stack, _upload_event(stack, "never.txt"))

    while stack.deliver("ManifestDeadLetterQueue", reconcile.lambda_handler):
        pass

    for manifest in (crashed, never):
        job, summary = stack.job(manifest.job_id), stack.summary(manifest.job_id)
        assert job.status is JobStatus.FAILED and job.error is not None
        assert job.error.startswith(f"manifest {manifest.uri} could not be split: split_manifest failed")
        assert (summary["status"], summary["error"], summary["manifest_uri"]) == (
            "FAILED",
            job.error,
            manifest.uri,
        )
    assert stack.job(fine.job_id).status is JobStatus.COMPLETED_WITH_ERRORS
    events = sorted((e["detail"]["job_id"], e["detail"]["status"]) for e in _events(stack))
    assert events == sorted([(crashed.job_id, "FAILED"), (never.job_id, "FAILED")])
    assert stack.depth("ManifestDeadLetterQueue") == 0


def test_the_local_stack_plays_the_sweepers_schedule_with_deadlines_of_its_own(stack: Stack) -> None:
    (schedule,) = stack.plan.schedules
    assert (schedule.function, schedule.handler) == (
        "SweepFunction",
        "batchpredict.handlers.sweep.lambda_handler",
    )
    assert schedule.period_seconds == 3.0 and schedule.timeout_seconds == 0.2  # capped as the others
    # Deadlines from the local numbers: a split gets the manifest queue's 5 receives x its local
    # visibility (6 x the 0.2 s cap, whole seconds: 2 s), predict one worker's batch at a time.
    for function in ("SplitManifestFunction", "SweepFunction"):
        env = stack.plan.functions[function].environment
        assert (env["DEADLINE_SPLIT_SECONDS"], env["PREDICT_MAX_CONCURRENCY"]) == ("10", "1")
    assert wiring.job_store(sweep_config(schedule.environment).tables).deadlines.split_seconds == 10


def test_the_local_stacks_fetching_functions_send_the_default_user_agent(stack: Stack) -> None:
    # Provisioned from the template's parameter defaults, as a deployed stack's functions are.
    for function in ("PredictFunction", "PredictApiFunction"):
        limits = fetch_limits(stack.plan.functions[function].environment)
        assert (limits.user_agent, limits.robots_txt) == (DEFAULT_USER_AGENT, False), function


def test_a_split_that_crashes_after_creating_its_job_fails_it_at_once(stack: Stack) -> None:
    # No test hook: the real split_manifest, whose work queue is gone, so sending the first
    # chunks raises (NonExistentQueue, the sender's fault) after the JOB record exists. It used
    # to escape split and leave the job SPLITTING through every redelivery.
    stack.sqs.delete_queue(QueueUrl=stack.queue("WorkQueue")[0])
    _upload(stack, "crash.txt", "https://img.example/a.jpg\n", {})

    while stack.deliver("ManifestQueue", split_manifest.lambda_handler):
        pass

    job_id = stack.only_job_id()
    job = stack.job(job_id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.startswith("manifest s3://") and "could not be split: QueueDoesNotExist" in job.error
    assert "NonExistentQueue" in job.error
    assert stack.summary(job_id)["error"] == job.error
    assert [(e["detail"]["job_id"], e["detail"]["status"]) for e in _events(stack)] == [(job_id, "FAILED")]
    assert stack.depth("ManifestQueue") == 0  # handled, not left to redeliver into the DLQ
