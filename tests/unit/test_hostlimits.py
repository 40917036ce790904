"""Per-host politeness rules (hostlimits.py): host keys, the shared timeline, learning, Retry-After."""

from __future__ import annotations

from dataclasses import replace
from email.utils import formatdate

import pytest

from batchpredict import hostlimits
from batchpredict.hostlimits import (
    CUT_FACTOR,
    GROW_BACK,
    GROW_FAST,
    GROW_INTERVAL_SECONDS,
    GROW_SLOW,
    MAX_RETRY_AFTER_SECONDS,
    PROBE_AFTER_SECONDS,
    SAFE_SHARE,
    HostPolicy,
    HostState,
    host_key,
    parse_retry_after,
)

NOW = 1_800_000_000.0
POLICY = HostPolicy(rps=10.0, max_rps=100.0, concurrency=8)


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://Images.Example.COM/a.jpg", "images.example.com"),
        ("https://images.example.com:443/a.jpg", "images.example.com"),
        ("http://images.example.com:80/a.jpg", "images.example.com"),
        ("http://images.example.com:8080/a.jpg", "images.example.com:8080"),
        ("https://images.example.com:80/a.jpg", "images.example.com:80"),
        ("http://127.0.0.1:5001/x", "127.0.0.1:5001"),
        ("http://[::1]:81/x", "[::1]:81"),
        ("https://user:pw@cdn.example.org/x", "cdn.example.org"),
        ("https://example.com./x", "example.com"),
        ("s3://bucket/key.jpg", None),
        ("ftp://example.com/x", None),
        ("not a url", None),
        ("http://[::1/x", None),
    ],
)
def test_the_host_is_the_exact_host_and_a_port_that_is_not_the_default(url: str, key: str | None) -> None:
    assert host_key(url) == key


def test_sub_domains_are_hosts_of_their_own() -> None:
    assert host_key("https://a.example.com/x") != host_key("https://b.example.com/x")


def test_leases_take_consecutive_stretches_of_one_timeline() -> None:
    state = hostlimits.new_state(POLICY)
    state, first = hostlimits.lease(state, POLICY, NOW, want=5)
    state, second = hostlimits.lease(state, POLICY, NOW, want=5)
    assert first.slots() == pytest.approx([NOW + i * 0.1 for i in range(5)])
    # The second holder starts where the first ends: together they never pass 10 a second.
    assert second.slots() == pytest.approx([NOW + 0.5 + i * 0.1 for i in range(5)])
    assert state.tat == pytest.approx(NOW + 1.0)


def test_a_lease_is_at_most_lease_seconds_of_the_host_and_at_least_one_request() -> None:
    _, big = hostlimits.lease(hostlimits.new_state(POLICY), POLICY, NOW, want=1000)
    assert big.count == 10  # 1 s at 10 a second
    slow = HostPolicy(rps=0.2, min_rps=0.2)
    _, one = hostlimits.lease(hostlimits.new_state(slow), slow, NOW, want=50)
    assert one.count == 1 and one.interval == pytest.approx(5.0)


def test_no_host_takes_more_than_a_hundred_leases_a_second_however_fast() -> None:
    fast = HostPolicy(rps=1000.0, max_rps=1000.0)
    state = hostlimits.new_state(fast)
    leases = []
    for _ in range(50):  # fifty holders of one line each
        state, got = hostlimits.lease(state, fast, NOW, want=1)
        leases.append(got)
    assert all(lease.count == 10 for lease in leases)
    assert state.tat - NOW == pytest.approx(50 * 10 / 1000)  # 50 leases took 0.5 s: 100 a second


def test_an_idle_timeline_starts_now_not_in_the_past() -> None:
    state = HostState(rate=10.0, tat=NOW - 100)
    _, got = hostlimits.lease(state, POLICY, NOW, want=1)
    assert got.start == NOW


def test_a_jobs_host_rps_spaces_its_own_leases_wider() -> None:
    _, got = hostlimits.lease(hostlimits.new_state(POLICY), POLICY, NOW, want=10, job_rps=2.0)
    assert got.interval == pytest.approx(0.5) and got.count == 2


def test_concurrency_caps_the_rate_by_littles_law() -> None:
    # 8 in flight at 2 s an answer is 4 a second, whatever the learned rate.
    state = HostState(rate=50.0, latency=2.0)
    assert hostlimits.usable_rate(state, POLICY, None) == pytest.approx(4.0)


def test_a_refusal_cuts_once_an_interval_and_pauses_for_retry_after() -> None:
    state = HostState(rate=10.0, tat=NOW)
    state = hostlimits.refused(state, POLICY, NOW, retry_after=30.0)
    assert state.rate == pytest.approx(10.0 * CUT_FACTOR) and state.ceiling == 10.0
    assert state.paused_until == NOW + 30 and state.tat == NOW + 30
    # The burst of 429s of the same overshoot is one signal.
    again = hostlimits.refused(state, POLICY, NOW + 0.5, retry_after=None)
    assert again.rate == state.rate and again.refused_run == 2
    _, got = hostlimits.lease(again, POLICY, NOW + 1, want=1)
    assert got.start == NOW + 30  # nobody asks before the host said


def test_a_cascade_of_cuts_keeps_the_ceiling_it_began_at() -> None:
    state = hostlimits.refused(HostState(rate=10.0), POLICY, NOW, None)
    state = hostlimits.refused(state, POLICY, NOW + 3, None)  # turns granted before the first cut
    assert state.rate == pytest.approx(10.0 * CUT_FACTOR**2) and state.ceiling == 10.0
    later = hostlimits.refused(state, POLICY, NOW + 60, None)  # a new episode
    assert later.ceiling == pytest.approx(state.rate)


def test_cuts_never_go_below_the_floor() -> None:
    state = HostState(rate=0.25)
    for i in range(10):
        state = hostlimits.refused(state, POLICY, NOW + 10 * i, None)
    assert state.rate == POLICY.min_rps


def test_the_rate_grows_only_while_demand_queues_and_nothing_was_refused_lately() -> None:
    queued = HostState(rate=10.0, tat=NOW + 5)
    grown, _ = hostlimits.lease(queued, POLICY, NOW, want=1)
    assert grown.rate == pytest.approx(10.0 * GROW_FAST)
    idle = HostState(rate=10.0, tat=NOW - 1)
    assert hostlimits.lease(idle, POLICY, NOW, want=1)[0].rate == 10.0
    just_cut = replace(queued, cut_at=NOW - 1, ceiling=20.0)
    assert hostlimits.lease(just_cut, POLICY, NOW, want=1)[0].rate == 10.0
    # Once refused at 20, it grows back to just under 20, and stays there...
    after = replace(queued, cut_at=NOW - GROW_INTERVAL_SECONDS - 1, ceiling=20.0)
    assert hostlimits.lease(after, POLICY, NOW, want=1)[0].rate == pytest.approx(10.0 * GROW_BACK)
    near = replace(after, rate=16.5)
    assert hostlimits.lease(near, POLICY, NOW, want=1)[0].rate == pytest.approx(SAFE_SHARE * 20.0)
    at = replace(after, rate=SAFE_SHARE * 20.0)
    assert hostlimits.lease(at, POLICY, NOW, want=1)[0].rate == at.rate
    # ... until nothing was refused for a minute: then it probes, slowly.
    quiet = replace(at, cut_at=NOW - PROBE_AFTER_SECONDS)
    assert hostlimits.lease(quiet, POLICY, NOW, want=1)[0].rate == pytest.approx(at.rate * GROW_SLOW)
    capped = replace(queued, rate=POLICY.max_rps)
    assert hostlimits.lease(capped, POLICY, NOW, want=1)[0].rate == POLICY.max_rps


def test_no_growth_when_concurrency_is_what_limits() -> None:
    state = HostState(rate=10.0, tat=NOW + 5, latency=1.0)  # 8 in flight at 1 s: 8 a second
    assert hostlimits.lease(state, POLICY, NOW, want=1)[0].rate == 10.0


def test_reports_move_the_latency_average_and_a_success_ends_a_refusal_run() -> None:
    state = HostState(rate=10.0, latency=1.0, refused_run=3, refused_since=NOW)
    state = hostlimits.reported(state, successes=0, latency=2.0)
    assert state.latency == pytest.approx(1.2) and state.refused_run == 3
    state = hostlimits.reported(state, successes=1, latency=None)
    assert state.refused_run == 0


def test_a_host_refusing_everything_for_a_while_is_given_up_on() -> None:
    state = hostlimits.new_state(POLICY)
    for i in range(POLICY.breaker_refusals):
        state = hostlimits.refused(state, POLICY, NOW + i * 5, None)
    last = NOW + (POLICY.breaker_refusals - 1) * 5
    assert hostlimits.refusing(state, POLICY, last + 1)
    assert not hostlimits.refusing(hostlimits.reported(state, 1, None), POLICY, last + 1)
    # Until a success is reported (a probe's: hostlimiter.py), it stays given up on.
    assert hostlimits.refusing(state, POLICY, last + 10 * POLICY.breaker_seconds)
    # Many refusals in a short burst are an overshoot, not a host that refuses us.
    burst = hostlimits.new_state(POLICY)
    for _ in range(50):
        burst = hostlimits.refused(burst, POLICY, NOW, None)
    assert not hostlimits.refusing(burst, POLICY, NOW + 1)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("99999999999999", MAX_RETRY_AFTER_SECONDS),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_in_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_retry_after_as_an_http_date() -> None:
    assert parse_retry_after(formatdate(NOW + 90, usegmt=True), NOW) == pytest.approx(90.0)
    assert parse_retry_after(formatdate(NOW - 90, usegmt=True), NOW) == 0.0  # already past
    assert parse_retry_after(formatdate(NOW + 86_400 * 30, usegmt=True), NOW) == MAX_RETRY_AFTER_SECONDS
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00", NOW) is None  # no zone: not RFC 9110
    assert parse_retry_after("Wed, 99 Foo 2015 07:28:00 GMT", NOW) is None
