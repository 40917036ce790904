"""The heartbeat (queues.Heartbeat: predict's and finalize's) against a moto server's SQS,
patched as the local stack's (local/sqs_depth.py): messages in work stay hidden while it beats,
and come back one step after the beats stop (a crashed invocation), however long the queue's own
visibility timeout."""

from __future__ import annotations

import time
import uuid
from typing import Any

import boto3

from batchpredict.queues import Heartbeat, Queue

QUEUE_VISIBILITY = 120  # the queue's own: what a crashed invocation's message waited before
STEP = 6.0  # the heartbeat's: a beat every 2 s


def _receive(sqs: Any, url: str, seconds: float) -> list[dict[str, Any]]:
    """Long-poll for ``seconds``; the messages of the first receive that got any."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        wait = max(1, min(5, round(until - time.monotonic())))
        got = sqs.receive_message(
            QueueUrl=url, WaitTimeSeconds=wait, MessageSystemAttributeNames=["ApproximateReceiveCount"]
        ).get("Messages", [])
        if got:
            return got  # type: ignore[no-any-return]
    return []


def test_messages_stay_hidden_while_the_heartbeat_beats_and_come_back_a_step_after_it_stops(
    moto_env: str,
) -> None:
    sqs = boto3.client("sqs")
    url = sqs.create_queue(
        QueueName=f"heartbeat-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": str(QUEUE_VISIBILITY)}
    )["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="a chunk")
    (message,) = sqs.receive_message(QueueUrl=url)["Messages"]
    heartbeat = Heartbeat(Queue(sqs, url), STEP, remaining=lambda: 900.0)

    heartbeat.keep({message["MessageId"]: message["ReceiptHandle"]})
    hidden_while_beating = _receive(sqs, url, 2 * STEP)  # past one step: only the beats hide it
    heartbeat.stop()  # the invocation dies: no beat after this
    back = _receive(sqs, url, 3 * STEP)  # far less than the queue's 120 s

    assert hidden_while_beating == []
    assert heartbeat.beats >= 2
    assert [(m["MessageId"], m["Attributes"]["ApproximateReceiveCount"]) for m in back] == [
        (message["MessageId"], "2")
    ]
