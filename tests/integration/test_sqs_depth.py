"""The local stack's SQS (moto with ``local.sqs_depth`` installed, as MotoServer does): SQS's
semantics through boto3 on loopback, and calls whose work does not grow with the queue's depth."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.sqs.models import Message, SQSBackend

from batchpredict.local import sqs_depth

pytestmark = pytest.mark.integration


@pytest.fixture
def sqs(moto_endpoint: str) -> Any:
    return boto3.client(
        "sqs",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _queue(sqs: Any, **attributes: str) -> str:
    return str(sqs.create_queue(QueueName=f"q{uuid.uuid4().hex[:10]}", Attributes=attributes)["QueueUrl"])


def _receive(sqs: Any, url: str, count: int = 10, visibility: int | None = None) -> list[dict[str, Any]]:
    extra = {} if visibility is None else {"VisibilityTimeout": visibility}
    response = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=count, MessageSystemAttributeNames=["All"], **extra
    )
    return response.get("Messages", [])  # type: ignore[no-any-return]


def _counts(sqs: Any, url: str) -> tuple[int, int, int]:
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return tuple(int(attributes[n]) for n in names)  # type: ignore[return-value]


def test_oldest_first_visibility_timeouts_and_counts(sqs: Any) -> None:
    url = _queue(sqs, VisibilityTimeout="1")
    for i in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=1)
    assert _counts(sqs, url) == (5, 0, 1)

    first = _receive(sqs, url, count=2)
    assert [m["Body"] for m in first] == ["0", "1"]
    assert _counts(sqs, url) == (3, 2, 1)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first[0]["ReceiptHandle"])
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first[0]["ReceiptHandle"])  # twice is fine
    assert _counts(sqs, url) == (3, 1, 1)
    time.sleep(1.2)  # message 1's visibility timeout and the delay pass

    again = _receive(sqs, url)
    # "1" comes back in its place, before the later ones; the delayed one is receivable now
    assert [m["Body"] for m in again] == ["1", "2", "3", "4", "later"]
    assert [int(m["Attributes"]["ApproximateReceiveCount"]) for m in again] == [2, 1, 1, 1, 1]
    assert _counts(sqs, url) == (0, 5, 0)
    # The first receipt handle of "1" still deletes it, as in SQS.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first[1]["ReceiptHandle"])
    assert _counts(sqs, url) == (0, 4, 0)
    with pytest.raises(ClientError, match="ReceiptHandleIsInvalid"):
        sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle")


def test_change_visibility_hides_and_releases(sqs: Any) -> None:
    url = _queue(sqs, VisibilityTimeout="30")
    sqs.send_message(QueueUrl=url, MessageBody="m")
    (message,) = _receive(sqs, url)
    assert _receive(sqs, url) == []

    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    (back,) = _receive(sqs, url)
    assert back["Attributes"]["ApproximateReceiveCount"] == "2"
    sqs.change_message_visibility_batch(
        QueueUrl=url, Entries=[{"Id": "a", "ReceiptHandle": back["ReceiptHandle"], "VisibilityTimeout": 0}]
    )
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=back["ReceiptHandle"], VisibilityTimeout=60)
    assert _receive(sqs, url) == []
    assert _counts(sqs, url) == (0, 1, 0)
    with pytest.raises(ClientError, match="ReceiptHandleIsInvalid"):
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle="nope", VisibilityTimeout=0)


def test_redrive_after_max_receive_count_keeps_the_receive_count(sqs: Any) -> None:
    dlq = _queue(sqs)
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})
    url = _queue(sqs, RedrivePolicy=policy, VisibilityTimeout="30")
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    sqs.send_message(QueueUrl=url, MessageBody="fine")

    for receive in range(1, 4):
        messages = _receive(sqs, url, count=1, visibility=0)
        assert [(m["Body"], m["Attributes"]["ApproximateReceiveCount"]) for m in messages] == [
            ("poison", str(receive))
        ]
    # The fourth receive moves "poison" to the DLQ and hands out the next message instead.
    assert [m["Body"] for m in _receive(sqs, url, count=1)] == ["fine"]
    assert _counts(sqs, url) == (0, 1, 0)
    (dead,) = _receive(sqs, dlq)
    assert (dead["Body"], dead["Attributes"]["ApproximateReceiveCount"]) == ("poison", "4")


def test_long_polling_returns_a_message_sent_while_waiting(sqs: Any) -> None:
    url = _queue(sqs)
    sqs.send_message(QueueUrl=url, MessageBody="early")
    assert [m["Body"] for m in _receive(sqs, url)] == ["early"]
    response = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)
    assert "Messages" not in response


@pytest.fixture
def backend() -> Iterator[SQSBackend]:
    sqs_depth.install()
    yield SQSBackend("us-east-1", "123456789012")


def test_a_receive_looks_at_the_messages_it_returns_not_the_queue(
    backend: SQSBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work of receive, delete and the counts, in messages looked at, at two depths."""
    looked_at: list[int] = []
    visible = Message.visible

    def counting(message: Message) -> bool:
        looked_at.append(1)
        return visible.fget(message)  # type: ignore[attr-defined,no-any-return]

    def work(depth: int) -> int:
        name = f"depth{depth}"
        backend.create_queue(name, VisibilityTimeout="60")
        for _ in range(depth):
            backend.send_message(name, "x")
        for _ in range(depth // 2):  # half of them in flight, at the head of the queue
            backend.receive_message(name, 1, 0, 60)
        monkeypatch.setattr(Message, "visible", property(counting))
        looked_at.clear()
        messages = backend.receive_message(name, 10, 0, 60)
        for message in messages:
            backend.delete_message(name, message.receipt_handle)  # type: ignore[arg-type]
        backend.get_queue_attributes(name, ["All"])
        monkeypatch.setattr(Message, "visible", visible)
        assert len(messages) == 10
        return len(looked_at)

    small, large = work(100), work(4000)
    assert large == small <= 20


# --- fair queues: a MessageGroupId on a standard queue (sqs_depth's module doc) -----------------


def _send(sqs: Any, url: str, bodies: list[str], group: str | None = None, delay: int = 0) -> None:
    """SendMessageBatch in tens, as the splitter sends chunks (queues.Queue.send_batch)."""
    for start in range(0, len(bodies), 10):
        entries = [
            {"Id": str(i), "MessageBody": body, "DelaySeconds": delay}
            | ({"MessageGroupId": group} if group else {})
            for i, body in enumerate(bodies[start : start + 10])
        ]
        assert not sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")


def _bodies(messages: list[dict[str, Any]]) -> list[str]:
    return [m["Body"] for m in messages]


def test_a_late_small_group_comes_out_ahead_of_a_big_groups_backlog(sqs: Any) -> None:
    url = _queue(sqs, VisibilityTimeout="60")
    _send(sqs, url, [f"big{i}" for i in range(300)], group="job-big")
    first = _receive(sqs, url)  # the big job's consumers are busy: 10 in flight
    assert _bodies(first) == [f"big{i}" for i in range(10)]
    assert {m["Attributes"]["MessageGroupId"] for m in first} == {"job-big"}
    _send(sqs, url, ["small0", "small1", "small2"], group="job-small")
    sqs.send_message(QueueUrl=url, MessageBody="small3", MessageGroupId="job-small")

    # The quiet job's four, then the big job's backlog where it was.
    assert _bodies(_receive(sqs, url)) == [f"small{i}" for i in range(4)] + [f"big{i}" for i in range(10, 16)]
    assert _counts(sqs, url) == (284, 20, 0)


def test_groups_with_no_message_in_flight_take_turns(sqs: Any) -> None:
    # Nothing in flight yet: the oldest goes first, then whichever group has fewer in flight.
    url = _queue(sqs, VisibilityTimeout="60")
    _send(sqs, url, [f"a{i}" for i in range(20)], group="a")
    _send(sqs, url, ["b0", "b1"], group="b")

    assert _bodies(_receive(sqs, url, count=6)) == ["a0", "b0", "a1", "b1", "a2", "a3"]


def test_a_group_that_is_done_with_its_messages_is_quiet_again(sqs: Any) -> None:
    url = _queue(sqs, VisibilityTimeout="60")
    _send(sqs, url, ["a0", "a1", "a2", "a3"], group="a")
    _send(sqs, url, ["b0", "b1", "b2"], group="b")
    taken = _receive(sqs, url, count=3)  # a0 b0 a1: a has 2 in flight, b 1
    assert _bodies(taken) == ["a0", "b0", "a1"]
    assert _bodies(_receive(sqs, url, count=1, visibility=0)) == ["b1"]  # b: fewer in flight

    for message in taken:
        if message["Body"].startswith("a"):
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    # a has none in flight now, b still one (b0): a goes first again; then a tie (one each) goes
    # to the older message, and then b has fewer
    assert _bodies(_receive(sqs, url, count=3)) == ["a2", "a3", "b1"]


def test_a_delayed_small_group_is_received_first_once_its_delay_passes(sqs: Any) -> None:
    url = _queue(sqs, VisibilityTimeout="60")
    _send(sqs, url, [f"big{i}" for i in range(50)], group="job-big")
    _send(sqs, url, ["late0", "late1"], group="job-small", delay=1)
    assert _bodies(_receive(sqs, url)) == [f"big{i}" for i in range(10)]
    assert _counts(sqs, url) == (40, 10, 2)
    time.sleep(1.2)

    assert _bodies(_receive(sqs, url, count=4)) == ["late0", "late1", "big10", "big11"]


def test_messages_without_a_group_keep_send_order_and_are_tenants_of_their_own(sqs: Any) -> None:
    url = _queue(sqs, VisibilityTimeout="60")
    _send(sqs, url, [f"big{i}" for i in range(30)], group="job-big")
    assert _bodies(_receive(sqs, url)) == [f"big{i}" for i in range(10)]
    _send(sqs, url, ["u0", "u1", "u2"])  # no group: each its own tenant, none in flight

    assert _bodies(_receive(sqs, url, count=5)) == ["u0", "u1", "u2", "big10", "big11"]


def test_without_fair_queues_groups_are_ignored(backend: SQSBackend) -> None:
    sqs_depth.install(fair_queues=False)
    try:
        backend.create_queue("unfair", VisibilityTimeout="60")
        for i in range(30):
            backend.send_message("unfair", f"big{i}", group_id="job-big")
        assert [m.body for m in backend.receive_message("unfair", 10, 0, 60)] == [
            f"big{i}" for i in range(10)
        ]
        backend.send_message("unfair", "small0", group_id="job-small")

        received = backend.receive_message("unfair", 10, 0, 60)
    finally:
        sqs_depth.install()
    assert [m.body for m in received] == [f"big{i}" for i in range(10, 20)]  # the small one waits
