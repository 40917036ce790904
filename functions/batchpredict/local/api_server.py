"""predict_api on a loopback port: each HTTP request becomes the API Gateway HTTP API
(payload 2.0) proxy event, and the handler's response becomes the HTTP response."""

from __future__ import annotations

import base64
import http.server
import json
import re
import time
import uuid
from email.message import Message
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from batchpredict.local.lambda_shim import Handler, LocalContext
from batchpredict.local.servers import LoopbackHTTPServer

MAX_BODY = 1024 * 1024
DIGITS = re.compile(r"[0-9]+")


class BodyRefusedError(Exception):
    """A request whose body is not read: the status and reason to answer it with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def body_length(headers: Message) -> int:
    """The length of a request's body, from its one decimal ``Content-Length`` (none: no body);
    BodyRefusedError for any other framing, before a byte of the body is read: a length that is
    negative, not a number or given twice differently is 400, one over MAX_BODY 413, a
    ``Transfer-Encoding`` (a body of unknown length; chunked is not read here) 411."""
    if headers.get("Transfer-Encoding") is not None:
        raise BodyRefusedError(411, "a request body needs a Content-Length")
    values = {value.strip() for value in headers.get_all("Content-Length") or []}
    if not values:
        return 0
    if len(values) > 1 or not DIGITS.fullmatch(value := values.pop()):
        raise BodyRefusedError(400, "invalid Content-Length")
    if len(value.lstrip("0")) > len(str(MAX_BODY)) or int(value) > MAX_BODY:
        raise BodyRefusedError(413, "request body too large")
    return int(value)


def to_event(method: str, target: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """API Gateway's event for a request: a body that is not UTF-8 goes base64-encoded, as API
    Gateway sends a binary one."""
    parts = urlsplit(target)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    text: str | None = None
    encoded = False
    if body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text, encoded = base64.b64encode(body).decode(), True
    return {
        "version": "2.0",
        "routeKey": f"{method} {parts.path}",
        "rawPath": parts.path,
        "rawQueryString": parts.query,
        "queryStringParameters": query or None,
        "headers": {k.lower(): v for k, v in headers.items()},
        "requestContext": {
            "http": {
                "method": method,
                "path": parts.path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("User-Agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": f"{method} {parts.path}",
            "stage": "$default",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


class ApiServer(LoopbackHTTPServer):
    def __init__(self, handler: Handler, port: int = 0, timeout_seconds: float = 30.0) -> None:
        outer = self

        class Proxy(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                try:
                    length = body_length(self.headers)
                except BodyRefusedError as refused:
                    self.send_error(refused.status, str(refused))  # and close: the body is unread
                    return
                body = self.rfile.read(length) if length else b""
                event = to_event(self.command, self.path, dict(self.headers.items()), body)
                try:
                    response = outer.handler(
                        event, LocalContext("predict_api", timeout_seconds=timeout_seconds)
                    )
                except Exception as exc:  # API Gateway answers 500 when the function fails
                    self._reply(
                        500,
                        {"content-type": "application/json"},
                        json.dumps({"message": f"Internal Server Error: {exc}"}).encode(),
                    )
                    return
                payload = response.get("body") or ""
                data = base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode()
                self._reply(int(response.get("statusCode", 200)), response.get("headers") or {}, data)

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_OPTIONS = _serve  # noqa: N815 - http.server's naming

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.handler = handler
        super().__init__(Proxy, port, name="predict-api")
