"""Unit tests for queues.py: SendMessageBatch in tens, Failed entries re-sent or raised.

A fake SQS client records every call; no network, no moto.
"""

from __future__ import annotations

from typing import Any

import pytest

from batchpredict.queues import SEND_BATCH_LIMIT, Queue, QueueSendError
from batchpredict.throttling import DEFAULT_BUDGET_SECONDS, Backoff
from tests.unit.fakes import FakeSQS, SleepLog

URL = "https://sqs.local/123456789012/work"
# SendMessageBatch: the sum of all message bodies of one call may not exceed 1 MiB
# (256 KiB before August 2025); moto enforces the same with BatchRequestTooLong.
SQS_BATCH_PAYLOAD_LIMIT = 1_048_576


def _failure(entry_id: str, sender_fault: bool, message: str = "oops") -> dict[str, Any]:
    return {"Id": entry_id, "SenderFault": sender_fault, "Code": "InternalError", "Message": message}


def _queue(client: FakeSQS) -> tuple[Queue, SleepLog]:
    sleeps = SleepLog()
    return Queue(client, URL, sleep=sleeps, monotonic=sleeps.clock), sleeps


def test_25_bodies_are_sent_in_calls_of_10_10_5_in_order() -> None:
    client = FakeSQS()
    queue, sleeps = _queue(client)
    bodies = [f"body-{i}" for i in range(25)]

    assert queue.send_batch(bodies) == 25

    assert [len(b) for b in client.batches[URL]] == [10, 10, 5]
    assert [e["MessageBody"] for batch in client.batches[URL] for e in batch] == bodies
    assert client.delivered[URL] == bodies
    assert sleeps == []


def test_exactly_ten_bodies_make_one_call_and_no_empty_call() -> None:
    client = FakeSQS()
    queue, _ = _queue(client)

    assert queue.send_batch(f"b{i}" for i in range(SEND_BATCH_LIMIT)) == SEND_BATCH_LIMIT
    assert [len(b) for b in client.batches[URL]] == [SEND_BATCH_LIMIT]


def test_no_bodies_make_no_call() -> None:
    client = FakeSQS()
    queue, _ = _queue(client)

    assert queue.send_batch([]) == 0
    assert client.batches == {} and client.sent == []


def test_transiently_failed_entry_is_resent_alone_then_ok() -> None:
    # Call 1: entry "3" fails on the server side (SenderFault false); call 2 succeeds.
    client = FakeSQS(fail=lambda call, entries: [_failure("3", False)] if call == 1 else [])
    queue, sleeps = _queue(client)
    bodies = [f"body-{i}" for i in range(10)]

    assert queue.send_batch(bodies) == 10

    assert len(client.batches[URL]) == 2
    assert client.batches[URL][1] == [{"Id": "3", "MessageBody": "body-3"}]
    assert sorted(client.delivered[URL]) == sorted(bodies)
    assert len(client.delivered[URL]) == 10  # nothing sent twice
    assert len(sleeps) == 1 and 0 < sleeps[0] <= Backoff().base


def test_only_the_failed_entries_of_a_batch_are_resent_with_growing_backoff() -> None:
    def fail(call: int, entries: list[dict[str, str]]) -> list[dict[str, Any]]:
        if call == 1:
            return [_failure("1", False), _failure("7", False)]
        if call == 2:
            return [_failure("7", False)]
        return []

    client = FakeSQS(fail=fail)
    queue, sleeps = _queue(client)

    assert queue.send_batch([f"body-{i}" for i in range(10)]) == 10

    assert [[e["Id"] for e in b] for b in client.batches[URL]] == [
        [str(i) for i in range(10)],
        ["1", "7"],
        ["7"],
    ]
    assert len(sleeps) == 2 and 0 < sleeps[0] <= Backoff().base <= sleeps[1] <= 2 * Backoff().base
    assert sorted(client.delivered[URL]) == sorted(f"body-{i}" for i in range(10))


def test_an_entry_failing_until_the_deadline_raises() -> None:
    client = FakeSQS(
        fail=lambda call, entries: [_failure("0", False)] if any(e["Id"] == "0" for e in entries) else []
    )
    queue, sleeps = _queue(client)
    deadline = sleeps.now + DEFAULT_BUDGET_SECONDS

    with pytest.raises(QueueSendError, match="unprocessed after"):
        queue.send_batch(["a", "b", "c"])

    assert len(client.batches[URL]) == len(sleeps) + 1
    assert all(b == [{"Id": "0", "MessageBody": "a"}] for b in client.batches[URL][1:])
    assert deadline - Backoff().cap < sleeps.now <= deadline  # slept until the next would overrun
    assert max(sleeps) <= Backoff().cap


def test_sender_fault_raises_immediately_without_retry() -> None:
    client = FakeSQS(fail=lambda call, entries: [_failure("2", True, "message too long")])
    queue, sleeps = _queue(client)

    with pytest.raises(QueueSendError, match="message too long"):
        queue.send_batch([f"body-{i}" for i in range(25)])

    assert len(client.batches[URL]) == 1  # neither retried nor the next ten sent
    assert sleeps == []


def test_send_passes_body_and_delay() -> None:
    client = FakeSQS()
    queue, _ = _queue(client)

    queue.send('{"job_id": "j"}', delay_seconds=30)

    assert client.sent == [{"QueueUrl": URL, "MessageBody": '{"job_id": "j"}', "DelaySeconds": 30}]


def test_large_bodies_are_split_to_respect_the_batch_payload_limit() -> None:
    client = FakeSQS(payload_limit=SQS_BATCH_PAYLOAD_LIMIT)
    queue, _ = _queue(client)
    bodies = [f"{i}:" + "x" * 200_000 for i in range(10)]  # each one a valid single message

    assert queue.send_batch(bodies) == 10
    assert sorted(client.delivered[URL]) == sorted(bodies)


class FailingDeletes(FakeSQS):
    """DeleteMessageBatch answering each call's failures from a script (then none)."""

    def __init__(self, *failures: list[dict[str, Any]]) -> None:
        super().__init__()
        self.failures = list(failures)
        self.delete_calls: list[list[str]] = []

    def delete_message_batch(self, Entries: list[dict[str, str]], **_: Any) -> dict[str, Any]:
        self.delete_calls.append([e["ReceiptHandle"] for e in Entries])
        failed = self.failures.pop(0) if self.failures else []
        failed_ids = {f["Id"] for f in failed}
        self.deleted += [e["ReceiptHandle"] for e in Entries if e["Id"] not in failed_ids]
        return {
            "Successful": [{"Id": e["Id"]} for e in Entries if e["Id"] not in failed_ids],
            "Failed": failed,
        }


def test_deletes_go_in_tens_and_only_the_failed_entries_are_sent_again() -> None:
    client = FailingDeletes([_failure("3", False)])
    queue, sleeps = _queue(client)
    handles = [f"r{i}" for i in range(12)]

    queue.delete(handles)

    assert client.delete_calls == [handles[:10], ["r3"], handles[10:]]
    assert sorted(client.deleted) == sorted(handles)
    assert len(sleeps) == 1


def test_a_delete_the_caller_caused_raises_without_retry() -> None:
    client = FailingDeletes([_failure("0", True, "receipt handle is invalid")])
    queue, sleeps = _queue(client)

    with pytest.raises(QueueSendError, match="receipt handle is invalid"):
        queue.delete(["r0", "r1"])

    assert client.delete_calls == [["r0", "r1"]] and sleeps == []


class VisibilityClient(FakeSQS):
    """ChangeMessageVisibilityBatch: ``fail(call, entries)`` gives a call's Failed entries."""

    def __init__(self, fail: Any = None) -> None:
        super().__init__()
        self.change_calls: list[list[tuple[str, str, int]]] = []
        self._change_fail = fail or (lambda call, entries: [])

    def change_message_visibility_batch(
        self, *, QueueUrl: str, Entries: list[dict[str, Any]]
    ) -> dict[str, Any]:
        assert QueueUrl == URL and 1 <= len(Entries) <= SEND_BATCH_LIMIT
        self.change_calls.append([(e["Id"], e["ReceiptHandle"], e["VisibilityTimeout"]) for e in Entries])
        failed = self._change_fail(len(self.change_calls), Entries)
        failed_ids = {f["Id"] for f in failed}
        return {
            "Successful": [{"Id": e["Id"]} for e in Entries if e["Id"] not in failed_ids],
            "Failed": failed,
        }


def test_visibility_changes_go_in_tens_and_only_the_failed_entries_are_sent_again() -> None:
    handles = [f"r{i}" for i in range(23)]
    client = VisibilityClient(fail=lambda call, entries: [_failure("4", False)] if call == 1 else [])
    queue, sleeps = _queue(client)

    queue.change_visibility(handles, 30)

    assert [[h for _, h, _ in call] for call in client.change_calls] == [
        handles[:10],
        ["r4"],
        handles[10:20],
        handles[20:],
    ]
    assert {seconds for call in client.change_calls for _, _, seconds in call} == {30}
    assert len(sleeps) == 1


def test_refused_visibility_changes_are_raised_together_after_every_ten_was_sent() -> None:
    handles = [f"r{i}" for i in range(15)]

    def refuse(call: int, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [_failure(e["Id"], True, "ReceiptHandleIsInvalid") for e in entries if e["Id"] in {"2", "12"}]

    client = VisibilityClient(fail=refuse)
    queue, sleeps = _queue(client)

    with pytest.raises(QueueSendError) as raised:
        queue.change_visibility(handles, 0)

    assert len(client.change_calls) == 2 and sleeps == []  # both tens sent, none again
    assert [handles[int(i)] for i in raised.value.refused] == ["r2", "r12"]


def test_receive_reads_each_messages_receive_count() -> None:
    client = FakeSQS(receive=(["a", "b"],))
    client._receive[0][0]["Attributes"] = {"ApproximateReceiveCount": "4"}
    queue, _ = _queue(client)

    received = queue.receive(2, 30)

    assert [(r.body, r.receive_count) for r in received] == [("a", 4), ("b", 1)]
    assert client.receives[0]["MessageSystemAttributeNames"] == ["ApproximateReceiveCount"]


def test_a_group_id_goes_on_every_entry_of_every_call_and_on_a_single_send() -> None:
    # Fair queues: the work queue's messages carry the job's id as MessageGroupId (queues.py).
    client = FakeSQS()
    queue, _ = _queue(client)

    assert queue.send_batch([f"b{i}" for i in range(12)], group_id="job-1") == 12
    queue.send("one", 5, group_id="job-2")
    queue.send("two")

    assert [e["MessageGroupId"] for batch in client.batches[URL] for e in batch] == ["job-1"] * 12
    one = {"QueueUrl": URL, "MessageBody": "one", "DelaySeconds": 5, "MessageGroupId": "job-2"}
    assert client.sent[0] == one
    assert "MessageGroupId" not in client.sent[1]


def test_without_a_group_id_no_entry_carries_one() -> None:
    client = FakeSQS()
    queue, _ = _queue(client)

    queue.send_batch(["a", "b"])

    assert all("MessageGroupId" not in e for e in client.batches[URL][0])
