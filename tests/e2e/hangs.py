"""A server that hangs: it takes every connection and never says a word, until stopped. For the
jobs whose images never arrive (a job's timeout, the sweeper)."""

from __future__ import annotations

import socketserver
import threading


class _Silent(socketserver.BaseRequestHandler):
    server: Tarpit

    def handle(self) -> None:
        self.server.released.wait()  # holds the connection open, answers nothing


class Tarpit(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Silent)
        self.released = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> str:
        threading.Thread(target=self.serve_forever, name="tarpit", daemon=True).start()
        return self.url

    def stop(self) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()
