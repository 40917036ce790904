"""What hosts ask of us (issue 19, "Identify and respect"): the User-Agent every request sends,
X-Robots-Tag on the image's response, and robots.txt (RFC 9309), against servers on 127.0.0.1.

The network spies of test_fetch.py apply here too: no traffic leaves the machine.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from batchpredict import __version__
from batchpredict.errors import ErrorCode, PredictionError
from batchpredict.fetch import Fetcher
from batchpredict.robots import (
    ROBOTS_MAX_BYTES,
    UNREACHABLE_TTL_SECONDS,
    RobotsCache,
    RobotsRules,
    x_robots_forbidding,
)
from batchpredict.useragent import product_token
from tests.unit.test_fetch import FAST, IMAGE, _Server, _serving, connections, no_dns
from tests.unit.test_fetch import _Handler as _QuietHandler

__all__ = ["connections", "no_dns"]  # the spies, autouse here too

DEFAULT_UA = f"batchpredict/{__version__} (+https://github.com/OPERATOR/batchpredict)"


# -- a host whose answers each test sets ----------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: bytes = IMAGE
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0  # seconds before answering
    length: int | None = None  # a Content-Length other than the body's (the body is then cut)


class _Host(_Server):
    def __init__(self) -> None:
        super().__init__()
        self.RequestHandlerClass = _Handler
        self.answers: dict[str, Answer] = {}
        self.requests: list[tuple[str, str]] = []  # (path, User-Agent)
        self.lock = threading.Lock()


class _Handler(_QuietHandler):
    """Answers each path as the test set it (``*``: any other path; else 404), logging requests."""

    server: _Host  # type: ignore[assignment]

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        with self.server.lock:
            self.server.requests.append((self.path, self.headers.get("User-Agent", "")))
        answer = self.server.answers.get(self.path) or self.server.answers.get("*") or Answer(404, b"")
        if answer.delay and self.server.stop.wait(answer.delay):
            return
        self.send_response(answer.status)
        length = answer.length if answer.length is not None else len(answer.body)
        for name, value in [("Content-Length", str(length)), *answer.headers]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer.body)
        if answer.length is not None:
            self.close_connection = True


@dataclass
class Host:
    httpd: _Host

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def answer(self, path: str, answer: Answer) -> None:
        self.httpd.answers[path] = answer

    def paths(self) -> list[str]:
        with self.httpd.lock:
            return [path for path, _ in self.httpd.requests]

    def agents(self) -> list[str]:
        with self.httpd.lock:
            return [agent for _, agent in self.httpd.requests]


@pytest.fixture
def host() -> Iterator[Host]:
    with _serving(httpd=_Host()) as running:
        yield Host(running.httpd)  # type: ignore[arg-type]


@pytest.fixture
def make_fetcher() -> Iterator[Callable[..., Fetcher]]:
    made: list[Fetcher] = []

    def make(**limits: Any) -> Fetcher:
        made.append(Fetcher(replace(FAST, **limits)))
        return made[-1]

    yield make
    for fetcher in made:
        fetcher.close()


def refused(fetcher: Fetcher, url: str, **kwargs: Any) -> PredictionError:
    with pytest.raises(PredictionError) as raised:
        fetcher.fetch(url, **kwargs)
    return raised.value


# -- User-Agent -------------------------------------------------------------------


def test_every_request_names_the_stack_by_its_user_agent(
    host: Host, make_fetcher: Callable[..., Fetcher]
) -> None:
    host.answer("/a.png", Answer())
    host.answer("/robots.txt", Answer(404, b""))
    assert make_fetcher().fetch(host.url("/a.png")).data == IMAGE
    assert make_fetcher(user_agent="acmebot/2.1 (+https://acme.test/bot)", robots_txt=True).fetch(
        host.url("/a.png")
    )
    assert host.agents() == [DEFAULT_UA, *["acmebot/2.1 (+https://acme.test/bot)"] * 2]
    assert host.paths() == ["/a.png", "/robots.txt", "/a.png"]  # robots.txt asked with it too


@pytest.mark.parametrize(
    ("user_agent", "token"),
    [(DEFAULT_UA, "batchpredict"), ("AcmeBot/2.1 (+x)", "acmebot"), ("acmebot", "acmebot"), ("a b", "a")],
)
def test_the_product_token_is_the_user_agents_first_word(user_agent: str, token: str) -> None:
    assert product_token(user_agent) == token


# -- X-Robots-Tag -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "forbidding"),
    [
        (["noai"], "noai"),
        (["noimageai"], "noimageai"),
        (["none"], "none"),
        (["NoAI"], "noai"),  # case-insensitive
        (["NOIMAGEAI"], "noimageai"),
        (["noindex, nofollow"], None),  # other directives do not stop a prediction
        (["noindex,  noai ,nofollow"], "noai"),  # comma separated, blanks around
        (["noindex", "noimageai"], "noimageai"),  # one of several headers
        (["all"], None),
        ([], None),
        (["noai-please", "nonesuch"], None),  # whole directives only
        (["otherbot: noai"], None),  # addressed to another bot
        (["otherbot: noindex, noai"], None),  # the directives after it in the value go with it
        (["otherbot: noai", "noimageai"], "noimageai"),  # another header is everyone's again
        (["batchpredict: noai"], "noai"),  # addressed to us by our product token
        (["BatchPredict: noindex, NONE"], "none"),
        (["otherbot: noindex, batchpredict: noai"], "noai"),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST, noai"], "noai"),  # a colon that is no bot
        (["max-image-preview: large, noimageai"], "noimageai"),
        (["unavailable_after: 2030-06-25T15:00:00, noai"], "noai"),  # a time's colons
    ],
)
def test_x_robots_tag_directives(values: list[str], forbidding: str | None) -> None:
    assert x_robots_forbidding(values, "batchpredict") == forbidding


def test_a_bot_prefix_applies_to_the_stacks_own_product_token() -> None:
    assert x_robots_forbidding(["acmebot: noai"], "acmebot") == "noai"
    assert x_robots_forbidding(["batchpredict: noai"], "acmebot") is None


def test_a_forbidding_header_fails_the_line_without_reading_the_body(
    host: Host, make_fetcher: Callable[..., Fetcher]
) -> None:
    # Declares 10 GB and sends 1 KB: reading the body would fail too_large, or wait out the deadline.
    headers = [("X-Robots-Tag", "noindex"), ("X-Robots-Tag", "NoImageAI")]
    host.answer("/huge.png", Answer(body=b"x" * 1024, headers=headers, length=10**10))
    started = time.monotonic()

    error = refused(make_fetcher(), host.url("/huge.png"))

    assert (error.code, error.transient) == (ErrorCode.ROBOTS_DISALLOWED, False)
    assert "X-Robots-Tag 'noimageai'" in error.message and "127.0.0.1" in error.message
    assert time.monotonic() - started < FAST.read_timeout  # not a read that timed out


def test_ignore_fetches_what_the_header_forbids(host: Host, make_fetcher: Callable[..., Fetcher]) -> None:
    host.answer("/mine.png", Answer(headers=[("X-Robots-Tag", "noai")]))
    fetcher = make_fetcher()
    assert refused(fetcher, host.url("/mine.png")).code == ErrorCode.ROBOTS_DISALLOWED
    assert fetcher.fetch(host.url("/mine.png"), robots=False).data == IMAGE


def test_only_the_image_responses_header_counts_not_a_redirects(
    host: Host, make_fetcher: Callable[..., Fetcher]
) -> None:
    host.answer("/old.png", Answer(302, b"", [("Location", "/new.png"), ("X-Robots-Tag", "noai")]))
    host.answer("/new.png", Answer(headers=[("X-Robots-Tag", "otherbot: noai")]))
    assert make_fetcher().fetch(host.url("/old.png")).data == IMAGE
    host.answer("/new.png", Answer(headers=[("X-Robots-Tag", "batchpredict: noai")]))
    assert refused(make_fetcher(), host.url("/old.png")).code == ErrorCode.ROBOTS_DISALLOWED


# -- robots.txt: the rules ----------------------------------------------------------------

ROBOTS = b"""\
# a comment
User-agent: *
Disallow: /private/
Disallow: /*.gif$
Allow: /private/shared/

User-agent: otherbot
Disallow: /

User-agent: BatchPredict/1.0
Disallow: /no-bots/
Allow: /no-bots/but-us
"""


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("/a.png", True),
        ("/no-bots/x.png", False),  # our group, not '*'
        ("/no-bots/but-us.png", True),  # the longer rule wins
        ("/private/x.png", True),  # '*' does not apply: we have a group of our own
    ],
)
def test_our_group_is_the_one_naming_our_product_token(target: str, allowed: bool) -> None:
    assert RobotsRules.parse(ROBOTS, "batchpredict").allows(target) is allowed


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("/a.png", True),
        ("/private/x.png", False),
        ("/private/shared/x.png", True),  # longest match: Allow /private/shared/ beats /private/
        ("/cat.gif", False),  # '*' and '$'
        ("/cat.gif?size=2", True),  # '$' anchors the end
        ("/deep/dir/cat.gif", False),
        ("/%70rivate/x.png", False),  # percent-encoding compared decoded, as robotparser does
    ],
)
def test_without_a_group_of_our_own_the_star_group_applies(target: str, allowed: bool) -> None:
    assert RobotsRules.parse(ROBOTS, "acmebot").allows(target) is allowed


def test_an_allow_wins_a_tie_and_empty_rules_allow_everything() -> None:
    tie = RobotsRules.parse(b"User-agent: *\nDisallow: /a\nAllow: /a\n", "batchpredict")
    assert tie.allows("/a/x.png")
    assert RobotsRules.parse(b"User-agent: *\nDisallow:\n", "batchpredict").allows("/x")
    assert RobotsRules.parse(b"", "batchpredict").allows("/x")
    assert RobotsRules.parse(b"\xff\xfe garbage \x00", "batchpredict").allows("/x")


@pytest.mark.parametrize(
    ("status", "allowed"), [(404, True), (403, True), (410, True), (429, False), (500, False), (503, False)]
)
def test_rfc_9309_4xx_allows_all_and_5xx_disallows_all(status: int, allowed: bool) -> None:
    rules = RobotsRules.for_status(status)
    assert rules.allows("/a.png") is allowed
    assert rules.ttl == (RobotsRules().ttl if allowed else UNREACHABLE_TTL_SECONDS)


# -- robots.txt: through the fetcher ----------------------------------------------------


def test_robots_txt_is_not_read_unless_the_stack_turns_it_on(
    host: Host, make_fetcher: Callable[..., Fetcher]
) -> None:
    host.answer("/robots.txt", Answer(body=b"User-agent: *\nDisallow: /\n"))
    host.answer("/a.png", Answer())
    assert make_fetcher().fetch(host.url("/a.png")).data == IMAGE
    assert host.paths() == ["/a.png"]


def test_disallowed_paths_fail_and_the_file_is_read_once_per_host(
    host: Host, make_fetcher: Callable[..., Fetcher]
) -> None:
    host.answer("/robots.txt", Answer(body=ROBOTS))
    host.answer("*", Answer())
    fetcher = make_fetcher(robots_txt=True)

    assert fetcher.fetch(host.url("/a.png")).data == IMAGE
    error = refused(fetcher, host.url("/no-bots/b.png"))
    assert fetcher.fetch(host.url("/no-bots/but-us.png")).data == IMAGE

    assert (error.code, error.transient) == (ErrorCode.ROBOTS_DISALLOWED, False)
    assert "robots.txt of 127.0.0.1 disallows /no-bots/b.png for batchpredict" in error.message
    assert host.paths() == ["/robots.txt", "/a.png", "/no-bots/but-us.png"]  # b.png never asked


def test_ignore_skips_robots_txt_as_well(host: Host, make_fetcher: Callable[..., Fetcher]) -> None:
    host.answer("/robots.txt", Answer(body=b"User-agent: *\nDisallow: /\n"))
    host.answer("/a.png", Answer())
    assert make_fetcher(robots_txt=True).fetch(host.url("/a.png"), robots=False).data == IMAGE
    assert host.paths() == ["/a.png"]


@pytest.mark.parametrize("status", [404, 401, 403])
def test_no_robots_txt_allows_everything(
    status: int, host: Host, make_fetcher: Callable[..., Fetcher]
) -> None:
    host.answer("/robots.txt", Answer(status, b"User-agent: *\nDisallow: /\n"))  # a 4xx body is no rules
    host.answer("/a.png", Answer())
    assert make_fetcher(robots_txt=True).fetch(host.url("/a.png")).data == IMAGE


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (Answer(503, b"busy"), "HTTP 503"),
        (Answer(500, b""), "HTTP 500"),
        (Answer(429, b""), "HTTP 429"),
        (Answer(200, b"x", length=100), "connection_error"),  # cut off: unreachable
    ],
)
def test_an_unreachable_robots_txt_disallows_the_host_for_a_while(
    answer: Answer, reason: str, host: Host, make_fetcher: Callable[..., Fetcher]
) -> None:
    host.answer("/robots.txt", answer)
    host.answer("/a.png", Answer())
    fetcher = make_fetcher(robots_txt=True)

    first, second = refused(fetcher, host.url("/a.png")), refused(fetcher, host.url("/b.png"))

    assert first.code == second.code == ErrorCode.ROBOTS_DISALLOWED and not first.transient
    assert f"robots.txt of 127.0.0.1 could not be read ({reason}" in first.message
    assert "RFC 9309" in first.message
    assert host.paths() == ["/robots.txt"]  # no image asked, and the answer kept


def test_a_host_that_cannot_be_reached_for_robots_txt_is_disallowed(
    make_fetcher: Callable[..., Fetcher],
) -> None:
    with contextlib.closing(socket.socket()) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connection refused
        error = refused(make_fetcher(robots_txt=True), f"http://127.0.0.1:{port}/a.png")
    assert error.code == ErrorCode.ROBOTS_DISALLOWED and "connection_error" in error.message


def test_robots_txt_redirects_are_followed_through_the_guard(
    host: Host, make_fetcher: Callable[..., Fetcher]
) -> None:
    host.answer("/robots.txt", Answer(301, b"", [("Location", "/real-robots.txt")]))
    host.answer("/real-robots.txt", Answer(body=b"User-agent: *\nDisallow: /x/\n"))
    host.answer("*", Answer())
    fetcher = make_fetcher(robots_txt=True)
    assert refused(fetcher, host.url("/x/a.png")).code == ErrorCode.ROBOTS_DISALLOWED
    # A redirect to an address the guard refuses: unreachable, so disallowed.
    host.answer("/robots.txt", Answer(301, b"", [("Location", "http://10.1.2.3/robots.txt")]))
    error = refused(make_fetcher(robots_txt=True), host.url("/a.png"))
    assert error.code == ErrorCode.ROBOTS_DISALLOWED and "blocked_address" in error.message


def test_only_the_first_500_kib_of_robots_txt_count(host: Host, make_fetcher: Callable[..., Fetcher]) -> None:
    padding = b"# " + b"x" * ROBOTS_MAX_BYTES + b"\n"
    host.answer(
        "/robots.txt", Answer(body=b"User-agent: *\nDisallow: /early/\n" + padding + b"Disallow: /late/\n")
    )
    host.answer("*", Answer())
    fetcher = make_fetcher(robots_txt=True)
    assert refused(fetcher, host.url("/early/a.png")).code == ErrorCode.ROBOTS_DISALLOWED
    assert fetcher.fetch(host.url("/late/a.png")).data == IMAGE  # past 500 KiB: ignored, not too_large


def test_concurrent_fetches_of_one_host_share_one_robots_txt_request(
    host: Host, make_fetcher: Callable[..., Fetcher]
) -> None:
    host.answer("/robots.txt", Answer(body=b"User-agent: *\nDisallow: /x/\n", delay=0.3))
    host.answer("*", Answer())
    fetcher = make_fetcher(robots_txt=True)
    results: list[bytes | PredictionError] = [b""] * 8

    def fetch(i: int) -> None:
        try:
            results[i] = fetcher.fetch(host.url(f"/{'x/' if i % 2 else ''}{i}.png")).data
        except PredictionError as exc:
            results[i] = exc

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert host.paths().count("/robots.txt") == 1
    assert [r == IMAGE for r in results] == [True, False] * 4
    assert {r.code for r in results if isinstance(r, PredictionError)} == {ErrorCode.ROBOTS_DISALLOWED}


def test_a_robots_txt_cut_off_by_the_deadline_fails_that_line_and_is_not_kept(
    host: Host, make_fetcher: Callable[..., Fetcher]
) -> None:
    host.answer("/robots.txt", Answer(body=b"User-agent: *\nDisallow: /x/\n", delay=1.5))
    host.answer("*", Answer())
    fetcher = make_fetcher(robots_txt=True, read_timeout=5.0)

    error = refused(fetcher, host.url("/a.png"), deadline=time.monotonic() + 0.5)
    assert error.code == ErrorCode.FETCH_TIMEOUT  # the image's deadline, not the host's rules

    host.answer("/robots.txt", Answer(body=b"User-agent: *\nDisallow: /x/\n"))
    assert fetcher.fetch(host.url("/a.png")).data == IMAGE  # asked again, this time in time
    assert host.paths() == ["/robots.txt", "/robots.txt", "/a.png"]


# -- the cache ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _never_waits() -> float:
    raise AssertionError("nothing to wait for")


def test_an_answer_is_kept_for_its_ttl_then_read_again() -> None:
    clock, loads = Clock(), []
    cache = RobotsCache(clock=clock)

    def load() -> RobotsRules:
        loads.append(clock.now)
        return RobotsRules.cannot_read("HTTP 503") if len(loads) == 1 else RobotsRules()

    assert cache.get("h", load, _never_waits).unreachable == "HTTP 503"
    clock.now += UNREACHABLE_TTL_SECONDS - 1
    assert cache.get("h", load, _never_waits).unreachable == "HTTP 503"
    clock.now += 2
    assert cache.get("h", load, _never_waits).unreachable is None
    assert loads == [1000.0, 1000.0 + UNREACHABLE_TTL_SECONDS + 1]


def test_the_cache_keeps_a_bounded_number_of_hosts_least_recently_used_out_first() -> None:
    cache = RobotsCache(size=2, clock=Clock())
    loads: list[str] = []

    def loader(key: str) -> Callable[[], RobotsRules]:
        return lambda: loads.append(key) or RobotsRules()  # type: ignore[func-returns-value]

    for key in ("a", "b", "a", "c", "a", "b"):
        cache.get(key, loader(key), _never_waits)

    assert loads == ["a", "b", "c", "b"]  # c pushed out b (a was used since), then b came back
    assert len(cache) == 2


def test_a_load_that_raises_is_not_kept_and_the_next_asker_loads_again() -> None:
    cache = RobotsCache(clock=Clock())

    def late() -> RobotsRules:
        raise PredictionError(ErrorCode.FETCH_TIMEOUT, "late")

    with pytest.raises(PredictionError):
        cache.get("h", late, _never_waits)
    assert len(cache) == 0
    assert cache.get("h", RobotsRules, _never_waits).allows("/")


def test_a_waiter_gives_up_at_its_own_deadline() -> None:
    cache = RobotsCache(clock=Clock())
    reading, release = threading.Event(), threading.Event()

    def slow() -> RobotsRules:
        reading.set()
        release.wait(5)
        return RobotsRules()

    reader = threading.Thread(target=cache.get, args=("h", slow, _never_waits))
    reader.start()
    reading.wait(5)
    with pytest.raises(TimeoutError):
        cache.get("h", slow, lambda: 0.05)
    release.set()
    reader.join(5)
    assert cache.get("h", slow, _never_waits).allows("/")
