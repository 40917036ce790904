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
