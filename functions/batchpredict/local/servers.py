"""Servers on loopback for the local stack, the tests and the benchmarks."""

from __future__ import annotations

import http.server
import logging
import threading
from pathlib import Path
from typing import Any

from moto.server import ThreadedMotoServer

from batchpredict.local import sqs_depth


class MotoServer:
    """A moto server on 127.0.0.1 (a free port), speaking the real AWS HTTP APIs; its standard
    SQS queues do not slow down with depth and deliver as fair queues do (``sqs_depth``;
    ``fair_queues=False``: in send order, whatever the MessageGroupId)."""

    def __init__(self, fair_queues: bool = True) -> None:
        sqs_depth.install(fair_queues=fair_queues)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def start(self) -> str:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per AWS call otherwise
        self._server.start()
        host, port = self._server.get_host_and_port()
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()


class LoopbackHTTPServer:
    """A threading HTTP server on 127.0.0.1 (a free port unless given), run in a daemon thread."""

    def __init__(
        self, handler: type[http.server.BaseHTTPRequestHandler], port: int = 0, name: str = "http"
    ) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class FileServer(LoopbackHTTPServer):
    """A folder over HTTP on 127.0.0.1; anything missing is a 404."""

    def __init__(self, root: Path) -> None:
        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(Handler, name="file-server")
