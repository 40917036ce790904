"""DynamoDB adapter: the JOB record, the per-line IMG# rows and the CHUNK# markers.

One table, ``pk`` = job id, ``sk`` = ``JOB`` | ``IMG#000000042`` | ``CHUNK#000017``.
Counting a chunk is one transaction (marker put with a not-exists condition + counter
ADD on the JOB), so a redelivered chunk is never counted twice.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from boto3.dynamodb.types import DYNAMODB_CONTEXT, TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from batchpredict.costs import TRANSACTION_WRITE_FACTOR, ChunkUsage, write_units

BATCH_WRITE_LIMIT = 25  # items per BatchWriteItem call (AWS limit)
BATCH_WRITE_ATTEMPTS = 8  # UnprocessedItems re-sent with exponential backoff, then raised
TRANSACT_ATTEMPTS = 5  # a chunk's counting transaction, retried on TransactionConflict
JOB_SK = "JOB"
IMG_PREFIX = "IMG#"
CHUNK_PREFIX = "CHUNK#"
CLAIM_PREFIX = "CLAIM#"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class JobStatus(StrEnum):
    SPLITTING = "SPLITTING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    FAILED = "FAILED"


FINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_ERRORS, JobStatus.FAILED})


def img_sk(index: int) -> str:
    return f"{IMG_PREFIX}{index:09d}"


def chunk_sk(chunk: int) -> str:
    return f"{CHUNK_PREFIX}{chunk:06d}"


def claim_sk(chunk: int) -> str:
    return f"{CLAIM_PREFIX}{chunk:06d}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_dynamo(value: dict[str, Any]) -> dict[str, Any]:
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


def _attribute(value: Any) -> dict[str, Any]:
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


def from_dynamo(item: dict[str, Any]) -> dict[str, Any]:
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
    # What predict measured (costs.ChunkUsage, summed over the counted chunks).
    compute_ms: int = 0
    compute_mb_ms: int = 0
    invocations: int = 0
    write_units: int = 0

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
    def from_item(cls, item: dict[str, Any]) -> Job:
        data = from_dynamo(item)
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        return cls(**(values | {"job_id": data["pk"], "status": JobStatus(data["status"])}))

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__} | {"status": self.status.value}


class JobStore:
    """Every DynamoDB call of the pipeline. ``client`` is a boto3 DynamoDB client."""

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        ttl_seconds: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self.client = client
        self.table = table
        self.ttl_seconds = ttl_seconds
        self._sleep = sleep
        self._clock = clock

    def _key(self, job_id: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": job_id}, "sk": {"S": sk}}

    def _expiry(self) -> dict[str, Any]:
        return {"expires_at": int(time.time()) + self.ttl_seconds} if self.ttl_seconds else {}

    # --- the JOB record ---------------------------------------------------------------------

    def create(self, job_id: str, manifest_uri: str, split_message_id: str) -> bool:
        """Put a new SPLITTING job; False if the job already exists (a duplicate event)."""
        now = self._clock()
        item = {
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
        } | self._expiry()
        try:
            self.client.put_item(
                TableName=self.table, Item=to_dynamo(item), ConditionExpression="attribute_not_exists(pk)"
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def get(self, job_id: str) -> Job | None:
        item = self.client.get_item(
            TableName=self.table, Key=self._key(job_id, JOB_SK), ConsistentRead=True
        ).get("Item")
        return Job.from_item(item) if item else None

    def _update(
        self,
        job_id: str,
        expression: str,
        values: dict[str, Any],
        condition: str | None = None,
        names: dict[str, str] | None = None,
    ) -> Job | None:
        """An UpdateItem on the JOB; None when the condition did not hold."""
        kwargs: dict[str, Any] = {
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
            return Job.from_item(self.client.update_item(**kwargs)["Attributes"])
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return None
            raise

    def checkpoint(self, job_id: str, position: dict[str, Any]) -> None:
        """Remember where a long split stopped, for the continuation (and for people looking)."""
        self._update(
            job_id,
            "SET #p = :p, updated_at = :now",
            {":p": position, ":s": JobStatus.SPLITTING.value},
            condition="#st = :s",
            names={"#p": "position", "#st": "status"},
        )

    def finish_split(self, job_id: str, total: int, chunks_total: int) -> Job | None:
        return self._update(
            job_id,
            "SET #t = :t, chunks_total = :c, split_done = :y, #st = :r, updated_at = :now",
            {
                ":t": total,
                ":c": chunks_total,
                ":y": True,
                ":r": JobStatus.RUNNING.value,
                ":s": JobStatus.SPLITTING.value,
            },
            condition="#st = :s",
            names={"#t": "total", "#st": "status"},
        )

    def fail(self, job_id: str, message: str) -> Job | None:
        """Mark a job FAILED (a manifest that cannot be read at all); final jobs stay as they are."""
        return self._update(
            job_id,
            "SET #st = :f, #e = :e, updated_at = :now, completed_at = :now",
            {
                ":f": JobStatus.FAILED.value,
                ":e": message,
                ":c1": JobStatus.COMPLETED.value,
                ":c2": JobStatus.COMPLETED_WITH_ERRORS.value,
            },
            condition="attribute_exists(pk) AND NOT #st IN (:f, :c1, :c2)",
            names={"#st": "status", "#e": "error"},
        )

    def complete(self, job_id: str, status: JobStatus, results_uri: str) -> Job | None:
        """RUNNING -> COMPLETED[_WITH_ERRORS]; None if another finalize got there first."""
        return self._update(
            job_id,
            "SET #st = :st, results_uri = :u, completed_at = :now, updated_at = :now",
            {":st": status.value, ":u": results_uri, ":r": JobStatus.RUNNING.value},
            condition="#st = :r",
            names={"#st": "status"},
        )

    # --- chunks and rows --------------------------------------------------------------------

    def claim_chunk(self, job_id: str, chunk: int, lease_seconds: float) -> bool:
        """Take the right to write a chunk for ``lease_seconds`` (the claimer's remaining time).

        Two deliveries of one chunk at once must not both write its part and rows: the loser
        could overwrite them after the winner counted them and finalize merged them. A claim
        whose lease ran out (its invocation ended without counting) can be taken over.
        """
        now = time.time()
        item = {"pk": job_id, "sk": claim_sk(chunk), "lease_until": now + lease_seconds} | self._expiry()
        try:
            self.client.put_item(
                TableName=self.table,
                Item=to_dynamo(item),
                ConditionExpression="attribute_not_exists(pk) OR lease_until < :now",
                ExpressionAttributeValues=to_dynamo({":now": now}),
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def chunk_counted(self, job_id: str, chunk: int) -> bool:
        item = self.client.get_item(
            TableName=self.table,
            Key=self._key(job_id, chunk_sk(chunk)),
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
    ) -> bool:
        """Marker + counters (and what the chunk cost) in one transaction. False if this chunk
        was counted before."""
        marker = {
            "pk": job_id,
            "sk": chunk_sk(chunk),
            "succeeded": succeeded,
            "failed": failed,
            "counted_at": self._clock(),
        } | self._expiry()
        counters = {"succeeded": succeeded, "failed": failed, "chunks_done": 1}
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
            expression += ", model = if_not_exists(model, :m)"
        for attempt in range(TRANSACT_ATTEMPTS):
            try:
                return self._transact_count(job_id, marker, expression, values)
            except ClientError as exc:
                reasons = [r.get("Code") for r in exc.response.get("CancellationReasons") or []]
                # Chunks of one job all update its JOB item, so concurrent ones conflict; the marker's
                # condition makes a retry safe (it can never count twice).
                if "TransactionConflict" not in reasons or attempt + 1 == TRANSACT_ATTEMPTS:
                    raise
                self._sleep(random.uniform(0.05, 0.2) * 2**attempt)
        raise AssertionError("unreachable")

    def _transact_count(
        self, job_id: str, marker: dict[str, Any], expression: str, values: dict[str, Any]
    ) -> bool:
        try:
            self.client.transact_write_items(
                TransactItems=[
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
                            "Key": self._key(job_id, JOB_SK),
                            "UpdateExpression": expression,
                            "ConditionExpression": "attribute_exists(pk)",
                            "ExpressionAttributeValues": to_dynamo(values),
                        }
                    },
                ]
            )
        except ClientError as exc:
            reasons = exc.response.get("CancellationReasons") or []
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                return False
            raise
        return True

    def put_results(self, records: Iterable[dict[str, Any]]) -> int:
        """IMG# rows, 25 per BatchWriteItem; UnprocessedItems re-sent with backoff, then raised.

        Returns the write units the rows cost (one per started KiB of each item, sized as JSON).
        """
        batch: list[dict[str, Any]] = []
        units = 0
        for record in records:
            row = {"pk": record["job_id"], "sk": img_sk(record["index"])} | record | self._expiry()
            units += write_units(len(json.dumps(row)))
            batch.append({"PutRequest": {"Item": to_dynamo(row)}})
            if len(batch) == BATCH_WRITE_LIMIT:
                self._batch_write(batch)
                batch = []
        if batch:
            self._batch_write(batch)
        return units

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        pending = requests
        for attempt in range(BATCH_WRITE_ATTEMPTS):
            response = self.client.batch_write_item(RequestItems={self.table: pending})
            pending = response.get("UnprocessedItems", {}).get(self.table, [])
            if not pending:
                return
            if attempt + 1 < BATCH_WRITE_ATTEMPTS:
                self._sleep(min(0.05 * 2**attempt, 2.0))
        raise RuntimeError(
            f"DynamoDB left {len(pending)} items unprocessed after {BATCH_WRITE_ATTEMPTS} attempts"
        )

    def all_jobs(self) -> Iterator[Job]:
        """Every JOB record. A filtered Scan: it reads the IMG# rows too, so it is fine for a
        user's table and the CLI's `jobs`, not for a table of millions (that needs an index)."""
        paginator = self.client.get_paginator("scan")
        pages = paginator.paginate(
            TableName=self.table, FilterExpression="sk = :j", ExpressionAttributeValues={":j": {"S": JOB_SK}}
        )
        for page in pages:
            yield from (Job.from_item(item) for item in page["Items"])

    def query_results(self, job_id: str, page_size: int = 500) -> Iterator[dict[str, Any]]:
        """The job's result records in manifest order (paginated Query)."""
        paginator = self.client.get_paginator("query")
        pages = paginator.paginate(
            TableName=self.table,
            KeyConditionExpression="pk = :j AND begins_with(sk, :p)",
            ExpressionAttributeValues={":j": {"S": job_id}, ":p": {"S": IMG_PREFIX}},
            PaginationConfig={"PageSize": page_size},
        )
        for page in pages:
            for item in page["Items"]:
                row = from_dynamo(item)
                for key in ("pk", "sk", "expires_at"):
                    row.pop(key, None)
                yield row
