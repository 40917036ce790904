"""What hosts ask of us: ``X-Robots-Tag`` on an image response, and robots.txt rules.

Both are pure here; fetch.py reads the header on the final hop of an image and fetches
robots.txt through its own guard (address checks, deadline, size cap).

``X-Robots-Tag``: ``noai``, ``noimageai`` or ``none`` forbids using the image (Google's and
DeviantArt's directives; ``none`` is ``noindex, nofollow`` and more). Directives are comma
separated, case-insensitive, possibly over several headers; ``otherbot: noai`` addresses only
that bot, and the directives after it in the same header value with it.

robots.txt follows RFC 9309: the group naming our product token (else ``*``), the longest
matching rule wins, an ``allow`` on a tie, ``*`` and ``$`` in paths. ``urllib.robotparser``
splits the file into groups; it matches rules first-come and without wildcards, so the match
is done here. A 4xx answer means no rules (allow all); a 5xx, 429 or an unreachable host
means everything is disallowed while the answer is cached.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlparse, urlunparse
from urllib.robotparser import RobotFileParser

# Directives that forbid using an image for AI (noai, noimageai) or for anything (none).
FORBIDDING = frozenset({"noai", "noimageai", "none"})
# RFC 9309 2.5: parse at least the first 500 KiB; the rest is ignored.
ROBOTS_MAX_BYTES = 500 * 1024
# RFC 9309 2.3.1.2: follow at least five consecutive redirects; past them, robots.txt is
# "unavailable" (no rules).
ROBOTS_REDIRECTS = 5
# A read robots.txt serves this long, about a few predict invocations of the same process.
ROBOTS_TTL_SECONDS = 300.0
# An unreachable one disallows its host this long: about one invocation (predict's is 90 s).
UNREACHABLE_TTL_SECONDS = 90.0
ROBOTS_CACHE_HOSTS = 1024  # hosts kept per process; the least recently used go first

# Directives that take a value after a colon: never a user-agent prefix.
_VALUED = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
# "otherbot: noai": a bot's name (starting with a letter, so a time like 15:00 is not one).
_AGENT_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)\s*:\s*(.*)", re.S)
_WILDCARD = "%2A"  # '*' as robotparser leaves it (it percent-encodes rule paths)
_END = "%24"  # '$'


def x_robots_forbidding(values: Iterable[str], product: str) -> str | None:
    """The first directive of these ``X-Robots-Tag`` values that forbids ``product`` (lower
    case) using the image, lower case; None if none does."""
    for value in values:
        agent: str | None = None  # the bot the directives so far in this value address
        for piece in value.split(","):
            directive = piece.strip()
            prefixed = _AGENT_PREFIX.fullmatch(directive)
            if prefixed and prefixed[1].lower() not in _VALUED:
                agent, directive = prefixed[1].lower(), prefixed[2].strip()
            if directive.lower() in FORBIDDING and agent in (None, product):
                return directive.lower()
    return None


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    length: int  # of the rule's path: the longest match wins
    allow: bool


@dataclass(frozen=True)
class RobotsRules:
    """One host's robots.txt rules for us. ``unreachable``: why it could not be read (then
    everything is disallowed); ``ttl``: how long the answer may be reused."""

    rules: tuple[_Rule, ...] = ()
    unreachable: str | None = None
    ttl: float = ROBOTS_TTL_SECONDS

    @classmethod
    def parse(cls, body: bytes, product: str) -> RobotsRules:
        parser = RobotFileParser()
        parser.parse(body[:ROBOTS_MAX_BYTES].decode("utf-8", "replace").splitlines())
        # The groups robotparser read (typeshed leaves its attributes out): '*' apart.
        entries: list[Any] = getattr(parser, "entries", [])
        default: Any = getattr(parser, "default_entry", None)
        ours = [e for e in entries if product in {_agent(a) for a in e.useragents}]
        if not ours and default is not None:
            ours = [default]
        return cls(tuple(_rule(line.path, line.allowance) for entry in ours for line in entry.rulelines))

    @classmethod
    def for_status(cls, status: int) -> RobotsRules:
        """RFC 9309 2.3.1: 4xx is "unavailable" (no rules), 5xx "unreachable" (disallow all).
        429 asks us to slow down, so it counts as unreachable, as Google treats it."""
        if 400 <= status < 500 and status != 429:
            return cls()
        return cls.cannot_read(f"HTTP {status}")

    @classmethod
    def cannot_read(cls, reason: str) -> RobotsRules:
        return cls(unreachable=reason, ttl=UNREACHABLE_TTL_SECONDS)

    def allows(self, request_target: str) -> bool:
        """Whether ``request_target`` (path and query, as sent) may be fetched."""
        if self.unreachable is not None:
            return False
        path = _normalised(request_target)
        matches = [rule for rule in self.rules if rule.pattern.match(path)]
        if not matches:
            return True
        longest = max(rule.length for rule in matches)
        return any(rule.allow for rule in matches if rule.length == longest)


def _agent(name: str) -> str:
    """A group's user-agent line as a product token: ``BatchPredict/1.0`` -> ``batchpredict``."""
    return name.split("/", maxsplit=1)[0].strip().lower()


def _rule(path: str, allow: bool) -> _Rule:
    """robotparser keeps a rule's path percent-encoded (``quote``): '*' is %2A and '$' %24."""
    anchored = path.endswith(_END)
    body = path[: -len(_END)] if anchored else path
    regex = ".*".join(re.escape(part) for part in body.split(_WILDCARD)) + (r"\Z" if anchored else "")
    return _Rule(re.compile(regex, re.S), len(path), allow)


def _normalised(request_target: str) -> str:
    """The URL's path and query encoded as robotparser encodes rule paths, so both compare alike."""
    parts = urlparse(unquote(request_target))
    return quote(urlunparse(("", "", parts.path, parts.params, parts.query, ""))) or "/"


class RobotsCache:
    """robots.txt answers per host (scheme, host, port), shared by a process's fetch threads.

    One thread reads a host's robots.txt while the others asking for it wait for that answer
    (within their own deadlines), so a burst of lines for one host costs one request. An entry
    lives its ``ttl``; at most ``size`` hosts are kept, the least recently used dropped first.
    """

    def __init__(self, size: int = ROBOTS_CACHE_HOSTS, clock: Callable[[], float] = time.monotonic) -> None:
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[object, tuple[float, Future[RobotsRules | None]]] = OrderedDict()

    def get(
        self, key: object, load: Callable[[], RobotsRules], time_left: Callable[[], float]
    ) -> RobotsRules:
        """The answer for ``key``: cached, awaited from the thread reading it, or ``load()``-ed here.

        An answer ``load`` raises instead of returning is not kept (its fetch ran out of time:
        the next asker tries again). ``time_left()``: how long this caller may wait (it raises
        once there is none); TimeoutError if the reading thread takes longer.
        """
        while True:
            future, mine = self._claim(key)
            if mine:
                return self._load(key, future, load)
            rules = future.result(timeout=None if future.done() else time_left())
            if rules is not None:
                return rules

    def _claim(self, key: object) -> tuple[Future[RobotsRules | None], bool]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and not (entry[1].done() and entry[0] <= self._clock()):
                self._entries.move_to_end(key)
                return entry[1], False
            future: Future[RobotsRules | None] = Future()
            self._entries[key] = (float("inf"), future)
            self._entries.move_to_end(key)
            self._evict()
            return future, True

    def _load(
        self, key: object, future: Future[RobotsRules | None], load: Callable[[], RobotsRules]
    ) -> RobotsRules:
        rules: RobotsRules | None = None
        try:
            rules = load()
            return rules
        finally:
            with self._lock:
                if rules is None:
                    self._entries.pop(key, None)
                else:
                    self._entries[key] = (self._clock() + rules.ttl, future)
            future.set_result(rules)  # waiters given None try again themselves

    def _evict(self) -> None:
        """Drop the least recently used answers (never one still being read) past ``size``."""
        excess = len(self._entries) - self._size
        for key in [k for k, (_, f) in self._entries.items() if f.done()][: max(excess, 0)]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
