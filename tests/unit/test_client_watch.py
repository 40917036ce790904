"""``Client.watch`` (``submit --wait``, ``status --wait``) returns a final job once its
_summary.json is there: writers put the final status first and the summary after it, so a
watcher that returned on the status alone could hand `report` a job with no summary yet."""

from __future__ import annotations

from typing import Any

import pytest

from batchpredict.cli import client as client_module
from batchpredict.cli.client import Client, StackRef
from batchpredict.jobs import Job, JobStatus
from batchpredict.results import summary_key
from tests.unit.fakes import FakeS3

JOB_ID = "job-0123456789abcdef0123"


class SummaryLater(FakeS3):
    """The summary is put by the job's writer after the watcher's ``late``-th look for it."""

    def __init__(self, late: int) -> None:
        super().__init__()
        self.late, self.heads = late, 0

    def head_object(self, **kwargs: Any) -> dict[str, Any]:
        self.heads += 1
        if self.heads == self.late:
            self.add("out", summary_key(JOB_ID), b'{"status": "FAILED"}')
        return super().head_object(**kwargs)


class FinalJobs:
    def get(self, job_id: str) -> Job:
        return Job(job_id, JobStatus.FAILED, "s3://in/manifests/m.txt", error="timed_out: …")


def _client(s3: FakeS3) -> Client:
    client = Client(StackRef("in", "out", "table"), s3=s3, dynamodb=object())  # type: ignore[arg-type]
    client.jobs = FinalJobs()  # type: ignore[assignment]
    return client


def test_a_final_job_is_returned_once_its_summary_is_there() -> None:
    s3 = SummaryLater(late=3)
    client = _client(s3)

    job = client.watch(JOB_ID, lambda _: None, interval=0.01)

    assert job.status is JobStatus.FAILED
    assert s3.heads == 3 and client.summary(JOB_ID) == {"status": "FAILED"}


def test_a_summary_that_never_comes_holds_the_watcher_only_for_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "SUMMARY_GRACE_SECONDS", 0.05)
    s3 = SummaryLater(late=-1)

    job = _client(s3).watch(JOB_ID, lambda _: None, interval=0.01)

    assert job.status is JobStatus.FAILED and s3.heads >= 2
