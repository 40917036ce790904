"""Per-host politeness on a moto server: host states shared through DynamoDB by separate
limiters (as separate invocations share them), and a job whose host answers 429 with
Retry-After: its lines are deferred and come back, and every line ends as one result."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import boto3
import pytest

from batchpredict.hostlimiter import HostLimiter, HostStateStore
from batchpredict.hostlimits import HostPolicy

from .conftest import PipelineStack as Stack

URL = "http://shared.example/cat.jpg"


@pytest.fixture
def table(moto_env: str) -> str:
    name = f"hosts-{uuid.uuid4().hex[:8]}"
    boto3.client("dynamodb").create_table(
        TableName=name,
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def _limiter(table: str, policy: HostPolicy) -> HostLimiter:
    return HostLimiter(HostStateStore(boto3.client("dynamodb"), table, policy), policy)


def test_two_invocations_share_one_hosts_timeline(table: str) -> None:
    policy = HostPolicy(rps=20.0, max_rps=20.0)
    first, second = _limiter(table, policy), _limiter(table, policy)
    horizon = time.time() + 60
    turns = [limiter.turn(URL, None, horizon, pending=10) for limiter in (first, second) for _ in range(10)]
    starts = sorted(t.at for t in turns)
    assert all(t.defer_until is None for t in turns)
    # Twenty requests from two holders at 20 a second: never closer than 1/20 s apart.
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.05 - 1e-6
    assert starts[-1] - starts[0] >= 19 * 0.05 - 1e-6
    # One lease of 10 each: a read and a write apiece.
    assert first.store is not None and second.store is not None
    assert (first.store.usage.writes, second.store.usage.writes) == (1, 1)


def test_a_refusal_seen_by_one_invocation_pauses_the_host_for_all(table: str) -> None:
    policy = HostPolicy(rps=10.0)
    first, second = _limiter(table, policy), _limiter(table, policy)
    first.refused(URL, retry_after=30.0)
    turn = second.turn(URL, None, time.time() + 5)
    assert turn.defer_until is not None and turn.defer_until >= time.time() + 28
    later = second.turn(URL, None, time.time() + 60)
    assert later.defer_until is None and later.at >= time.time() + 28


class _Refusing(BaseHTTPRequestHandler):
    """Each path: 429 with Retry-After 1 on its first request, then the photo."""

    seen: ClassVar[Counter[str]] = Counter()
    photo: ClassVar[bytes] = b""
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            self.seen[self.path] += 1
            first = self.seen[self.path] == 1
        if first:
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.photo)))
        self.end_headers()
        self.wfile.write(self.photo)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_host(samples_dir: Path) -> Iterator[str]:
    _Refusing.seen = Counter()
    _Refusing.photo = (samples_dir / "flower.jpg").read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_lines_refused_with_retry_after_come_back_and_every_line_ends_once(
    stack: Stack, refusing_host: str, image_server: str
) -> None:
    lines = [f"{refusing_host}/flower-{i}.jpg" for i in range(6)] + [f"{image_server}/coffee.png"] * 2
    stack.submit("refused.txt", "\n".join(lines))
    stack.run(max_seconds=180)
    job_id = stack.only_job_id()
    results = stack.results_lines(job_id)
    assert [r["index"] for r in results] == list(range(len(lines)))
    assert all(r["status"] == "SUCCEEDED" for r in results), [r["error"] for r in results]
    assert all(r["predictions"][0]["label"].startswith("daisy") for r in results[:6])
    # Every refused path was asked again only after its Retry-After, and only once more.
    assert dict(_Refusing.seen) == {f"/flower-{i}.jpg": 2 for i in range(6)}
    job = stack.job_dict(job_id)
    assert job["status"] == "COMPLETED" and job["deferred_lines"] == 0
    assert job["chunks_done"] == job["chunks_total"]


def test_turns_granted_before_a_cut_elsewhere_are_taken_again(table: str) -> None:
    """A process's turns booked at a rate another process just found refused are not all sent:
    it reads the host's state (at most once a second) before sending one, and asks again."""
    policy = HostPolicy(rps=10.0)
    first, second = _limiter(table, policy), _limiter(table, policy)
    turn = first.turn(URL, None, time.time() + 60, pending=5)
    assert first.valid(URL, turn)
    second.refused(URL, retry_after=None)
    first._host("shared.example").checked_at = 0.0  # as if a second had passed since its last look
    assert not first.valid(URL, turn)
    again = first.turn(URL, None, time.time() + 60)
    assert again.epoch != turn.epoch and first.valid(URL, again)
    # In the process that was refused itself, at once.
    refused_here = second.turn(URL, None, time.time() + 60)
    second.refused(URL, retry_after=None)
    assert not second.valid(URL, refused_here)
