"""Unit tests for jobs.py, the DynamoDB adapter, over small fake clients (no network, no moto)."""

from __future__ import annotations

import io
import itertools
import json
import random
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from batchpredict.costs import ChunkUsage
from batchpredict.errors import ErrorCode
from batchpredict.jobs import (
    BATCH_WRITE_LIMIT,
    COUNT_SK,
    COUNTER_SHARDS,
    Job,
    JobStatus,
    JobStore,
    chunk_sk,
    from_dynamo,
    shard_pk,
    to_dynamo,
)
from batchpredict.manifest import InvalidLine, ManifestFormat, iter_manifest
from batchpredict.records import ResultRecord, WorkItem, img_sk, page_pk
from batchpredict.split import work_item
from batchpredict.throttling import UnprocessedError
from tests.unit.fakes import SleepLog, client_error

TABLE = "jobs"
NOW = "2025-01-01T00:00:00.000Z"
WALL = 1_735_689_600.0  # NOW in epoch seconds: the clock deadlines are set by


class FakeDynamo:
    """Records calls. ``unprocessed`` = how many leading batch_write_item calls leave their last
    item unprocessed (-1: every call); ``put_error`` / ``transact_error`` are raised when set."""

    def __init__(
        self,
        unprocessed: int = 0,
        put_error: ClientError | None = None,
        transact_error: ClientError | None = None,
    ) -> None:
        self.batch_calls: list[list[dict[str, Any]]] = []
        self.puts: list[dict[str, Any]] = []
        self.transactions: list[list[dict[str, Any]]] = []
        self.updates: list[dict[str, Any]] = []
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self._unprocessed = unprocessed
        self._put_error = put_error
        self._transact_error = transact_error

    def batch_write_item(self, *, RequestItems: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        (table, requests), *rest = RequestItems.items()
        assert table == TABLE and not rest
        assert 1 <= len(requests) <= BATCH_WRITE_LIMIT
        self.batch_calls.append(requests)
        leave = self._unprocessed < 0 or len(self.batch_calls) <= self._unprocessed
        done, left = (requests[:-1], requests[-1:]) if leave else (requests, [])
        for request in done:
            item = request["PutRequest"]["Item"]
            self.items[(item["pk"]["S"], item["sk"]["S"])] = item
        return {"UnprocessedItems": {TABLE: left} if left else {}}

    def put_item(self, **kwargs: Any) -> dict[str, Any]:
        self.puts.append(kwargs)
        if self._put_error:
            raise self._put_error
        item = kwargs["Item"]
        self.items[(item["pk"]["S"], item["sk"]["S"])] = item
        return {}

    def get_item(self, *, TableName: str, Key: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        item = self.items.get((Key["pk"]["S"], Key["sk"]["S"]))
        return {"Item": item} if item else {}

    def transact_write_items(self, *, TransactItems: list[dict[str, Any]]) -> dict[str, Any]:
        self.transactions.append(TransactItems)
        if self._transact_error:
            raise self._transact_error
        for operation in TransactItems:
            if "Put" in operation:
                item = operation["Put"]["Item"]
                self.items[(item["pk"]["S"], item["sk"]["S"])] = item
        return {}

    def batch_get_item(self, *, RequestItems: dict[str, Any]) -> dict[str, Any]:
        request = RequestItems[TABLE]
        assert request["ConsistentRead"] is True and len(request["Keys"]) <= 100
        keys = [(k["pk"]["S"], k["sk"]["S"]) for k in request["Keys"]]
        return {"Responses": {TABLE: [self.items[k] for k in keys if k in self.items]}}

    def update_item(self, **kwargs: Any) -> dict[str, Any]:
        self.updates.append(kwargs)
        key = (kwargs["Key"]["pk"]["S"], kwargs["Key"]["sk"]["S"])
        return {"Attributes": self.items[key]}


def _store(client: FakeDynamo) -> tuple[JobStore, SleepLog]:
    sleeps = SleepLog()
    store = JobStore(
        client, TABLE, sleep=sleeps, clock=lambda: NOW, monotonic=sleeps.clock, wall=lambda: WALL
    )
    return store, sleeps


def _record(index: int, job_id: str = "job-1") -> ResultRecord:
    item = WorkItem(index=index, url=f"https://img.example/{index}.jpg")
    return ResultRecord.failed(job_id, item, ErrorCode.HTTP_ERROR, "HTTP 404")


def _written(request: dict[str, Any]) -> dict[str, Any]:
    return from_dynamo(request["PutRequest"]["Item"])


# --- put_results ------------------------------------------------------------------------------


def test_put_results_of_60_records_makes_calls_of_25_25_10() -> None:
    client = FakeDynamo()
    store, sleeps = _store(client)

    store.put_results(_record(i) for i in range(60))

    assert [len(c) for c in client.batch_calls] == [25, 25, 10]
    assert [_written(r)["index"] for c in client.batch_calls for r in c] == list(range(60))
    assert sleeps == []


def test_put_results_row_keys_and_content() -> None:
    client = FakeDynamo()
    store, _ = _store(client)
    record = _record(42)

    store.put_results([record])

    (request,) = client.batch_calls[0]
    row = _written(request)
    assert row["pk"] == "job-1#0"
    assert row["sk"] == "IMG#000000042"
    assert {k: v for k, v in row.items() if k not in ("pk", "sk")} == record.to_json()
    assert ResultRecord.from_json(row) == record  # read back: the same record
    assert "expires_at" not in row


def test_rows_are_paged_by_1000_lines_and_chunks_sharded() -> None:
    client = FakeDynamo()
    store, _ = _store(client)

    store.put_results([_record(999), _record(1000), _record(123_456)])

    assert [_written(r)["pk"] for r in client.batch_calls[0]] == ["job-1#0", "job-1#1", "job-1#123"]
    assert page_pk("job-1", 7) == "job-1#7"
    assert [shard_pk("job-1", c) for c in (0, 1, 15, 16, 33)] == [
        "job-1#S00",
        "job-1#S01",
        "job-1#S15",
        "job-1#S00",
        "job-1#S01",
    ]


def test_img_and_chunk_sort_keys_are_zero_padded() -> None:
    assert img_sk(42) == "IMG#000000042"
    assert img_sk(0) == "IMG#000000000"
    assert chunk_sk(17) == "CHUNK#000017"
    # zero padding keeps manifest order under DynamoDB's lexicographic sort
    assert sorted([img_sk(10), img_sk(9), img_sk(100)]) == [img_sk(9), img_sk(10), img_sk(100)]


def test_put_results_with_ttl_sets_expiry() -> None:
    client = FakeDynamo()
    store = JobStore(client, TABLE, ttl_seconds=3600, clock=lambda: NOW)

    store.put_results([_record(0)])

    row = _written(client.batch_calls[0][0])
    assert isinstance(row["expires_at"], int) and row["expires_at"] > 1_700_000_000


def test_unprocessed_items_are_resent_with_growing_backoff() -> None:
    client = FakeDynamo(unprocessed=3)
    store, sleeps = _store(client)

    store.put_results(_record(i) for i in range(5))

    assert [len(c) for c in client.batch_calls] == [5, 1, 1, 1]
    # only the unprocessed item is sent again
    assert all(_written(c[0])["index"] == 4 for c in client.batch_calls[1:])
    assert sorted(k[1] for k in client.items) == [img_sk(i) for i in range(5)]
    # full jitter over 0.05 * 2^attempt: half to all of it
    assert [0.5 * b <= s <= b for s, b in zip(sleeps, (0.05, 0.1, 0.2), strict=True)] == [True] * 3


def test_unprocessed_items_raise_when_the_deadline_comes() -> None:
    client = FakeDynamo(unprocessed=-1)
    store, sleeps = _store(client)
    deadline = sleeps.now + 10.0

    with pytest.raises(UnprocessedError, match="unprocessed after"):
        store.put_results((_record(i) for i in range(3)), deadline=deadline)

    assert len(client.batch_calls) == len(sleeps) + 1
    assert sleeps.now <= deadline and sleeps.now > deadline - 2.0  # slept until the next would overrun
    assert max(sleeps) <= 2.0
    assert sum(1 for earlier, later in itertools.pairwise(sleeps) if later < earlier / 2) == 0


def test_throttled_batch_writes_are_retried() -> None:
    class Throttled(FakeDynamo):
        def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
            if not self.batch_calls:
                self.batch_calls.append([])
                raise client_error("ProvisionedThroughputExceededException", "BatchWriteItem")
            return super().batch_write_item(**kwargs)

    client = Throttled()
    store, sleeps = _store(client)

    store.put_results(_record(i) for i in range(3))

    assert len(sleeps) == 1 and len(client.items) == 3


# --- create -----------------------------------------------------------------------------------


def test_create_puts_a_splitting_job_with_condition_and_its_shards() -> None:
    client = FakeDynamo()
    store, _ = _store(client)

    assert store.create("job-1", "s3://in/manifests/a.txt", "msg-1") is True

    (transaction,) = client.transactions
    put, *shards = (operation["Put"] for operation in transaction)
    assert put["TableName"] == TABLE
    assert put["ConditionExpression"] == "attribute_not_exists(pk)"
    assert [from_dynamo(s["Item"]) for s in shards] == [
        {"pk": f"job-1#S{s:02d}", "sk": COUNT_SK, "updated_at": NOW} for s in range(COUNTER_SHARDS)
    ]
    job = store.get("job-1")
    assert job == Job(
        job_id="job-1",
        status=JobStatus.SPLITTING,
        manifest_uri="s3://in/manifests/a.txt",
        created_at=NOW,
        updated_at=NOW,
        split_message_id="msg-1",
        deadline_at=int(WALL) + 9000,  # a split's time: the manifest queue's 5 receives x 1,800 s
    )
    assert not job.all_chunks_done


def test_a_job_with_a_timeout_gets_that_deadline_and_keeps_it() -> None:
    client = FakeDynamo()
    store, _ = _store(client)

    store.create("job-1", "s3://in/manifests/a.txt", "msg-1", options={"timeout_seconds": 10})
    store.checkpoint("job-1", {"index": 16})
    store.finish_split("job-1", 16, 1)

    job = from_dynamo(client.items[("job-1", "JOB")])
    assert (job["timeout_seconds"], job["timeout_at"], job["deadline_at"]) == (10, WALL + 10, WALL + 10)
    # Moving the deadline on never passes the job's own: it wins where it exists.
    for update in client.updates:
        assert "deadline_at = if_not_exists(timeout_at, :deadline)" in update["UpdateExpression"]


def test_the_split_moves_the_deadline_on_with_the_job_it_found() -> None:
    client = FakeDynamo()
    store, _ = _store(client)
    store.create("job-1", "s3://in/manifests/a.txt", "msg-1")
    store._wall = lambda: WALL + 250  # a continuation, 250 s later

    store.checkpoint("job-1", {"index": 16})
    store.finish_split("job-1", 4000, 250)

    checkpoint, finish = (from_dynamo(u["ExpressionAttributeValues"])[":deadline"] for u in client.updates)
    assert checkpoint == WALL + 250 + 9000  # another split's time from here
    # 250 chunks, 160 at once: 2 waves x 90 s x 10 deliveries, the last chunks' redeliveries and
    # reconcile (7,560 s), finalize's (3,000 s), a merge of 250 parts at 10 a second, and the
    # longest a line may wait for its host (DEFER_BUDGET_SECONDS, 3,600 s).
    assert finish == WALL + 250 + 2 * 90 * 10 + 7560 + 3000 + 25 + 3600


def test_create_returns_false_when_the_job_exists() -> None:
    client = FakeDynamo(transact_error=_cancelled("ConditionalCheckFailed", *["None"] * COUNTER_SHARDS))
    store, _ = _store(client)

    assert store.create("job-1", "s3://in/manifests/a.txt", "msg-2") is False


def test_create_reraises_other_errors() -> None:
    client = FakeDynamo(transact_error=client_error("ValidationException", "TransactWriteItems"))
    store, _ = _store(client)

    with pytest.raises(ClientError, match="ValidationException"):
        store.create("job-1", "s3://in/manifests/a.txt", "msg-1")


def test_get_sums_the_counter_shards() -> None:
    client = FakeDynamo()
    store, _ = _store(client)
    store.create("job-1", "s3://in/manifests/a.txt", "msg-1")
    for chunk, model in ((0, None), (1, "resnet-18"), (2, "resnet-18")):
        shard = to_dynamo({"pk": shard_pk("job-1", chunk), "sk": COUNT_SK, "succeeded": 10 + chunk})
        shard |= to_dynamo({"failed": 1, "chunks_done": 1, "write_units": 5, "updated_at": f"{NOW}{chunk}"})
        if model:
            shard |= to_dynamo({"model": model})
        client.items[(shard_pk("job-1", chunk), COUNT_SK)] = shard

    job = store.get("job-1")

    assert job is not None
    assert (job.succeeded, job.failed, job.chunks_done, job.write_units) == (33, 3, 3, 15)
    assert job.model == "resnet-18" and job.updated_at == f"{NOW}2"


def test_get_missing_job_is_none() -> None:
    store, _ = _store(FakeDynamo())
    assert store.get("job-nope") is None


# --- count_chunk ------------------------------------------------------------------------------


def _cancelled(*codes: str) -> ClientError:
    return client_error(
        "TransactionCanceledException",
        "TransactWriteItems",
        CancellationReasons=[{"Code": code} for code in codes],
    )


def test_count_chunk_writes_marker_and_counters_in_one_transaction() -> None:
    client = FakeDynamo()
    store, _ = _store(client)

    assert store.count_chunk("job-1", 17, succeeded=3, failed=1, model="resnet-18") is True

    (transaction,) = client.transactions
    put, update = transaction[0]["Put"], transaction[1]["Update"]
    assert from_dynamo(put["Item"]) == {
        "pk": "job-1#S01",
        "sk": "CHUNK#000017",
        "succeeded": 3,
        "failed": 1,
        "counted_at": NOW,
    }
    assert put["ConditionExpression"] == "attribute_not_exists(pk)"
    assert update["Key"] == {"pk": {"S": "job-1#S01"}, "sk": {"S": "COUNT"}}
    assert update["ConditionExpression"] == "attribute_exists(pk)"
    assert update["UpdateExpression"].startswith(
        "ADD succeeded :succeeded, failed :failed, chunks_done :chunks_done SET"
    )
    assert "model = if_not_exists(model, :m)" in update["UpdateExpression"]
    values = from_dynamo(update["ExpressionAttributeValues"])
    assert values == {":succeeded": 3, ":failed": 1, ":chunks_done": 1, ":now": NOW, ":m": "resnet-18"}


def test_count_chunk_adds_what_the_chunk_cost_in_the_same_transaction() -> None:
    client = FakeDynamo()
    store, _ = _store(client)
    usage = ChunkUsage(billed_ms=120, memory_mb=2048, invocations=1, write_units=17)

    store.count_chunk("job-1", 3, succeeded=16, failed=0, model=None, usage=usage)

    update = client.transactions[0][1]["Update"]
    values = from_dynamo(update["ExpressionAttributeValues"])
    assert "compute_ms :compute_ms" in update["UpdateExpression"]
    assert values[":compute_ms"] == 120
    assert values[":compute_mb_ms"] == 120 * 2048
    assert values[":invocations"] == 1
    assert values[":write_units"] == 17 + 4  # + the transaction's two items, billed twice each


def test_count_chunk_without_model_leaves_model_alone() -> None:
    client = FakeDynamo()
    store, _ = _store(client)

    store.count_chunk("job-1", 0, succeeded=0, failed=2, model=None)

    update = client.transactions[0][1]["Update"]
    assert "model" not in update["UpdateExpression"]
    assert ":m" not in update["ExpressionAttributeValues"]


def test_count_chunk_returns_false_when_the_marker_exists() -> None:
    client = FakeDynamo(transact_error=_cancelled("ConditionalCheckFailed", "None"))
    store, _ = _store(client)

    assert store.count_chunk("job-1", 3, succeeded=1, failed=0, model=None) is False


def test_count_chunk_reraises_when_the_job_is_missing() -> None:
    # Marker fine, the shard update's attribute_exists(pk) failed: not a "counted before".
    client = FakeDynamo(transact_error=_cancelled("None", "ConditionalCheckFailed"))
    store, _ = _store(client)

    with pytest.raises(ClientError):
        store.count_chunk("job-1", 3, succeeded=1, failed=0, model=None)


@pytest.mark.parametrize(
    "reason", ["TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"]
)
def test_count_chunk_retries_until_its_deadline_then_raises(reason: str) -> None:
    client = FakeDynamo(transact_error=_cancelled("None", reason))
    store, sleeps = _store(client)
    deadline = sleeps.now + 30.0

    with pytest.raises(ClientError):
        store.count_chunk("job-1", 3, succeeded=1, failed=0, model=None, deadline=deadline)

    assert len(client.transactions) == len(sleeps) + 1 > 10
    assert deadline - 2.0 < sleeps.now <= deadline


def test_a_throttled_claim_is_retried() -> None:
    class Throttled(FakeDynamo):
        def put_item(self, **kwargs: Any) -> dict[str, Any]:
            self.puts.append(kwargs)
            if len(self.puts) < 3:
                raise client_error("ThrottlingException", "PutItem")
            return {}

    client = Throttled()
    store, sleeps = _store(client)

    assert store.claim_chunk("job-1", 3, lease_seconds=60) is True
    assert len(sleeps) == 2
    assert from_dynamo(client.puts[-1]["Item"])["pk"] == "job-1#S03"


def test_count_chunk_reraises_other_errors() -> None:
    client = FakeDynamo(transact_error=client_error("InternalServerError", "TransactWriteItems"))
    store, _ = _store(client)

    with pytest.raises(ClientError, match="InternalServerError"):
        store.count_chunk("job-1", 3, succeeded=1, failed=0, model=None)


def test_chunk_counted_reads_the_marker() -> None:
    client = FakeDynamo()
    store, _ = _store(client)
    client.items[("job-1#S04", chunk_sk(4))] = to_dynamo({"pk": "job-1#S04", "sk": chunk_sk(4)})

    assert store.chunk_counted("job-1", 4) is True
    assert store.chunk_counted("job-1", 5) is False
    assert store.chunk_counted("job-2", 4) is False


# --- checkpoint -------------------------------------------------------------------------------


def test_checkpoint_stores_the_position_only_while_splitting_or_cancelling() -> None:
    client = FakeDynamo()
    store, _ = _store(client)
    store.create("job-1", "s3://in/manifests/a.csv", "msg-1")
    position = {"index": 160, "line": 171, "byte_offset": 9001, "csv_header": ["url", "id"]}

    store.checkpoint("job-1", position)

    (update,) = client.updates
    assert update["ConditionExpression"] == "#st IN (:s, :x)"
    values = from_dynamo(update["ExpressionAttributeValues"])
    assert values[":p"] == position
    assert (values[":s"], values[":x"]) == ("SPLITTING", "CANCELLING")


# --- to_dynamo / from_dynamo ------------------------------------------------------------------


def test_floats_and_nested_values_survive_to_and_from_dynamo() -> None:
    value = {
        "probability": 0.123456789,
        "tiny": 1.5e-12,
        "timing_ms": {"fetch": 12.34, "preprocess": 0.5, "inference": 7.0},
        "predictions": [{"rank": 1, "probability": 0.9}, {"rank": 2, "probability": 0.05}],
        "error": None,
        "ok": True,
        "count": 7,
        "name": "héllo",
    }

    item = to_dynamo(value)

    assert item["probability"] == {"N": "0.123456789"}
    back = from_dynamo(item)
    assert back == value
    assert isinstance(back["count"], int)
    assert isinstance(back["probability"], float)
    assert isinstance(back["ok"], bool)


def test_to_dynamo_of_a_full_record_round_trips() -> None:
    record = _record(3).to_json() | {
        "status": "SUCCEEDED",
        "error": None,
        "predictions": [
            {"rank": 1, "class_index": 281, "wnid": "n02123045", "label": "tabby", "probability": 0.8123}
        ],
        "image": {"width": 640, "height": 480, "bytes": 12345},
        "timing_ms": {"fetch": 10.25, "preprocess": 3.5, "inference": 20.0},
        "metadata": {"camera": "x", "score": 0.25},
    }

    assert from_dynamo(to_dynamo(record)) == record


def _round_trip_item(value: dict[str, Any]) -> dict[str, Any]:
    """What to_dynamo was (and still is, for values it does not build directly)."""
    plain = json.loads(json.dumps(value), parse_float=Decimal)
    return {k: TypeSerializer().serialize(v) for k, v in plain.items()}


def _outcome(convert: Any, value: dict[str, Any]) -> Any:
    try:
        return convert(value)
    except Exception as exc:  # the same failure, for values DynamoDB cannot store
        return type(exc)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "none", "big"] + (["dict", "list", "tuple"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(["", "a", "héllo", "IMG#000000001", "1e5", "0.1"])
    if kind == "int":
        return rng.choice([0, -1, 7, 2**53 + 1, 10**37, -(10**38) + 1])
    if kind == "big":
        # Not storable: DynamoDB's decimal context refuses them, and so must the conversion.
        return rng.choice([10**38 + 1, 1e300, -1e-300, 5e-324, float("nan"), float("inf"), 1.7e308])
    if kind == "float":
        return rng.choice([0.0, -0.0, 0.1, 1e-05, 1e16, 1.5e-12, 123.456, 0.8123456789012345, -2.5e20]) * (
            rng.random() if rng.random() < 0.5 else 1
        )
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    children = [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == "list":
        return children
    if kind == "tuple":
        return tuple(children)
    return {f"k{i}": child for i, child in enumerate(children)}


def test_to_dynamo_builds_exactly_what_the_json_round_trip_built() -> None:
    rng = random.Random(7)
    values = [{f"a{i}": _random_value(rng) for i in range(rng.randint(1, 6))} for _ in range(3000)]
    record = _record(3).to_json() | {
        "status": "SUCCEEDED",
        "predictions": [
            {
                "rank": r,
                "class_index": 280 + r,
                "wnid": "n02123045",
                "label": "tabby",
                "probability": 0.81 / r,
            }
            for r in range(1, 6)
        ],
        "image": {"width": 640, "height": 480, "bytes": 12345},
        "timing_ms": {"fetch": 10.25, "preprocess": 3.5, "inference": 20.0},
    }
    # Values it leaves to the round trip: str/int/float subclasses, non-str keys, Decimals, sets.
    odd = [
        {"status": JobStatus.RUNNING},
        {"n": ErrorCode.HTTP_ERROR},
        {"m": {1: "a", "b": 2}},
        {"d": Decimal("1.5")},
        {"s": {1, 2}},
        {"f": float("nan")},
    ]
    for value in [*values, record, *odd]:
        assert _outcome(to_dynamo, value) == _outcome(_round_trip_item, value), value


# DynamoDB's numbers: 38 significant digits, magnitudes 1e-130 to below 1e126. A number outside
# is refused with the line (FAILED invalid_manifest_line), one inside is stored as it is.
@pytest.mark.parametrize("number", ["1" * 38, "1e125", "1e-130", "0.5"])
def test_a_manifest_number_dynamodb_can_store_is_stored(number: str) -> None:
    line = f'{{"url": "https://img.example/a.jpg", "metadata": {{"x": {number}}}}}\n'.encode()
    ((item, _),) = list(iter_manifest(io.BytesIO(line), ManifestFormat.JSONL, False))
    assert not isinstance(item, InvalidLine), item
    client = FakeDynamo()
    store, _ = _store(client)

    store.put_results([ResultRecord.failed("job-1", work_item(item), ErrorCode.HTTP_ERROR, "HTTP 404")])

    ((request,),) = client.batch_calls
    assert Decimal(request["PutRequest"]["Item"]["metadata"]["M"]["x"]["N"]) == Decimal(number)


@pytest.mark.parametrize("number", ["1" * 39, "1e126", "1e200", "1e-131", "1e-300"])
def test_a_manifest_number_dynamodb_cannot_store_fails_its_line(number: str) -> None:
    line = f'{{"url": "https://img.example/a.jpg", "metadata": {{"x": {number}}}}}\n'.encode()
    ((item, _),) = list(iter_manifest(io.BytesIO(line), ManifestFormat.JSONL, False))
    assert isinstance(item, InvalidLine) and item.code is ErrorCode.INVALID_MANIFEST_LINE


def test_count_chunk_retries_a_transaction_conflict_then_counts() -> None:
    # Concurrent chunks of one job all update its JOB item: conflicts are retried, not failed.
    attempts: list[int] = []

    class Conflicting(FakeDynamo):
        def transact_write_items(self, **kwargs: Any) -> dict[str, Any]:
            attempts.append(1)
            if len(attempts) < 3:
                raise _cancelled("None", "TransactionConflict")
            return super().transact_write_items(**kwargs)

    client = Conflicting()
    store, sleeps = _store(client)

    assert store.count_chunk("job-1", 3, succeeded=1, failed=0, model=None) is True
    assert len(attempts) == 3 and len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.5


def test_claim_chunk_is_exclusive_until_its_lease_ends() -> None:
    class Claims(FakeDynamo):
        def __init__(self) -> None:
            super().__init__()
            self.claim: dict[str, Any] | None = None

        def put_item(self, **kwargs: Any) -> dict[str, Any]:
            lease = float(kwargs["Item"]["lease_until"]["N"])
            now = float(kwargs["ExpressionAttributeValues"][":now"]["N"])
            assert kwargs["ConditionExpression"] == "attribute_not_exists(pk) OR lease_until < :now"
            if self.claim is not None and not self.claim["lease_until"] < now:
                raise client_error("ConditionalCheckFailedException", "PutItem")
            self.claim = {"lease_until": lease}
            return {}

    client = Claims()
    store = JobStore(client, "table")
    assert store.claim_chunk("job-1", 7, lease_seconds=60) is True
    assert store.claim_chunk("job-1", 7, lease_seconds=60) is False  # the first delivery still writes
    assert client.claim is not None
    client.claim["lease_until"] = 0.0  # its invocation ended without counting
    assert store.claim_chunk("job-1", 7, lease_seconds=60) is True


def test_may_be_done_reads_the_job_and_the_chunks_own_shard_only() -> None:
    client = FakeDynamo()
    store, _ = _store(client)
    store.create("job-1", "s3://in/manifests/a.txt", "msg-1")
    shard = (shard_pk("job-1", 3), COUNT_SK)

    def shard_done(chunks: int) -> None:
        client.items[shard] = to_dynamo({"pk": shard[0], "sk": COUNT_SK, "chunks_done": chunks})

    shard_done(2)
    assert store.may_be_done("job-1", 3) is False  # still splitting
    job = to_dynamo({"status": "RUNNING", "split_done": True, "chunks_total": 20})
    client.items[("job-1", "JOB")] |= job
    shard_done(1)
    assert store.may_be_done("job-1", 19) is False  # shard 3 holds chunks 3 and 19: one counted
    shard_done(2)
    assert store.may_be_done("job-1", 19) is True
    assert store.may_be_done("job-2", 19) is False
    client.items[("job-1", "JOB")] |= to_dynamo({"status": "COMPLETED"})
    assert store.may_be_done("job-1", 19) is False
