"""predict_api on a loopback port: each HTTP request becomes the API Gateway HTTP API
(payload 2.0) proxy event, and the handler's response becomes the HTTP response."""

from __future__ import annotations

import base64
import http.server
import json
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from batchpredict.local.lambda_shim import Handler, LocalContext
from batchpredict.local.servers import LoopbackHTTPServer

MAX_BODY = 1024 * 1024


def to_event(method: str, target: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    parts = urlsplit(target)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    text = body.decode("utf-8", errors="replace") if body else None
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
        "isBase64Encoded": False,
    }


class ApiServer(LoopbackHTTPServer):
    def __init__(self, handler: Handler, port: int = 0, timeout_seconds: float = 30.0) -> None:
        outer = self

        class Proxy(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self.send_error(413, "request body too large")
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
