"""Polite test hosts: HTTP servers on 127.0.0.1 that each enforce their own request rate and
concurrency limits, as a site that protects itself does, and log every request they get.

For the politeness benchmark (benchmarks/politeness.py) and the tests. Each host serves small real
JPEGs at ``/img/N.jpg`` (image N modulo the host's images) and, past either of its limits, refuses
the request at once with 429 (or 503) and a ``Retry-After`` header:

* rate: a **sliding** window. A request is admitted when fewer than ``rps`` admitted requests
  arrived in the last second (for ``rps`` < 1, one request per ``1 / rps`` seconds). Refused
  requests do not count against the rate unless ``count_refused`` is set (a stricter host).
* concurrency: a request is admitted when fewer than ``concurrency`` admitted requests are in
  flight (arrived and not yet answered).
* ``Retry-After``: in seconds (an integer, rounded up; rate: until the window's oldest request
  leaves it; concurrency: the host's latency, at least 1 s), or as an HTTP date
  (``retry_after="date"``, rounded up to the next whole second), or absent
  (``retry_after="none"``); ``retry_after_seconds`` fixes the value instead.
* ``reject_all``: every image request is refused (a host that never lets a client in).
* ``queue``: past its limits a request is not refused but waits its turn (a host that slows
  down): it is answered once the limits admit it, however long that takes.

Every request, admitted or not, is logged (arrival, end, status, path, why it was refused) in
memory: ``PoliteHost.requests()``, or over HTTP at ``GET /_log`` (JSON; neither limited nor logged),
so that a host in another process (``python -m batchpredict.local.polite_hosts``) can be read.
"""

from __future__ import annotations

import argparse
import collections
import email.utils
import http.server
import io
import json
import math
import re
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from batchpredict.local.servers import LoopbackHTTPServer

RetryAfter = Literal["seconds", "date", "none"]
RETRY_AFTER_FORMS: tuple[RetryAfter, ...] = ("seconds", "date", "none")
REFUSAL_STATUSES = (429, 503)
LOG_PATH = "/_log"
IMAGE_PATH = re.compile(r"^/img/(\d+)\.jpg$")
SOURCE_SUFFIXES = (".jpg", ".jpeg", ".png")
QUEUE_POLL = 0.01  # seconds between a queued request's tries


@dataclass(frozen=True)
class HostShape:
    """One host's limits and behaviour (None: no such limit)."""

    rps: float | None = None
    concurrency: int | None = None
    latency_ms: float = 0.0  # the time an admitted request takes to answer
    reject_all: bool = False
    status: int = 429  # the refusal's status: 429 or 503
    retry_after: RetryAfter = "seconds"
    retry_after_seconds: float | None = None  # a fixed Retry-After (None: computed as above)
    count_refused: bool = False  # refused requests count against the rate window too
    queue: bool = False  # past the limits a request waits to be admitted instead of being refused

    def __post_init__(self) -> None:
        if self.rps is not None and self.rps <= 0:
            raise ValueError(f"rps must be > 0 (or None for no limit), got {self.rps}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1 (or None), got {self.concurrency}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")
        if self.status not in REFUSAL_STATUSES:
            raise ValueError(f"status must be one of {REFUSAL_STATUSES}, got {self.status}")
        if self.queue and (self.count_refused or self.reject_all):
            raise ValueError("queue goes with neither count_refused nor reject_all: it refuses nothing")
        if self.retry_after not in RETRY_AFTER_FORMS:
            raise ValueError(f"retry_after must be one of {RETRY_AFTER_FORMS}, got {self.retry_after!r}")

    @property
    def window(self) -> float:
        """The rate window's length in seconds: 1, or longer for a rate under one a second."""
        return max(1.0, 1.0 / self.rps) if self.rps else 1.0

    @property
    def per_window(self) -> int:
        """Admitted requests allowed per window."""
        return max(1, math.floor((self.rps or 0) * self.window + 1e-9))

    @classmethod
    def parse(cls, text: str) -> HostShape:
        """``RPS:CONCURRENCY[:LATENCY_MS][:FLAG...]``; ``-`` for no limit. Flags: ``reject-all``,
        ``503``, ``date`` (Retry-After as an HTTP date), ``no-retry-after``, ``retry=SECONDS``,
        ``count-refused``, ``queue`` (a host that slows down instead of refusing). E.g. ``5:4:100``,
        ``-:-:0:reject-all:retry=2``, ``20:8:50:503:date``."""
        parts = text.strip().split(":")
        if len(parts) < 2:
            raise ValueError(f"{text!r}: expected RPS:CONCURRENCY[:LATENCY_MS][:FLAG...]")
        values: dict[str, Any] = {
            "rps": None if parts[0] == "-" else float(parts[0]),
            "concurrency": None if parts[1] == "-" else int(parts[1]),
        }
        if len(parts) > 2 and parts[2]:
            values["latency_ms"] = float(parts[2])
        for flag in parts[3:]:
            if flag == "reject-all":
                values["reject_all"] = True
            elif flag == "503":
                values["status"] = 503
            elif flag == "date":
                values["retry_after"] = "date"
            elif flag == "no-retry-after":
                values["retry_after"] = "none"
            elif flag.startswith("retry="):
                values["retry_after_seconds"] = float(flag.removeprefix("retry="))
            elif flag == "count-refused":
                values["count_refused"] = True
            elif flag == "queue":
                values["queue"] = True
            else:
                raise ValueError(f"{text!r}: unknown flag {flag!r}")
        return cls(**values)

    def describe(self) -> str:
        rps = f"{self.rps:g} rps" if self.rps else "no rate limit"
        concurrency = f"{self.concurrency} concurrent" if self.concurrency else "no concurrency limit"
        extra = [f"{self.latency_ms:g} ms a request"]
        if self.reject_all:
            extra.append(f"{self.status} to everything")
        elif self.status != 429:
            extra.append(f"{self.status} when refusing")
        if self.retry_after != "seconds":
            extra.append(f"Retry-After {'as an HTTP date' if self.retry_after == 'date' else 'absent'}")
        if self.retry_after_seconds is not None:
            extra.append(f"Retry-After {self.retry_after_seconds:g} s")
        if self.count_refused:
            extra.append("refused requests count against the rate")
        if self.queue:
            extra.append("past its limits requests wait their turn")
        return f"{rps}, {concurrency}, " + ", ".join(extra)


@dataclass(frozen=True)
class Request:
    """One request as the host saw it: wall-clock times (``time.time()``) of its arrival (the
    request line read) and of its end (the answer written, or the client gone)."""

    arrived: float
    ended: float
    status: int  # 0: the client went away before its answer was written
    path: str
    refused: str = ""  # "", "rate", "concurrency" or "reject_all"
    queued: float = 0.0  # seconds it waited to be admitted (a ``queue`` host)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Request:
        return cls(**doc)


@dataclass
class _Gate:
    """The host's admission state: the sliding window of admitted arrivals and requests in flight."""

    shape: HostShape
    clock: Callable[[], float] = time.time
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrivals: collections.deque[float] = field(default_factory=collections.deque)
    in_flight: int = 0

    def admit(self) -> tuple[float, str, float]:
        """(arrival, refusal reason or "", seconds the client should wait when refused)."""
        shape = self.shape
        with self.lock:
            now = self.clock()
            while self.arrivals and self.arrivals[0] <= now - shape.window:
                self.arrivals.popleft()
            if shape.reject_all:
                return now, "reject_all", 1.0
            if shape.concurrency is not None and self.in_flight >= shape.concurrency:
                if shape.count_refused:
                    self.arrivals.append(now)
                return now, "concurrency", max(1.0, shape.latency_ms / 1000)
            if shape.rps is not None and len(self.arrivals) >= shape.per_window:
                wait = self.arrivals[0] + shape.window - now
                if shape.count_refused:
                    self.arrivals.append(now)
                return now, "rate", wait
            self.arrivals.append(now)
            self.in_flight += 1
            return now, "", 0.0

    def release(self) -> None:
        with self.lock:
            self.in_flight -= 1


def retry_after_value(shape: HostShape, wait: float, now: float) -> str | None:
    """The Retry-After header of a refusal, in the host's form (None: no header)."""
    if shape.retry_after == "none":
        return None
    seconds = shape.retry_after_seconds if shape.retry_after_seconds is not None else wait
    if shape.retry_after == "date":
        # HTTP dates have whole seconds: round up, so the date is never earlier than meant.
        return email.utils.formatdate(math.ceil(now + seconds), usegmt=True)
    return str(max(1, math.ceil(seconds - 1e-9)))


class PoliteHost(LoopbackHTTPServer):
    """One host on 127.0.0.1 (a free port unless given), served from daemon threads."""

    def __init__(
        self, shape: HostShape, images: Sequence[bytes], port: int = 0, clock: Callable[[], float] = time.time
    ) -> None:
        if not images:
            raise ValueError("a host needs at least one image to serve")
        self.shape = shape
        self._images = list(images)
        self._gate = _Gate(shape, clock)
        self._clock = clock
        self._log: list[Request] = []
        self._log_lock = threading.Lock()
        super().__init__(_handler(self), port, name="polite-host", poll_interval=0.05)

    def requests(self) -> list[Request]:
        """Every request so far (a copy), in the order they ended."""
        with self._log_lock:
            return list(self._log)

    def _record(self, request: Request) -> None:
        with self._log_lock:
            self._log.append(request)

    def _image(self, number: int) -> bytes:
        return self._images[number % len(self._images)]


def _handler(host: PoliteHost) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] == LOG_PATH:
                self._send(200, "application/json", json.dumps([asdict(r) for r in host.requests()]).encode())
                return
            arrived, refused, wait = host._gate.admit()
            admitted = arrived
            while refused and host.shape.queue:  # wait for a turn, as a host that slows down
                time.sleep(min(max(wait, 0.001), QUEUE_POLL))
                admitted, refused, wait = host._gate.admit()
            status = 0
            try:
                status = self._answer(arrived, refused, wait)
            except OSError:  # the client went away (its deadline): logged with status 0
                pass
            finally:
                if not refused:
                    host._gate.release()
                host._record(Request(arrived, host._clock(), status, self.path, refused, admitted - arrived))

        def _answer(self, arrived: float, refused: str, wait: float) -> int:
            shape = host.shape
            if refused:
                headers = {}
                value = retry_after_value(shape, wait, arrived)
                if value is not None:
                    headers["Retry-After"] = value
                self._send(shape.status, "text/plain", b"slow down\n", headers)
                return shape.status
            if shape.latency_ms:
                time.sleep(shape.latency_ms / 1000)
            match = IMAGE_PATH.match(self.path.split("?", 1)[0])
            if match is None:
                self._send(404, "text/plain", b"not found\n")
                return 404
            self._send(200, "image/jpeg", host._image(int(match[1])))
            return 200

        def _send(self, status: int, kind: str, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def sample_jpegs(folder: Path, long_side: int = 320, quality: int = 85) -> list[bytes]:
    """Small real JPEGs made from the photos in ``folder`` (each scaled to ``long_side`` px)."""
    from PIL import Image

    images = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in SOURCE_SUFFIXES):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        image.thumbnail((long_side, long_side))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)
        images.append(out.getvalue())
    if not images:
        raise ValueError(f"{folder}: no photos ({', '.join(SOURCE_SUFFIXES)})")
    return images


def read_log(url: str, timeout: float = 30.0) -> list[Request]:
    """A host's request log over HTTP (``GET {url}/_log``), with no proxy in the way."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url + LOG_PATH, timeout=timeout) as response:
        return [Request.from_json(doc) for doc in json.loads(response.read())]


def start_hosts(shapes: Iterable[HostShape], images: Sequence[bytes]) -> list[PoliteHost]:
    hosts = [PoliteHost(shape, images) for shape in shapes]
    for host in hosts:
        host.start()
    return hosts


def main(argv: Sequence[str] | None = None) -> None:
    """Serve hosts in this process until its standard input closes. Prints one JSON line first:
    ``{"urls": [...]}``, in the order of the shapes."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("shapes", nargs="+", type=HostShape.parse, help=HostShape.parse.__doc__)
    parser.add_argument("--samples", type=Path, required=True, help="photos to serve, as small JPEGs")
    parser.add_argument("--long-side", type=int, default=320, help="pixels of the served JPEGs' longer side")
    args = parser.parse_args(argv)
    hosts = start_hosts(args.shapes, sample_jpegs(args.samples, args.long_side))
    print(json.dumps({"urls": [host.url for host in hosts]}), flush=True)
    sys.stdin.read()  # until the parent closes it (or dies)
    for host in hosts:
        host.stop()


if __name__ == "__main__":
    main()
