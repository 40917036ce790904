"""The local mapping's poller (lambda_shim.deliver_once) lives in the worker process, where Lambda's
does not: given the queue's visibility timeout, it holds what it receives only for its batching
window + POLLER_HOLD_SECONDS, and hands the batch the queue's visibility as the handler starts, so a
worker killed before it invokes costs its messages seconds, not a visibility timeout."""

from __future__ import annotations

from typing import Any

from batchpredict.local.lambda_shim import POLLER_HOLD_SECONDS, deliver_once


class PollerSQS:
    """Receives hand out ``batches`` one call at a time; every call is logged in order."""

    def __init__(self, *batches: list[str]) -> None:
        self.batches = [
            [{"MessageId": f"m-{b}", "ReceiptHandle": f"r-{b}", "Body": b} for b in batch]
            for batch in batches
        ]
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("receive", kwargs))
        return {"Messages": self.batches.pop(0)} if self.batches else {}

    def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("visibility", kwargs))
        return {"Successful": [{"Id": e["Id"]} for e in kwargs["Entries"]], "Failed": []}

    def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("delete", kwargs))
        return {"Successful": [{"Id": e["Id"]} for e in kwargs["Entries"]], "Failed": []}


def test_a_poller_holds_its_batch_briefly_and_hands_it_the_queues_visibility_as_it_invokes() -> None:
    sqs = PollerSQS(["a"], ["b"])

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        sqs.calls.append(("invoke", {"messages": [r["messageId"] for r in event["Records"]]}))
        return {"batchItemFailures": []}

    delivered = deliver_once(
        sqs,  # type: ignore[arg-type]
        "url",
        "arn",
        handler,
        function_name="PredictFunction",
        batch_size=2,
        window_seconds=1.0,
        visibility_seconds=61,
        report=lambda report: None,
    )

    assert delivered == 2
    kinds = [kind for kind, _ in sqs.calls]
    assert kinds == ["receive", "receive", "visibility", "invoke", "delete"]
    receives = [kwargs for kind, kwargs in sqs.calls if kind == "receive"]
    assert {r["VisibilityTimeout"] for r in receives} == {1 + POLLER_HOLD_SECONDS}
    (visibility,) = [kwargs for kind, kwargs in sqs.calls if kind == "visibility"]
    assert [(e["ReceiptHandle"], e["VisibilityTimeout"]) for e in visibility["Entries"]] == [
        ("r-a", 61),
        ("r-b", 61),
    ]


def test_without_the_queues_visibility_the_poller_receives_as_before() -> None:
    sqs = PollerSQS(["a"])

    deliver_once(
        sqs,  # type: ignore[arg-type]
        "url",
        "arn",
        lambda event, context: None,
        function_name="SplitManifestFunction",
        batch_size=1,
        report=lambda report: None,
    )

    assert [kind for kind, _ in sqs.calls] == ["receive", "delete"]
    assert "VisibilityTimeout" not in sqs.calls[0][1]
