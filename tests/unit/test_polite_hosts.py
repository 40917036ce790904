"""The polite test hosts (batchpredict.local.polite_hosts) really refuse past their limits: 429
(or 503) past the rate and past the concurrency, with Retry-After in seconds or as an HTTP date,
and log every request. On loopback, with a frozen clock where the rate is concerned."""

from __future__ import annotations

import email.utils
import io
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from batchpredict.local.polite_hosts import (
    HostShape,
    PoliteHost,
    Request,
    read_log,
    retry_after_value,
    sample_jpegs,
)

NOW = 1_800_000_000.0


def jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, "JPEG")
    return out.getvalue()


IMAGES = [jpeg((255, 0, 0)), jpeg((0, 0, 255))]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@contextmanager
def serving(shape: HostShape, clock: Clock | None = None) -> Iterator[PoliteHost]:
    host = PoliteHost(shape, IMAGES, clock=clock or time.time)
    host.start()
    try:
        yield host
    finally:
        host.stop()


def logged(host: PoliteHost, count: int) -> list[Request]:
    """The host's log once it holds ``count`` requests: a request is logged when its answer is
    written, which its client may read first."""
    deadline = time.monotonic() + 5
    while len(log := host.requests()) < count:
        assert time.monotonic() < deadline, log
        time.sleep(0.01)
    return log


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_a_host_serves_its_jpegs_by_number_and_404s_anything_else() -> None:
    with serving(HostShape()) as host:
        assert get(f"{host.url}/img/0.jpg")[::2] == (200, IMAGES[0])
        assert get(f"{host.url}/img/3.jpg")[::2] == (200, IMAGES[1])  # N modulo the images
        assert get(f"{host.url}/other")[0] == 404
        assert [(r.status, r.path) for r in logged(host, 3)] == [
            (200, "/img/0.jpg"),
            (200, "/img/3.jpg"),
            (404, "/other"),
        ]


def test_past_its_rate_a_host_answers_429_with_retry_after_until_the_window_moves_on() -> None:
    clock = Clock()
    with serving(HostShape(rps=3), clock) as host:
        assert [get(f"{host.url}/img/{n}.jpg")[0] for n in range(3)] == [200, 200, 200]
        status, headers, _ = get(f"{host.url}/img/3.jpg")
        assert status == 429 and headers["Retry-After"] == "1"
        clock.now += 0.5  # the window still holds the three
        assert get(f"{host.url}/img/4.jpg")[0] == 429
        clock.now += 0.5  # all three have left the sliding window
        assert get(f"{host.url}/img/5.jpg")[0] == 200
        log = logged(host, 6)
    assert [r.status for r in log] == [200, 200, 200, 429, 429, 200]
    assert [r.refused for r in log] == ["", "", "", "rate", "rate", ""]
    assert [r.arrived - NOW for r in log] == [0, 0, 0, 0, 0.5, 1.0]


def test_a_host_under_one_request_a_second_admits_one_per_longer_window() -> None:
    clock = Clock()
    with serving(HostShape(rps=0.5), clock) as host:
        assert get(f"{host.url}/img/0.jpg")[0] == 200
        clock.now += 1.5
        status, headers, _ = get(f"{host.url}/img/1.jpg")
        assert status == 429 and headers["Retry-After"] == "1"  # 0.5 s left, rounded up
        clock.now += 0.5
        assert get(f"{host.url}/img/2.jpg")[0] == 200


def test_past_its_concurrency_a_host_answers_429_at_once_and_admits_again_when_one_ends() -> None:
    with serving(HostShape(concurrency=2, latency_ms=1000)) as host:
        results: list[int] = []
        slow = [
            threading.Thread(target=lambda n=n: results.append(get(f"{host.url}/img/{n}.jpg")[0]))
            for n in (0, 1)
        ]
        for thread in slow:
            thread.start()
        deadline = time.monotonic() + 5
        while host._gate.in_flight < 2:  # both admitted and being answered
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status, headers, _ = get(f"{host.url}/img/2.jpg")
        assert status == 429 and headers["Retry-After"] == "1"
        for thread in slow:
            thread.join()
        assert results == [200, 200]
        assert get(f"{host.url}/img/3.jpg")[0] == 200  # a slot is free again
        log = logged(host, 4)
    refused = [r for r in log if r.status == 429]
    assert [r.refused for r in refused] == ["concurrency"]
    assert all(r.ended - r.arrived >= 1.0 for r in log if r.status == 200)
    assert refused[0].ended - refused[0].arrived < 0.5  # refused without the latency


def test_retry_after_as_an_http_date_is_never_earlier_than_meant() -> None:
    clock = Clock()
    clock.now = NOW + 0.25
    with serving(HostShape(rps=1, retry_after="date"), clock) as host:
        assert get(f"{host.url}/img/0.jpg")[0] == 200
        clock.now += 0.5
        status, headers, _ = get(f"{host.url}/img/1.jpg")
    assert status == 429
    when = email.utils.parsedate_to_datetime(headers["Retry-After"]).timestamp()
    assert when == NOW + 2  # the window frees at NOW + 1.25: the next whole second


@pytest.mark.parametrize(
    ("shape", "wait", "expected"),
    [
        (HostShape(), 0.2, "1"),  # at least a second
        (HostShape(), 2.01, "3"),  # rounded up
        (HostShape(retry_after_seconds=30), 0.2, "30"),
        (HostShape(retry_after="none"), 0.2, None),
        (HostShape(retry_after="date", retry_after_seconds=60), 0.2, "Fri, 15 Jan 2027 08:01:00 GMT"),
    ],
)
def test_retry_after_values(shape: HostShape, wait: float, expected: str | None) -> None:
    assert retry_after_value(shape, wait, NOW) == expected


def test_a_503_host_without_retry_after_and_a_host_that_refuses_everything() -> None:
    clock = Clock()
    with serving(HostShape(rps=1, status=503, retry_after="none"), clock) as host:
        assert get(f"{host.url}/img/0.jpg")[0] == 200
        status, headers, _ = get(f"{host.url}/img/1.jpg")
        assert status == 503 and "Retry-After" not in headers
    with serving(HostShape(reject_all=True, retry_after_seconds=5)) as host:
        answers = [get(f"{host.url}/img/{n}.jpg") for n in range(3)]
        assert [(status, headers["Retry-After"]) for status, headers, _ in answers] == [(429, "5")] * 3
        assert {r.refused for r in logged(host, 3)} == {"reject_all"}


def test_refused_requests_count_against_the_rate_only_when_the_host_says_so() -> None:
    clock = Clock()
    with serving(HostShape(rps=1, count_refused=True), clock) as host:
        assert get(f"{host.url}/img/0.jpg")[0] == 200
        clock.now += 0.9
        assert get(f"{host.url}/img/1.jpg")[0] == 429
        clock.now += 0.2  # the admitted one has left the window, the refused one has not
        assert get(f"{host.url}/img/2.jpg")[0] == 429


def test_a_host_that_slows_down_answers_past_its_limits_late_instead_of_refusing() -> None:
    with serving(HostShape(rps=2, queue=True)) as host:
        answers = [get(f"{host.url}/img/{n}.jpg")[0] for n in range(3)]
        log = logged(host, 3)
    assert answers == [200, 200, 200]
    assert [r.refused for r in log] == ["", "", ""]
    assert log[2].queued > 0.5  # until the first left the window, a second after it arrived
    assert log[2].arrived + log[2].queued >= log[0].arrived + 1.0


def test_the_log_is_read_over_http_and_is_neither_limited_nor_logged() -> None:
    clock = Clock()
    with serving(HostShape(rps=1), clock) as host:
        get(f"{host.url}/img/0.jpg")
        get(f"{host.url}/img/1.jpg")
        logged(host, 2)
        for _ in range(3):
            log = read_log(host.url)
        assert log == host.requests()
    assert [(r.status, r.path) for r in log] == [(200, "/img/0.jpg"), (429, "/img/1.jpg")]
    assert isinstance(log[0], Request)


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("5:4", HostShape(rps=5, concurrency=4)),
        ("20:8:100", HostShape(rps=20, concurrency=8, latency_ms=100)),
        ("-:-:0:reject-all:retry=2", HostShape(reject_all=True, retry_after_seconds=2)),
        (
            "50:16::503:date:count-refused",
            HostShape(50, 16, status=503, retry_after="date", count_refused=True),
        ),
        ("0.5:-:0:no-retry-after", HostShape(rps=0.5, retry_after="none")),
        ("5:2:0:queue", HostShape(rps=5, concurrency=2, queue=True)),
    ],
)
def test_host_shapes_parse(text: str, shape: HostShape) -> None:
    assert HostShape.parse(text) == shape


@pytest.mark.parametrize(
    "text", ["5", "0:4", "5:0", "5:4:-1", "5:4:0:teapot", "x:4", "-:-:0:reject-all:queue"]
)
def test_bad_host_shapes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        HostShape.parse(text)


def test_sample_jpegs_are_small_real_jpegs_of_the_sample_photos(samples_dir: Path) -> None:
    images = sample_jpegs(samples_dir, long_side=64)
    assert len(images) == len([p for p in samples_dir.iterdir() if p.suffix in (".jpg", ".png")])
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and max(image.size) == 64
