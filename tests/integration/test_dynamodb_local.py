"""DynamoDB Local as the local stack starts it: the real engine, with the JVM flags that keep its
CPU down, answering the calls the pipeline makes (conditional writes, transactions); its tables
seen by the stack's key alone, on a port proved its own."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from batchpredict.local import dynamodb_local as ddb_local
from batchpredict.local.dynamodb_local import (
    JVM_OPTIONS,
    DynamoDBLocal,
    DynamoDBLocalUnavailableError,
    new_credentials,
)


@pytest.fixture
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    try:
        server = DynamoDBLocal()
        server.start()
    except DynamoDBLocalUnavailableError as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


def _client(endpoint: str, credentials: dict[str, str]) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=credentials["AWS_DEFAULT_REGION"],
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
    )


def _table(server: DynamoDBLocal, name: str) -> Any:
    """A client of ``server`` and a table of the pipeline's key schema in it."""
    client = _client(server.endpoint, new_credentials())
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


# The key every client without the stack's own had before (and the AWS CLI's usual local one).
DEFAULT_LOCAL = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _network_addresses() -> list[str]:
    """This machine's addresses other than loopback (``hostname -I``), as URL hosts."""
    try:
        found = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        found = [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)]
    addresses = {ipaddress.ip_address(a.split("%")[0]) for a in found}
    usable = [a for a in addresses if not (a.is_loopback or a.is_link_local)]
    return [f"[{a}]" if a.version == 6 else str(a) for a in sorted(usable, key=str)]


def test_a_peer_sees_none_of_the_stacks_tables(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DynamoDB Local listens on every interface (nothing binds it to one): the local stack's own
    random key is what keeps its tables to it. The key reaches every client of the stack (the
    StackRef, every worker's environment); a client with the default `local` key, on loopback or
    on this machine's network address, lists none of them."""
    from batchpredict.local.provision import LocalOptions
    from batchpredict.local.stack import LocalStack

    class NoWorkers:  # the mappings' environments are what is looked at; no process is started
        def __init__(self, *_: Any, **__: Any) -> None: ...

        def start(self) -> None: ...

        def stop(self) -> None: ...

    monkeypatch.setattr("batchpredict.local.runner.Runner", NoWorkers)
    options = LocalOptions(model_uri=str(bundle_dir), prefix=f"k{uuid.uuid4().hex[:8]}")
    warnings: list[str] = []
    stack = LocalStack(options, serve_api=False, warn=warnings.append)
    ref = stack.start()
    try:
        if warnings:  # DynamoDB Local did not start: moto's DynamoDB stands in
            pytest.skip(warnings[0])
        settings = ref.endpoints or {}
        key = {name: settings[name] for name in DEFAULT_LOCAL}
        assert key["AWS_ACCESS_KEY_ID"] != "local"
        assert all(m.environment.items() >= key.items() for m in stack.plan.mappings)
        endpoint = settings["AWS_ENDPOINT_URL_DYNAMODB"]
        assert ref.table in _client(endpoint, key).list_tables()["TableNames"]
        port = endpoint.rsplit(":", 1)[1]
        others = ["127.0.0.1", *_network_addresses()]
        for host in others:
            assert _client(f"http://{host}:{port}", DEFAULT_LOCAL).list_tables()["TableNames"] == [], host
        if len(others) == 1:
            pytest.skip("this machine has no address but loopback: checked on loopback only")
    finally:
        stack.stop()


def test_a_port_taken_before_java_binds_it_is_never_taken_for_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """The port is chosen by binding and closing (DynamoDB Local refuses -port 0): a process that
    takes it first must not be mistaken for DynamoDB Local (it would get the stack's key)."""
    with socket.socket() as impostor:
        impostor.bind(("127.0.0.1", 0))
        impostor.listen()
        taken = impostor.getsockname()[1]
        ports = [taken]
        free = ddb_local._free_port
        monkeypatch.setattr(ddb_local, "_free_port", lambda: ports.pop() if ports else free())
        try:
            server = DynamoDBLocal()
            server.start()
        except DynamoDBLocalUnavailableError as exc:
            pytest.skip(str(exc))
        try:
            assert server.port != taken
            process = server._process
            assert process is not None
            assert ddb_local.listeners(server.port) <= ddb_local.socket_inodes(process.pid)
            assert _client(server.endpoint, new_credentials()).list_tables()["TableNames"] == []
        finally:
            server.stop()
