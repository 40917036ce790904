"""DynamoDB adapter: the JOB record, its counter shards, the per-line IMG# rows, CHUNK# markers.

Nothing a running job writes shares one partition key, so no item or key of a job is hot:

* ``pk = {job}``, ``sk = JOB``: the record (status, manifest, totals of the split, results).
* ``pk = {job}#S{s:02d}`` (s = chunk % COUNTER_SHARDS), ``sk = COUNT``: one counter shard, and the
  ``CHUNK#``/``CLAIM#`` items of its chunks. A job's counts are the shards' sum, read with the
  JOB record in one BatchGetItem (``JobStore.get``).
* ``pk = {job}#{index // PAGE_LINES}``, ``sk = IMG#000000042``: result rows
  (``records.ResultRecord.to_item``), a page of 1,000 lines a partition key; one Query a page,
  pages in order = manifest order.

Counting a chunk is one transaction (marker put with a not-exists condition + counter ADD on
its shard), so a redelivered chunk is never counted twice.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeAlias

from boto3.dynamodb.types import DYNAMODB_CONTEXT, TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from batchpredict.costs import TRANSACTION_WRITE_FACTOR, ChunkUsage, write_units
from batchpredict.deadlines import DeadlineSettings, timeout_deadline
from batchpredict.records import IMG_PREFIX, PAGE_LINES, ResultRecord, img_sk, page_of, page_pk
from batchpredict.throttling import Backoff, cancellation_reasons

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        KeysAndAttributesUnionTypeDef,
        QueryInputPaginateTypeDef,
        TransactWriteItemTypeDef,
        UpdateItemInputTypeDef,
        WriteRequestTypeDef,
        WriteRequestUnionTypeDef,
    )

    # An item as the low-level client sends and returns it: {"pk": {"S": "job-1"}, ...}.
    Item: TypeAlias = dict[str, AttributeValueTypeDef]

BATCH_WRITE_LIMIT = 25  # items per BatchWriteItem call (AWS limit)
BATCH_GET_LIMIT = 100  # keys per BatchGetItem call (AWS limit)
JOB_SK = "JOB"
COUNT_SK = "COUNT"
# Counter shards a job's chunks are spread over (chunk % COUNTER_SHARDS). Fixed: a job's counts
# are the sum of exactly these items. 16: a shard key takes 5 WCU a chunk (claim 1, marker and
# counter 2 each in the transaction), so 16 keys hold ~3,200 chunks/s under 1,000 WCU/s each.
COUNTER_SHARDS = 16
# What the shards sum (``Job`` fields); the JOB record's own values are added, so a job counted
# before the shards existed still reads right.
# ``deferred_lines``: lines waiting for their host's turn (batch.py's deferrals add them, the count of
# their chunk takes them off again).
COUNTERS = (
    "succeeded",
    "failed",
    "chunks_done",
    "compute_ms",
    "compute_mb_ms",
    "invocations",
    "write_units",
    "deferred_lines",
)
CHUNK_PREFIX = "CHUNK#"
CLAIM_PREFIX = "CLAIM#"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class JobStatus(StrEnum):
    SPLITTING = "SPLITTING"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"  # stopping (cancel, or max-failures passed): finalize ends it
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


FINAL_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_ERRORS, JobStatus.FAILED, JobStatus.CANCELLED}
)
# Jobs whose chunks are no longer fetched or predicted: their lines end FAILED `cancelled`.
STOPPED_STATUSES = frozenset({JobStatus.CANCELLING, JobStatus.CANCELLED, JobStatus.FAILED})
# A job may be cancelled (or stopped by its failure threshold) only from these.
CANCELLABLE_STATUSES = frozenset({JobStatus.SPLITTING, JobStatus.RUNNING})
# Not final yet: each has a deadline (deadlines.py), past which the sweeper ends it.
OPEN_STATUSES = (JobStatus.SPLITTING, JobStatus.RUNNING, JobStatus.CANCELLING)

# Global secondary indexes (template.yaml and the local stack): sparse, only JOB records carry
# both key attributes (IMG# rows have a status but no created_at).
STATUS_INDEX = "by-status"  # status + created_at: `jobs --status/--since/--name`
MANIFEST_INDEX = "by-manifest"  # manifest_uri + created_at: the jobs of one manifest


def page_count(total: int) -> int:
    return math.ceil(total / PAGE_LINES)


def shard_pk(job_id: str, chunk: int) -> str:
    """The partition key of a chunk's counter shard, marker and claim."""
    return f"{job_id}#S{chunk % COUNTER_SHARDS:02d}"


def chunk_sk(chunk: int) -> str:
    return f"{CHUNK_PREFIX}{chunk:06d}"


def claim_sk(chunk: int) -> str:
    return f"{CLAIM_PREFIX}{chunk:06d}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_dynamo(value: Mapping[str, Any]) -> Item:
    """A JSON-able dict as a DynamoDB item: what boto3's TypeSerializer makes of the dict after a
    JSON round trip (floats as their shortest repr, read back as Decimals).

    Items of plain str, int, float, bool, None, dict (str keys), list and tuple are built
    directly, ~3x faster (an IMG# row is ~50 values); anything else takes the round trip itself,
    so odd values convert, or fail, exactly as they did.
    """
    try:
        return {_key(k): _attribute(v) for k, v in value.items()}
    except (_UnusualValueError, RecursionError):
        plain = json.loads(json.dumps(value), parse_float=Decimal)
        return {k: _serializer.serialize(v) for k, v in plain.items()}


class _UnusualValueError(Exception):
    """A value the direct conversion leaves to the JSON round trip."""


def _key(key: Any) -> str:
    if type(key) is not str:
        raise _UnusualValueError
    return key


def _attribute(value: Any) -> AttributeValueTypeDef:
    kind = type(value)
    if kind is str:
        return {"S": value}
    if value is None:
        return {"NULL": True}
    if kind is bool:
        return {"BOOL": value}
    if kind is int:
        return {"N": _number(value)}
    if kind is float:
        if not math.isfinite(value):
            raise _UnusualValueError  # JSON would write NaN/Infinity, which TypeSerializer refuses
        return {"N": _number(Decimal(float.__repr__(value)))}  # json.dumps writes float.__repr__
    if kind is dict:
        return {"M": {_key(k): _attribute(v) for k, v in value.items()}}
    if kind is list or kind is tuple:
        return {"L": [_attribute(v) for v in value]}
    raise _UnusualValueError


def _number(value: int | Decimal) -> str:
    # TypeSerializer's N: the number in DynamoDB's decimal context (38 digits, which traps
    # rounding and overflow rather than storing something else).
    return str(DYNAMODB_CONTEXT.create_decimal(value))


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def from_dynamo(item: Mapping[str, AttributeValueTypeDef]) -> dict[str, Any]:
    return {k: _plain(_deserializer.deserialize(v)) for k, v in item.items()}


@dataclass(frozen=True)
class Job:
    job_id: str
    status: JobStatus
    manifest_uri: str
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    chunks_total: int = 0
    chunks_done: int = 0
    split_done: bool = False
    model: str | None = None
    created_at: str = ""
    updated_at: str = ""
    completed_at: str | None = None
    results_uri: str | None = None
    error: str | None = None
    split_message_id: str | None = None
    position: dict[str, Any] = field(default_factory=dict)
    manifest_version: str | None = None
    # Per-job options (options.JobOptions, from the manifest's S3 user metadata).
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    top_k: int | None = None
    max_failures: str | None = None  # options.MaxFailures' canonical form (from_stored reads it)
    timeout_seconds: int | None = None  # how long the job may run (x-amz-meta-timeout)
    notify: list[str] = field(default_factory=list)
    fidelity: str | None = None  # x-amz-meta-fidelity as stored (None: exact)
    host_rps: str | None = None  # x-amz-meta-host-rps as stored (None: the stack's HOST_RPS)
    robots: str | None = None  # x-amz-meta-robots: "ignore", or None (honour)
    # Epoch seconds past which the sweeper ends the job (deadlines.py); timeout_at: created +
    # timeout_seconds, the deadline that never moves.
    deadline_at: int | None = None
    timeout_at: int | None = None
    # Why a CANCELLING job stops (None: a user's cancel) and what finalize should say.
    stop_reason: str | None = None
    stop_detail: str | None = None
    stop_requested_at: str | None = None
    # The final status whose event is still to be put (events.announce).
    event_due: str | None = None
    # What predict measured (costs.ChunkUsage, summed over the counted chunks).
    compute_ms: int = 0
    compute_mb_ms: int = 0
    invocations: int = 0
    write_units: int = 0
    deferred_lines: int = 0

    @property
    def usage(self) -> dict[str, int]:
        return {
            "compute_ms": self.compute_ms,
            "compute_mb_ms": self.compute_mb_ms,
            "invocations": self.invocations,
            "write_units": self.write_units,
        }

    @property
    def all_chunks_done(self) -> bool:
        return self.split_done and self.chunks_done >= self.chunks_total

    @classmethod
    def from_item(cls, item: Mapping[str, AttributeValueTypeDef]) -> Job:
        data = from_dynamo(item)
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        return cls(**(values | {"job_id": data["pk"], "status": JobStatus(data["status"])}))

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__} | {"status": self.status.value}


class JobStore:
    """Every DynamoDB call of the pipeline.

    Writes that DynamoDB throttles are retried with backoff (``throttling.Backoff``) until the
    call's ``deadline`` (``time.monotonic`` seconds; ``throttling.DEFAULT_BUDGET_SECONDS`` from
    now when not given), then raised.

    ``deadlines``: what the job deadlines set at create, checkpoint and finish_split are made of;
    ``wall``: epoch seconds, for them.
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        *,
        ttl_seconds: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], str] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        deadlines: DeadlineSettings | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.table = table
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self.deadlines = deadlines or DeadlineSettings()
        self._wall = wall
        self.backoff = Backoff(sleep=sleep, clock=monotonic)

    def _key(self, pk: str, sk: str) -> Item:
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    def _shard_keys(self, job_id: str) -> list[Item]:
        return [self._key(shard_pk(job_id, s), COUNT_SK) for s in range(COUNTER_SHARDS)]

    def _expiry(self) -> dict[str, Any]:
        return {"expires_at": int(time.time()) + self.ttl_seconds} if self.ttl_seconds else {}

    # --- the JOB record ---------------------------------------------------------------------

    def create(
        self,
        job_id: str,
        manifest_uri: str,
        split_message_id: str,
        *,
        manifest_version: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> bool:
        """Put a new SPLITTING job and its zeroed counter shards, in one transaction; False if the
        job already exists (a duplicate event).

        ``options``: the JOB attributes of the job's options (options.JobOptions.as_item). The
        job's deadline: its ``timeout_seconds`` option from now, else the splitting one.
        """
        now = self._clock()
        created = self._wall()
        timeout = (options or {}).get("timeout_seconds")
        fixed = {"timeout_at": timeout_deadline(created, int(timeout))} if timeout else {}
        deadline = fixed.get("timeout_at") or self.deadlines.splitting(created)
        item = (
            (options or {})
            | {
                "pk": job_id,
                "sk": JOB_SK,
                "status": JobStatus.SPLITTING.value,
                "manifest_uri": manifest_uri,
                "total": 0,
                "succeeded": 0,
                "failed": 0,
                "chunks_total": 0,
                "chunks_done": 0,
                "split_done": False,
                "created_at": now,
                "updated_at": now,
                "split_message_id": split_message_id,
                "position": {},
                "deadline_at": deadline,
            }
            | fixed
            | ({"manifest_version": manifest_version} if manifest_version else {})
            | self._expiry()
        )
        put_job: TransactWriteItemTypeDef = {
            "Put": {
                "TableName": self.table,
                "Item": to_dynamo(item),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }
        # The shards exist from the start, so counting can require them (a chunk of a job that
        # is gone fails loudly instead of creating counts nobody reads).
        shards: list[TransactWriteItemTypeDef] = [
            {"Put": {"TableName": self.table, "Item": key | to_dynamo({"updated_at": now} | self._expiry())}}
            for key in self._shard_keys(job_id)
        ]
        try:
            self.backoff.call(lambda: self.client.transact_write_items(TransactItems=[put_job, *shards]))
        except ClientError as exc:
            if cancellation_reasons(exc)[:1] == ["ConditionalCheckFailed"]:
                return False
            raise
        return True

    def get(self, job_id: str) -> Job | None:
        """The JOB record with its counts summed over the shards (one BatchGetItem)."""
        items = self._get_items([self._key(job_id, JOB_SK), *self._shard_keys(job_id)])
        record = items.pop((job_id, JOB_SK), None)
        return _summed(Job.from_item(record), items.values()) if record else None

    def may_be_done(self, job_id: str, chunk: int) -> bool:
        """Whether the job could be done, from the JOB record and ``chunk``'s own shard only
        (2 consistent reads): False while the split goes on or that shard still misses chunks.

        Only True calls for the full read (``get``). The last chunk counted always sees True:
        its shard is complete once it is, so completion is never missed.
        """
        shard_key = self._key(shard_pk(job_id, chunk), COUNT_SK)
        items = self._get_items([self._key(job_id, JOB_SK), shard_key])
        record = items.get((job_id, JOB_SK))
        if record is None:
            return False
        job = Job.from_item(record)
        if not job.split_done or job.status in FINAL_STATUSES:
            return False
        shard = from_dynamo(items.get((shard_key["pk"]["S"], COUNT_SK), {}))
        expected = len(range(chunk % COUNTER_SHARDS, job.chunks_total, COUNTER_SHARDS))
        return int(shard.get("chunks_done", 0)) >= expected

    def _with_counts(self, job: Job) -> Job:
        return _summed(job, self._get_items(self._shard_keys(job.job_id)).values())

    def _get_items(self, keys: list[Item], consistent: bool = True) -> dict[tuple[str, str], Item]:
        """BatchGetItem (strongly consistent unless told); UnprocessedKeys asked again with backoff."""
        found: dict[tuple[str, str], Item] = {}
        deadline = self.backoff.deadline()
        for start in range(0, len(keys), BATCH_GET_LIMIT):
            request: Mapping[str, KeysAndAttributesUnionTypeDef] = {
                self.table: {"Keys": keys[start : start + BATCH_GET_LIMIT], "ConsistentRead": consistent}
            }
            responses = self.backoff.until_processed(
                lambda pending: self.client.batch_get_item(RequestItems=pending),
                request,
                lambda response: response.get("UnprocessedKeys") or {},
                deadline,
            )
            for response in responses:
                for item in response.get("Responses", {}).get(self.table, []):
                    found[(item["pk"]["S"], item["sk"]["S"])] = item
        return found

    def _update(
        self,
        job_id: str,
        expression: str,
        values: dict[str, Any],
        condition: str | None = None,
        names: dict[str, str] | None = None,
    ) -> Job | None:
        """An UpdateItem on the JOB; the job with its counts, None when the condition did not hold."""
        kwargs: UpdateItemInputTypeDef = {
            "TableName": self.table,
            "Key": self._key(job_id, JOB_SK),
            "UpdateExpression": expression,
            "ExpressionAttributeValues": to_dynamo(values | {":now": self._clock()}),
            "ReturnValues": "ALL_NEW",
        }
        if condition:
            kwargs["ConditionExpression"] = condition
        if names:
            kwargs["ExpressionAttributeNames"] = names
        try:
            attributes = self.backoff.call(lambda: self.client.update_item(**kwargs))["Attributes"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return None
            raise
        return self._with_counts(Job.from_item(attributes))

    def checkpoint(self, job_id: str, position: dict[str, Any]) -> None:
        """Remember where a long split stopped, for the continuation (and for people looking);
        the continuation gets a split's time again (the job's own timeout stays)."""
        self._update(
            job_id,
            "SET #p = :p, updated_at = :now, " + _DEADLINE,
            {
                ":p": position,
                ":s": JobStatus.SPLITTING.value,
                ":x": JobStatus.CANCELLING.value,
                ":deadline": self.deadlines.splitting(self._wall()),
            },
            condition="#st IN (:s, :x)",
            names={"#p": "position", "#st": "status"},
        )

    def finish_split(self, job_id: str, total: int, chunks_total: int) -> Job | None:
        """SPLITTING -> RUNNING with the totals and the deadline of a job of that many chunks
        (unless it has a timeout of its own); a job cancelled meanwhile gets its totals and
        stays CANCELLING."""
        values = {
            ":t": total,
            ":c": chunks_total,
            ":y": True,
            ":deadline": self.deadlines.running(self._wall(), chunks_total),
        }
        names = {"#t": "total", "#st": "status"}
        running = self._update(
            job_id,
            "SET #t = :t, chunks_total = :c, split_done = :y, #st = :r, updated_at = :now, " + _DEADLINE,
            values | {":r": JobStatus.RUNNING.value, ":s": JobStatus.SPLITTING.value},
            condition="#st = :s",
            names=names,
        )
        return running or self._update(
            job_id,
            "SET #t = :t, chunks_total = :c, split_done = :y, updated_at = :now, " + _DEADLINE,
            values | {":x": JobStatus.CANCELLING.value},
            condition="#st = :x",
            names=names,
        )

    def status(self, job_id: str) -> JobStatus | None:
        """Just the status (a consistent read of one attribute): predict asks once per job and
        invocation whether to fetch its chunks at all."""
        item = self.client.get_item(
            TableName=self.table,
            Key=self._key(job_id, JOB_SK),
            ConsistentRead=True,
            ProjectionExpression="#st",
            ExpressionAttributeNames={"#st": "status"},
        ).get("Item")
        return JobStatus(item["status"]["S"]) if item else None

    def cancel(self, job_id: str, reason: str | None = None, detail: str | None = None) -> Job | None:
        """SPLITTING/RUNNING -> CANCELLING (conditional); None if the job was not cancellable.

        ``reason`` None is a user's cancel (ends CANCELLED); a reason (e.g. the failure
        threshold) ends the job FAILED with it.
        """
        values: dict[str, Any] = {
            ":x": JobStatus.CANCELLING.value,
            ":s": JobStatus.SPLITTING.value,
            ":r": JobStatus.RUNNING.value,
        }
        expression = "SET #st = :x, stop_requested_at = :now, updated_at = :now"
        if reason:
            values |= {":why": reason, ":d": detail or reason}
            expression += ", stop_reason = :why, stop_detail = :d"
        return self._update(job_id, expression, values, condition="#st IN (:s, :r)", names={"#st": "status"})

    def fail(self, job_id: str, message: str) -> Job | None:
        """Mark a job FAILED (a manifest that cannot be read at all); final jobs stay as they are.

        The same update marks the FAILED event as due (events.announce puts it once)."""
        finals = {f":c{i}": s.value for i, s in enumerate(sorted(FINAL_STATUSES))}
        return self._failed(
            job_id, message, finals, f"attribute_exists(pk) AND NOT #st IN ({', '.join(finals)})"
        )

    def fail_split(self, job_id: str, message: str) -> Job | None:
        """FAILED (as ``fail``), but only a job whose split never finished: a dead-lettered
        manifest message ends its own job, not one that split and runs on."""
        values = {":s": JobStatus.SPLITTING.value, ":x": JobStatus.CANCELLING.value, ":no": False}
        return self._failed(job_id, message, values, "#st IN (:s, :x) AND split_done = :no")

    def _failed(self, job_id: str, message: str, values: dict[str, Any], condition: str) -> Job | None:
        return self._update(
            job_id,
            "SET #st = :f, #e = :e, event_due = :f, updated_at = :now, completed_at = :now",
            values | {":f": JobStatus.FAILED.value, ":e": message},
            condition=condition,
            names=_STATUS_ERROR,
        )

    def expire(
        self, job: Job, status: JobStatus, error: str, now: float, deadline: int | None = None
    ) -> Job | None:
        """End an overdue ``job`` (as read) with ``status`` and ``error``; None if it is no longer
        what was read: its status moved (a finalize, a cancel or a split got there first) or its
        deadline is no longer past at ``now`` (epoch seconds). ``deadline``: the one the caller
        worked out for a job written before deadlines existed (its JOB has none; it is set here).

        The one conditional write decides between the sweeper and anything finishing the job
        legitimately: the loser changes nothing."""
        values: dict[str, Any] = {":st": status.value, ":e": error, ":read": job.status.value}
        expression = "SET #st = :st, #e = :e, event_due = :st, completed_at = :now, updated_at = :now"
        if job.deadline_at is None:
            if deadline is None:
                raise ValueError(f"{job.job_id} has no deadline_at: give the one it is past")
            values[":d"] = deadline
            expression += ", deadline_at = :d"
            condition = "#st = :read AND attribute_not_exists(deadline_at)"
        else:
            values[":t"] = now
            condition = "#st = :read AND deadline_at < :t"
        return self._update(job.job_id, expression, values, condition=condition, names=_STATUS_ERROR)

    def complete(
        self, job_id: str, status: JobStatus, results_uri: str, error: str | None = None
    ) -> Job | None:
        """RUNNING/CANCELLING -> ``status`` (final), marking its event due; None if another
        finalize got there first."""
        values = {
            ":st": status.value,
            ":u": results_uri,
            ":r": JobStatus.RUNNING.value,
            ":x": JobStatus.CANCELLING.value,
        }
        expression = (
            "SET #st = :st, results_uri = :u, event_due = :st, completed_at = :now, updated_at = :now"
        )
        names = {"#st": "status"}
        if error:
            values[":e"] = error
            names["#e"] = "error"
            expression += ", #e = :e"
        return self._update(job_id, expression, values, condition="#st IN (:r, :x)", names=names)

    def claim_event(self, job_id: str, status: JobStatus) -> bool:
        """Take the right to put the ``status`` event (conditional REMOVE of event_due): of two
        deliveries at once, one wins."""
        claimed = self._update(
            job_id,
            "REMOVE event_due SET event_claimed_at = :now",
            {":st": status.value},
            condition="event_due = :st",
        )
        return claimed is not None

    def release_event(self, job_id: str, status: JobStatus) -> None:
        """The event could not be put: mark it due again, for the redelivery to put."""
        self._update(
            job_id,
            "SET event_due = :st, updated_at = :now",
            {":st": status.value},
            condition="#st = :st",
            names={"#st": "status"},
        )

    # --- chunks and rows --------------------------------------------------------------------

    def claim_chunk(
        self, job_id: str, chunk: int, lease_seconds: float, deadline: float | None = None
    ) -> bool:
        """Take the right to write a chunk for ``lease_seconds`` (the claimer's remaining time).

        Two deliveries of one chunk at once must not both write its part and rows: the loser
        could overwrite them after the winner counted them and finalize merged them. A claim
        whose lease ran out (its invocation ended without counting) can be taken over.
        """
        now = time.time()
        item = {"pk": shard_pk(job_id, chunk), "sk": claim_sk(chunk), "lease_until": now + lease_seconds}
        try:
            self.backoff.call(
                lambda: self.client.put_item(
                    TableName=self.table,
                    Item=to_dynamo(item | self._expiry()),
                    ConditionExpression="attribute_not_exists(pk) OR lease_until < :now",
                    ExpressionAttributeValues=to_dynamo({":now": now}),
                ),
                deadline,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def chunk_counted(self, job_id: str, chunk: int) -> bool:
        item = self.client.get_item(
            TableName=self.table,
            Key=self._key(shard_pk(job_id, chunk), chunk_sk(chunk)),
            ConsistentRead=True,
            ProjectionExpression="pk",
        ).get("Item")
        return item is not None

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
        """Marker + counters on the chunk's shard (and what the chunk cost) in one transaction.
        False if this chunk was counted before. ``undeferred``: the chunk's lines the job's
        ``deferred_lines`` counter holds (a deferred chunk's), taken off with the count."""
        shard = shard_pk(job_id, chunk)
        marker = {
            "pk": shard,
            "sk": chunk_sk(chunk),
            "succeeded": succeeded,
            "failed": failed,
            "counted_at": self._clock(),
        } | self._expiry()
        counters = {"succeeded": succeeded, "failed": failed, "chunks_done": 1}
        if undeferred:
            counters["deferred_lines"] = -undeferred
        if usage is not None:
            # The transaction's own writes: two items, each billed twice.
            spent = replace(usage, write_units=usage.write_units + 2 * TRANSACTION_WRITE_FACTOR)
            counters |= {name: value for name, value in spent.as_counters().items() if value}
        values: dict[str, Any] = {f":{name}": value for name, value in counters.items()}
        adds = ", ".join(f"{name} :{name}" for name in counters)
        expression = f"ADD {adds} SET updated_at = :now"
        values[":now"] = self._clock()
        if model:
            values[":m"] = model
            # The job's model is that of its first counted chunk: each shard keeps its first,
            # and when (``_summed`` takes the earliest).
            expression += ", model = if_not_exists(model, :m), model_since = if_not_exists(model_since, :now)"
        items: list[TransactWriteItemTypeDef] = [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": to_dynamo(marker),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {
                "Update": {
                    "TableName": self.table,
                    "Key": self._key(shard, COUNT_SK),
                    "UpdateExpression": expression,
                    "ConditionExpression": "attribute_exists(pk)",  # the job (and its shards) exist
                    "ExpressionAttributeValues": to_dynamo(values),
                }
            },
        ]
        try:
            # Throttled or conflicting transactions are sent again: the marker's condition makes
            # that safe (a chunk can never count twice).
            self.backoff.call(lambda: self.client.transact_write_items(TransactItems=items), deadline)
        except ClientError as exc:
            if cancellation_reasons(exc)[:1] == ["ConditionalCheckFailed"]:
                return False
            raise
        return True

    def add_deferred(self, job_id: str, chunk: int, lines: int, deadline: float | None = None) -> None:
        """``lines`` more (or, negative, fewer) of the job's lines wait for their host's turn."""
        self.backoff.call(
            lambda: self.client.update_item(
                TableName=self.table,
                Key=self._key(shard_pk(job_id, chunk), COUNT_SK),
                UpdateExpression="ADD deferred_lines :n",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":n": {"N": str(lines)}},
            ),
            deadline,
        )

    def put_results(self, records: Iterable[ResultRecord], deadline: float | None = None) -> int:
        """IMG# rows on their pages, 25 per BatchWriteItem; throttled calls and UnprocessedItems
        re-sent with backoff until ``deadline``, then raised.

        Returns the write units the rows cost (one per started KiB of each item, sized as JSON).
        """
        until = self.backoff.deadline() if deadline is None else deadline
        batch: list[WriteRequestTypeDef] = []
        units = 0
        for record in records:
            row = record.to_item() | self._expiry()
            units += write_units(len(json.dumps(row)))
            batch.append({"PutRequest": {"Item": to_dynamo(row)}})
            if len(batch) == BATCH_WRITE_LIMIT:
                self._batch_write(batch, until)
                batch = []
        if batch:
            self._batch_write(batch, until)
        return units

    def _batch_write(self, requests: Sequence[WriteRequestUnionTypeDef], deadline: float) -> None:
        self.backoff.until_processed(
            lambda pending: self.client.batch_write_item(RequestItems={self.table: pending}),
            requests,
            lambda response: response.get("UnprocessedItems", {}).get(self.table, []),
            deadline,
        )

    def list_jobs(
        self,
        statuses: Iterable[JobStatus] = tuple(JobStatus),
        *,
        since: str | None = None,
        name: str | None = None,
        limit: int = 20,
    ) -> list[Job]:
        """The newest ``limit`` jobs in ``statuses`` (created at or after ``since``, named
        ``name``), from the by-status index: one Query per status, no table scan."""
        found: list[tuple[str, str]] = []
        for status in statuses:
            found += self._query_index(status, since, name, limit)
        found.sort(reverse=True)
        jobs = (self.get(job_id) for _, job_id in found[:limit])
        return [job for job in jobs if job is not None]

    def open_jobs(self, status: JobStatus) -> Iterator[Job]:
        """Every job in ``status`` (one of OPEN_STATUSES), found through the by-status index
        (never a scan) and read back consistently in batches of 100 (their JOB records only, no
        counts): a job whose status has moved on since the index saw it is left out."""
        for page in self._index_pages(status, None, None):
            keys = [self._key(job_id, JOB_SK) for _, job_id in page]
            for item in self._get_items(keys).values():
                job = Job.from_item(item)
                if job.status == status:
                    yield job

    def _query_index(
        self, status: JobStatus, since: str | None, name: str | None, limit: int
    ) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for page in self._index_pages(status, since, name):
            found += page
            if len(found) >= limit:
                break
        return found[:limit]

    def _index_pages(
        self, status: JobStatus, since: str | None, name: str | None
    ) -> Iterator[list[tuple[str, str]]]:
        """(created_at, job id) of the jobs in ``status``, newest first, a Query page at a time."""
        condition = "#st = :st" + (" AND created_at >= :since" if since else "")
        values: dict[str, Any] = {":st": status.value} | ({":since": since} if since else {})
        names = {"#st": "status"}
        request: QueryInputPaginateTypeDef = {
            "TableName": self.table,
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ScanIndexForward": False,
        }
        if name:
            values[":n"] = name
            names["#n"] = "name"
            request["FilterExpression"] = "#n = :n"
        request["ExpressionAttributeValues"] = to_dynamo(values)
        for page in self.client.get_paginator("query").paginate(**request):
            yield [(item["created_at"]["S"], item["pk"]["S"]) for item in page["Items"]]

    def jobs_of_manifest(self, manifest_uri: str) -> list[Job]:
        """Every job of one manifest (s3://bucket/key: each uploaded version is a job), newest
        first, from the by-manifest index."""
        items = self.client.query(
            TableName=self.table,
            IndexName=MANIFEST_INDEX,
            KeyConditionExpression="manifest_uri = :u",
            ExpressionAttributeValues={":u": {"S": manifest_uri}},
            ScanIndexForward=False,
        )["Items"]
        jobs = (self.get(item["pk"]["S"]) for item in items)
        return [job for job in jobs if job is not None]

    def all_jobs(self) -> Iterator[Job]:
        """Every JOB record, with its counts. A filtered Scan: it reads the IMG# rows too, so it
        is fine for a user's table and the CLI's `jobs`, not for a table of millions."""
        paginator = self.client.get_paginator("scan")
        pages = paginator.paginate(
            TableName=self.table, FilterExpression="sk = :j", ExpressionAttributeValues={":j": {"S": JOB_SK}}
        )
        for page in pages:
            yield from (self._with_counts(Job.from_item(item)) for item in page["Items"])

    def query_results(self, job_id: str, page_size: int = 500) -> Iterator[ResultRecord]:
        """The job's result records in manifest order: one paginated Query a result page.

        While the job is still splitting its number of lines is unknown: pages are read until
        the first empty one.
        """
        job = self.get(job_id)
        pages = page_count(job.total) if job is not None and job.split_done else None
        page = 0
        while pages is None or page < pages:
            rows = self._query_page(job_id, page, page_size)
            first = next(rows, None)
            if first is None and pages is None:
                return
            if first is not None:
                yield first
                yield from rows
            page += 1

    def result_rows(self, lines: Iterable[tuple[str, int]]) -> dict[tuple[str, int], ResultRecord]:
        """The IMG# rows of these (job, index) lines that exist, eventually consistent: 0.5 RCU a
        row of up to 4 KB, 100 a BatchGetItem (a row written just now may be missed)."""
        keys = [self._key(page_pk(job, page_of(index)), img_sk(index)) for job, index in dict.fromkeys(lines)]
        rows = (ResultRecord.from_json(from_dynamo(item)) for item in self._get_items(keys, False).values())
        return {(row.job_id or "", row.index): row for row in rows}

    def _query_page(self, job_id: str, page: int, page_size: int) -> Iterator[ResultRecord]:
        paginator = self.client.get_paginator("query")
        pages = paginator.paginate(
            TableName=self.table,
            KeyConditionExpression="pk = :p AND begins_with(sk, :i)",
            ExpressionAttributeValues={":p": {"S": page_pk(job_id, page)}, ":i": {"S": IMG_PREFIX}},
            PaginationConfig={"PageSize": page_size},
        )
        for response in pages:
            for item in response["Items"]:
                yield ResultRecord.from_json(from_dynamo(item))  # its key and expires_at left out


# A job's deadline, moved on unless it has a timeout of its own (``:deadline``: the new one).
_DEADLINE = "deadline_at = if_not_exists(timeout_at, :deadline)"
_STATUS_ERROR = {"#st": "status", "#e": "error"}


def _summed(job: Job, shards: Iterable[Item]) -> Job:
    """``job`` with the counter shards' values added to its own, their latest update, and the
    model of the earliest counted chunk (the JOB's own model first, for a job counted on it)."""
    totals = {name: getattr(job, name) for name in COUNTERS}
    updated = job.updated_at
    models: list[tuple[str, str, str]] = []
    for item in shards:
        shard = from_dynamo(item)
        for name in COUNTERS:
            totals[name] += shard.get(name, 0)
        updated = max(updated, shard.get("updated_at", ""))
        if shard.get("model"):
            models.append((shard.get("model_since", ""), shard["pk"], shard["model"]))
    model = job.model or (min(models)[2] if models else None)
    return replace(job, **totals, model=model, updated_at=updated)
