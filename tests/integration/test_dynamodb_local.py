"""DynamoDB Local as the local stack starts it: the real engine on loopback, with the JVM flags
that keep its CPU down, answering the calls the pipeline makes (conditional writes, transactions)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from batchpredict.local.dynamodb_local import JVM_OPTIONS, DynamoDBLocal, DynamoDBLocalUnavailableError


@pytest.fixture
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    try:
        server = DynamoDBLocal()
        server.start()
    except DynamoDBLocalUnavailableError as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


def _table(server: DynamoDBLocal, name: str) -> Any:
    """A client of ``server`` and a table of the pipeline's key schema in it."""
    client = boto3.client(
        "dynamodb",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    return client


def test_starts_with_the_cheap_jvm_and_is_the_real_engine(dynamodb_local: DynamoDBLocal) -> None:
    process = dynamodb_local._process
    assert process is not None
    command = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
    assert [flag.encode() for flag in JVM_OPTIONS] == command[1 : 1 + len(JVM_OPTIONS)]
    assert b"-inMemory" in command
    client = _table(dynamodb_local, "results")
    key = {"pk": {"S": "job"}, "sk": {"S": "JOB"}}
    client.put_item(TableName="results", Item=key | {"n": {"N": "0"}})
    update = {
        "Update": {
            "TableName": "results",
            "Key": key,
            "UpdateExpression": "ADD n :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
    }
    marker = {"pk": {"S": "job"}, "sk": {"S": "CHUNK#000001"}}
    put_marker = {
        "Put": {"TableName": "results", "Item": marker, "ConditionExpression": "attribute_not_exists(pk)"}
    }
    client.transact_write_items(TransactItems=[update, put_marker])
    # DynamoDB's own rules, which moto's fallback is looser about: the second count is cancelled.
    with pytest.raises(client.exceptions.TransactionCanceledException):
        client.transact_write_items(TransactItems=[update, put_marker])
    assert client.get_item(TableName="results", Key=key, ConsistentRead=True)["Item"]["n"] == {"N": "1"}


def test_a_row_the_engine_refuses_is_stored_as_its_failed_line(dynamodb_local: DynamoDBLocal) -> None:
    # moto takes any nesting; the real engine does not, which is why the writer checks.
    from botocore.exceptions import ClientError

    from batchpredict.jobs import JobStore
    from batchpredict.records import ResultRecord, WorkItem
    from batchpredict.writer import storable

    client = _table(dynamodb_local, "rows")
    metadata: dict[str, object] = {"leaf": 1}
    for _ in range(31):
        metadata = {"a": metadata}
    item = WorkItem(index=7, url="https://a.example/x.jpg", metadata=metadata)
    record = ResultRecord.for_item("job", item, model="m")
    store = JobStore(client, "rows")
    with pytest.raises(ClientError, match="Nesting Levels"):
        store.put_results([record])

    store.put_results([storable(record)])

    (row,) = list(store.query_results("job"))
    assert (row.index, row.status, row.error and row.error.code) == (7, "FAILED", "invalid_manifest_line")
    assert row.metadata is None
