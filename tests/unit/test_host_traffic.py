"""A host's log read back (batchpredict.local.host_traffic): hand-made logs with known answers."""

from __future__ import annotations

import pytest

from batchpredict.local.host_traffic import least_seconds, max_in_window, max_overlap, traffic, within
from batchpredict.local.polite_hosts import HostShape, Request


def request(arrived: float, ended: float | None = None, status: int = 200) -> Request:
    return Request(arrived, arrived if ended is None else ended, status, f"/img/{arrived}.jpg")


@pytest.mark.parametrize(
    ("times", "window", "most"),
    [
        ([], 1.0, 0),
        ([5.0], 1.0, 1),
        ([0.0, 0.5, 0.99, 1.0, 1.5], 1.0, 3),  # [t, t + 1): 1.0 is not in the first window
        ([0.0, 0.1, 0.2, 5.0, 5.1], 1.0, 3),
        ([3.0, 0.0, 2.0, 1.0], 1.0, 1),  # unordered; one a second
        ([0.0, 1.0, 1.5, 2.0], 2.0, 3),
        ([1.0] * 7, 1.0, 7),
    ],
)
def test_max_in_window(times: list[float], window: float, most: int) -> None:
    assert max_in_window(times, window) == most


@pytest.mark.parametrize(
    ("spans", "since", "most"),
    [
        ([], None, 0),
        ([(0, 2), (1, 3), (2, 4)], None, 2),  # at 2 one ends as the other starts
        ([(0, 10), (1, 2), (3, 4), (3.5, 5)], None, 3),
        ([(0, 10), (1, 2), (3, 4), (3.5, 5)], 4.0, 2),  # (0, 10) and (3.5, 5) are open at 4
        ([(0, 10), (1, 2), (3, 4), (3.5, 5)], 6.0, 1),  # only the long one, which no event follows
        ([(0, 1), (0, 1), (0, 1)], 1.0, 0),
    ],
)
def test_max_overlap(spans: list[tuple[float, float]], since: float | None, most: int) -> None:
    assert max_overlap(spans, since) == most


def test_traffic_of_a_whole_log() -> None:
    log = [
        request(0.0, 0.5),
        request(0.1, 0.15, 429),
        request(0.2, 0.6),
        request(0.3, 0.35, 503),
        request(2.0, 2.1),
        request(4.0, 4.4),
    ]
    t = traffic(log)
    assert (t.requests, t.refused, t.max_rate, t.max_concurrency) == (6, 2, 4, 3)
    assert t.refused_share == pytest.approx(2 / 6)
    assert t.period == 4.0 and t.mean_rate == pytest.approx(6 / 4)


def test_traffic_from_a_time_on_counts_what_arrived_since_and_what_was_still_in_flight() -> None:
    # 8 a second for the first minute, one at a time; then 4 a second, one at a time, every tenth
    # refused; and one slow request from just before the minute, still in flight after it.
    early = [request(i / 8, i / 8 + 0.1) for i in range(480)]
    late = [request(60 + i / 4, 60 + i / 4 + 0.1, 429 if i % 10 == 0 else 200) for i in range(120)]
    slow = request(59.95, 61.0)
    t = traffic([*early, slow, *late], since=60.0, until=90.0)
    assert (t.requests, t.refused, t.max_rate) == (120, 12, 4)
    assert t.max_concurrency == 2  # the slow one and one of the new ones
    assert t.mean_rate == pytest.approx(4.0) and t.period == 30.0
    whole = traffic([*early, slow, *late])
    assert (whole.requests, whole.max_concurrency) == (601, 2)
    assert whole.max_rate == 9  # [59, 60): eight early ones and the slow one


def test_traffic_until_leaves_out_later_arrivals_and_a_burst_counts_over_one_window() -> None:
    log = [request(0.0), request(0.1), request(0.2), request(10.0)]
    t = traffic(log, until=5.0)
    assert (t.requests, t.max_rate) == (3, 3)
    burst = traffic(log[:3])
    assert burst.period == 1.0 and burst.mean_rate == 3.0


def test_an_empty_log() -> None:
    t = traffic([], since=10.0, until=20.0)
    assert (t.requests, t.refused, t.max_rate, t.max_concurrency, t.refused_share) == (0, 0, 0, 0, 0.0)


def test_least_seconds_is_the_slower_of_the_rate_and_the_concurrency() -> None:
    assert least_seconds(1000, HostShape(rps=5, concurrency=4, latency_ms=100)) == 200.0
    # 2 slots of 1 s each serve 2 a second, under the 100 rps allowed
    assert least_seconds(100, HostShape(rps=100, concurrency=2, latency_ms=1000)) == 50.0
    assert least_seconds(100, HostShape()) == 0.0
    assert least_seconds(100, HostShape(reject_all=True)) is None


def test_within_allows_the_slack() -> None:
    assert within(5, 5) and within(5.5, 5) and not within(6, 5)
    assert within(22, 20) and not within(23, 20)
    assert within(4, 4, slack=0.0) and not within(4.4, 4, slack=0.0)
