"""The local predict API's HTTP framing: a body is read only by its one decimal Content-Length
within MAX_BODY; anything else is answered at once, the body unread, the connection closed."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from batchpredict.local.api_server import ApiServer, to_event


@pytest.fixture
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An ApiServer whose handler records each event and echoes its body."""
    events: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        events.append(event)
        return {"statusCode": 200, "body": json.dumps({"body": event["body"]})}

    api = ApiServer(handler)
    url = api.start()
    yield url, events
    api.stop()


def _exchange(url: str, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request's head and the start of its body, the connection left open (as a client
    still sending would); the status of the answer, and all it sent before closing."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):  # a server waiting for more of the body times out here
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


@pytest.mark.parametrize(
    ("length", "status"),
    [
        ("-1", 400),  # was read to the end of the stream: 8 MiB got past the 1 MiB limit
        ("abc", 400),  # was a dropped connection (ValueError in the handler)
        ("+5", 400),
        ("0x10", 400),
        ("5, 6", 400),
        ("9" * 5000, 413),  # too long even for int() (was a dropped connection); MAX_BODY + 1 was 413
    ],
)
def test_a_length_that_is_not_one_within_the_limit_is_refused_unread(
    server: tuple[str, list[dict[str, Any]]], length: str, status: int
) -> None:
    url, events = server
    head = f"POST /predict HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: {length}\n"
    answer_status, answer = _exchange(url, head, b"{" * 4096)
    assert answer_status == status
    assert b"Connection: close" in answer
    assert events == []  # the handler never ran


def test_two_lengths_or_a_chunked_body_are_refused_and_one_length_is_read(
    server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, events = server
    twice = "POST /predict HTTP/1.1\nHost: x\nContent-Length: 2\nContent-Length: 3\n"
    assert _exchange(url, twice, b"{}")[0] == 400
    chunked = "POST /predict HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n"
    assert _exchange(url, chunked, b"2\r\n{}\r\n")[0] == 411  # was read as no body, the chunks left over
    assert events == []

    valid = "POST /predict HTTP/1.1\nHost: x\nContent-Length: 2\nConnection: close\n"
    status, answer = _exchange(url, valid, b"{}")
    assert status == 200 and json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"body": "{}"}
    assert [event["body"] for event in events] == ["{}"]


def test_a_body_that_is_not_utf8_reaches_the_handler_base64_encoded() -> None:
    """As API Gateway sends a binary body (it was decoded with U+FFFD in place of the bad bytes)."""
    event = to_event("POST", "/predict", {}, b'{"url": "\xff"}')
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b'{"url": "\xff"}'
    text = to_event("POST", "/predict", {}, '{"url": "é"}'.encode())
    assert (text["isBase64Encoded"], text["body"]) == (False, '{"url": "é"}')
