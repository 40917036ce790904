"""In-memory stand-ins shared by the pipeline unit tests: the AWS clients (as boto3 answers),
the job store, a sleep that only records."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from botocore.exceptions import ClientError
from botocore.response import StreamingBody

from batchpredict.costs import ChunkUsage
from batchpredict.errors import ErrorCode, PredictionError
from batchpredict.fetch import Fetched
from batchpredict.jobs import CANCELLABLE_STATUSES, FINAL_STATUSES, Job, JobStatus
from batchpredict.records import ResultRecord

SQS_BATCH_ENTRIES = 10  # SendMessageBatch: at most 10 entries, distinct ids
# When FakeJobs ends a job (its completed_at, as JobStore writes it: ISO 8601).
ENDED_AT = "2025-01-01T00:10:00.000Z"


def client_error(code: str, operation: str, **response: Any) -> ClientError:
    """The error boto3 raises for an AWS error ``code``; ``response`` adds to the parsed response."""
    return ClientError({"Error": {"Code": code, "Message": code}, **response}, operation)


class SleepLog(list[float]):
    """A ``sleep`` that records what it was asked to wait instead of waiting, and the monotonic
    clock (``clock``, from ``now``) that its sleeps move."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


class FakeS3:
    """S3 in memory: ``objects[bucket][key]``, and ``add``'s versioned objects, which get_object
    reads by VersionId (and Range ``bytes=N-``) like S3. Records each get_object call (``gets``)
    and each body handed out (``opened``); raises ``error`` from get_object when set."""

    def __init__(self) -> None:
        self.objects: defaultdict[str, dict[str, bytes]] = defaultdict(dict)
        self.versions: dict[tuple[str, str, str], bytes] = {}
        self.gets: list[dict[str, Any]] = []
        self.opened: list[io.BytesIO] = []
        self.error: ClientError | None = None
        self.metadata: dict[str, dict[str, str]] = {}  # key -> user metadata (x-amz-meta-*)

    def add(self, bucket: str, key: str, data: bytes, version_id: str | None = None) -> None:
        if version_id is None:
            self.objects[bucket][key] = data
        else:
            self.versions[(bucket, key, version_id)] = data

    def _data(self, kwargs: dict[str, Any], operation: str) -> bytes:
        if self.error is not None:
            raise self.error
        bucket, key, version = kwargs["Bucket"], kwargs["Key"], kwargs.get("VersionId")
        if version is None:
            data = self.objects.get(bucket, {}).get(key)
        else:
            data = self.versions.get((bucket, key, version))
        if data is None:
            raise client_error("NoSuchKey" if operation == "GetObject" else "404", operation)
        return data

    def head_object(self, **kwargs: Any) -> dict[str, Any]:
        self._data(kwargs, "HeadObject")
        return {"Metadata": self.metadata.get(kwargs["Key"], {})}

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        self.gets.append(kwargs)
        data = self._data(kwargs, "GetObject")
        if "Range" in kwargs:
            first = int(kwargs["Range"].removeprefix("bytes=").removesuffix("-"))
            if first >= len(data):  # as S3 answers a range that starts at or past the end
                raise client_error("InvalidRange", "GetObject")
            data = data[first:]
        raw = io.BytesIO(data)
        self.opened.append(raw)
        return {"Body": StreamingBody(raw, len(data)), "ContentLength": len(data)}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:
        self.objects[Bucket][Key] = Body
        return {}

    def upload_fileobj(self, fileobj: Any, bucket: str, key: str, **_: Any) -> None:
        self.objects[bucket][key] = fileobj.read()


# (call number, entries of that call) -> the Failed list of SendMessageBatch's response
FailRule = Callable[[int, list[dict[str, str]]], list[dict[str, Any]]]


class FakeSQS:
    """SQS in memory, one client behind any number of queues (keyed by URL).

    Sending: ``sent`` holds every send_message's arguments, ``batches[url]`` every SendMessageBatch's
    entries, ``delivered[url]`` the bodies that got through, in order. ``fail`` decides a batch's
    Failed entries; a batch over ``payload_limit`` bytes is refused as SQS refuses it;
    ``on_batch`` runs after every batch. Receiving: receive_message hands out the ``receive``
    batches of bodies, one per call (``receives`` holds the calls' arguments); ``deleted`` holds
    the receipt handles deleted.
    """

    def __init__(
        self,
        *,
        fail: FailRule | None = None,
        payload_limit: int | None = None,
        on_batch: Callable[[], None] = lambda: None,
        receive: tuple[list[str], ...] = (),
    ) -> None:
        self.sent: list[dict[str, Any]] = []
        self.batches: defaultdict[str, list[list[dict[str, str]]]] = defaultdict(list)
        self.delivered: defaultdict[str, list[str]] = defaultdict(list)
        self._fail = fail
        self._payload_limit = payload_limit
        self._on_batch = on_batch
        self._receive = [
            [{"MessageId": f"m-{body}", "ReceiptHandle": f"r-{body}", "Body": body} for body in batch]
            for batch in receive
        ]
        self.deleted: list[str] = []
        self.receives: list[dict[str, Any]] = []

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self.sent.append(kwargs)
        self.delivered[kwargs["QueueUrl"]].append(kwargs["MessageBody"])
        return {"MessageId": f"m-{len(self.sent)}"}

    def send_message_batch(self, *, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        assert 1 <= len(Entries) <= SQS_BATCH_ENTRIES
        assert len({e["Id"] for e in Entries}) == len(Entries), "batch entry ids must be distinct"
        size = sum(len(e["MessageBody"].encode()) for e in Entries)
        if self._payload_limit is not None and size > self._payload_limit:
            raise client_error("AWS.SimpleQueueService.BatchRequestTooLong", "SendMessageBatch")
        batches = self.batches[QueueUrl]
        batches.append(list(Entries))
        failed = self._fail(len(batches), Entries) if self._fail else []
        failed_ids = {f["Id"] for f in failed}
        successful = [e for e in Entries if e["Id"] not in failed_ids]
        self.delivered[QueueUrl].extend(e["MessageBody"] for e in successful)
        self._on_batch()
        return {
            "Successful": [{"Id": e["Id"], "MessageId": f"m-{e['Id']}"} for e in successful],
            "Failed": failed,
        }

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.receives.append(kwargs)
        return {"Messages": self._receive.pop(0)} if self._receive else {}

    def delete_message_batch(self, Entries: list[dict[str, str]], **_: Any) -> dict[str, Any]:
        assert 1 <= len(Entries) <= SQS_BATCH_ENTRIES
        self.deleted += [e["ReceiptHandle"] for e in Entries]
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}


class FakeEvents:
    """EventBridge's put_events (for events.JobEvents), recording each event's detail."""

    def __init__(self) -> None:
        self.details: list[dict[str, Any]] = []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.details += [json.loads(e["Detail"]) for e in Entries]
        return {"FailedEntryCount": 0, "Entries": [{"EventId": str(len(self.details))}]}


class FakeJobs:
    """The JobStore calls ChunkWriter makes, in memory, with the same counted-once semantics."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.markers: set[int] = set()
        self.rows: list[ResultRecord] = []
        self.count_calls: list[tuple[int, int, int, str | None]] = []
        self.claims: set[int] = set()
        self.usages: list[ChunkUsage | None] = []
        self.row_reads: list[list[tuple[str, int]]] = []

    def chunk_counted(self, job_id: str, chunk: int) -> bool:
        return chunk in self.markers

    def claim_chunk(
        self, job_id: str, chunk: int, lease_seconds: float, deadline: float | None = None
    ) -> bool:
        if chunk in self.claims:
            return False
        self.claims.add(chunk)
        return True

    def put_results(self, records: list[ResultRecord], deadline: float | None = None) -> int:
        self.rows.extend(records)
        return len(records)  # a write unit a row

    def result_rows(self, lines: Iterable[tuple[str, int]]) -> dict[tuple[str, int], ResultRecord]:
        """The rows written of these (job, index) lines; each call's lines kept in ``row_reads``."""
        wanted = list(lines)
        self.row_reads.append(wanted)
        written = {(row.job_id or "", row.index): row for row in self.rows}
        return {line: written[line] for line in wanted if line in written}

    def count_chunk(
        self,
        job_id: str,
        chunk: int,
        succeeded: int,
        failed: int,
        model: str | None,
        usage: ChunkUsage | None = None,
        deadline: float | None = None,
        undeferred: int = 0,
    ) -> bool:
        self.count_calls.append((chunk, succeeded, failed, model))
        self.usages.append(usage)
        if chunk in self.markers:
            return False
        self.markers.add(chunk)
        self.job = replace(
            self.job,
            succeeded=self.job.succeeded + succeeded,
            failed=self.job.failed + failed,
            chunks_done=self.job.chunks_done + 1,
            model=self.job.model or model,
            deferred_lines=self.job.deferred_lines - undeferred,
        )
        return True

    def add_deferred(self, job_id: str, chunk: int, lines: int, deadline: float | None = None) -> None:
        self.job = replace(self.job, deferred_lines=self.job.deferred_lines + lines)

    def may_be_done(self, job_id: str, chunk: int) -> bool:
        return True  # the writer then reads the whole job, as it does when a shard is complete

    def get(self, job_id: str) -> Job | None:
        return self.job if job_id == self.job.job_id else None

    def complete(
        self, job_id: str, status: JobStatus, results_uri: str, error: str | None = None
    ) -> Job | None:
        if self.job.status not in (JobStatus.RUNNING, JobStatus.CANCELLING):
            return None
        self.job = replace(
            self.job,
            status=status,
            results_uri=results_uri,
            completed_at=ENDED_AT,
            error=error or self.job.error,
            event_due=status.value,
        )
        return self.job

    def status(self, job_id: str) -> JobStatus | None:
        return self.job.status if job_id == self.job.job_id else None

    def cancel(self, job_id: str, reason: str | None = None, detail: str | None = None) -> Job | None:
        if self.job.status not in CANCELLABLE_STATUSES:
            return None
        self.job = replace(self.job, status=JobStatus.CANCELLING, stop_reason=reason, stop_detail=detail)
        return self.job

    def claim_event(self, job_id: str, status: JobStatus) -> bool:
        if self.job.event_due != status.value:
            return False
        self.job = replace(self.job, event_due=None)
        return True

    def release_event(self, job_id: str, status: JobStatus) -> None:
        self.job = replace(self.job, event_due=status.value)

    def fail(self, job_id: str, message: str) -> Job | None:
        if self.job.status in FINAL_STATUSES:
            return None
        self.job = replace(
            self.job, status=JobStatus.FAILED, error=message, completed_at=ENDED_AT, event_due="FAILED"
        )
        return self.job


HANG = object()  # script entry: block until the fetch's deadline, then time out


class ScriptedFetcher:
    """``fetch(url, deadline)`` answers from a script per URL: one entry per call, the last
    repeating. Bytes are returned, exceptions raised; HANG waits out the deadline."""

    def __init__(self, scripts: dict[str, list[Any]], delays: dict[str, float] | None = None) -> None:
        self.scripts = scripts
        self.delays = delays or {}
        self.calls: dict[str, int] = {}
        self.deadlines: dict[str, float] = {}
        self.robots: dict[str, bool] = {}  # the robots= of each URL's latest call
        self._lock = threading.Lock()

    def fetch(self, url: str, deadline: float | None = None, *, robots: bool = True) -> Fetched:
        with self._lock:
            self.calls[url] = self.calls.get(url, 0) + 1
            self.robots[url] = robots
            script = self.scripts[url]
            answer = script[min(self.calls[url], len(script)) - 1]
            self.deadlines[url] = deadline or 0.0
        time.sleep(self.delays.get(url, 0.0))
        if answer is HANG:
            assert deadline is not None
            time.sleep(max(deadline - time.monotonic(), 0))
            raise PredictionError(ErrorCode.FETCH_TIMEOUT, f"{url} took too long", transient=False)
        if isinstance(answer, BaseException):
            raise answer
        return Fetched(answer, url)

    def close(self) -> None:
        pass
