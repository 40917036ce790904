"""Per-job options: S3 user metadata on the manifest object (``x-amz-meta-<option>``).

The one channel that works for ``aws s3 cp --metadata``, the console and the CLI alike.
The splitter reads them once and stores them on the JOB record; an unknown or malformed
option fails the job at once with a message naming it (never silently ignored).

    x-amz-meta-name          free text, up to 256 characters
    x-amz-meta-tags          k=v pairs, comma separated (team=vision,run=7)
    x-amz-meta-top-k         classes per image, 1..20 (default: the function's TOP_K)
    x-amz-meta-max-failures  a count (50; at most 1,000,000) or a percentage (5%, 0.25%): past
                             it, after at least 100 finished lines, the job stops and ends FAILED
    x-amz-meta-timeout       seconds the job may run, 1..604800 (7 days)
    x-amz-meta-notify        email: mail this job's state changes (the stack's NotificationEmail)
    x-amz-meta-fidelity      exact (default: the reference preprocessing, bit for bit) or fast
                             (JPEGs drafted, big pictures reduced first: see fidelity.py)
    x-amz-meta-host-rps      requests a second to any one host, 0.1..1000 (up to 3 decimals):
                             lowers the stack's HOST_RPS for this job's lines (hostlimits.py)
    x-amz-meta-robots        honour (default: X-Robots-Tag noai/noimageai/none, and robots.txt
                             where the stack checks it, fail the line robots_disallowed) or
                             ignore (for the user's own hosts)

The values come from whoever uploads a manifest: every parser takes ASCII digits only (no
other script's digits, no sign, no underscore, no exponent; surrounding ASCII blanks are
trimmed), bounds the value before converting it, and raises OptionError and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from batchpredict.fidelity import Fidelity

MAX_NAME = 256
MAX_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
# Classes per image, for a job (x-amz-meta-top-k, submit --top-k), the function (TOP_K) and the
# CLI's predict --top-k. Each class is up to ~180 bytes of an IMG# row: at 20, with ImageNet's
# longest labels, a row is ~4.3 KB (5 write units) against ~1.6 KB (2) at the default 5, where
# 100 made it ~17 KB (17): the price of a line is the uploader's choice only within this.
MAX_TOP_K = 20
# A count past every line of the longest job the splitter takes (MAX_MANIFEST_LINES' default)
# means "never stop"; a stack that raises MAX_MANIFEST_LINES can give a percentage instead.
MAX_FAILURES_COUNT = 1_000_000
# A percentage has up to this many decimals: 0.0001% is one line in a million.
MAX_PERCENT_DECIMALS = 4
MIN_TIMEOUT_SECONDS = 1
MAX_TIMEOUT_SECONDS = 7 * 86_400  # a week
MIN_HOST_RPS = Decimal("0.1")
MAX_HOST_RPS = Decimal(1000)
_RATE = re.compile(r"[0-9]{1,4}(?:\.[0-9]{1,3})?")
NOTIFY_CHANNELS = ("email",)  # the webhook, when the stack has one, gets every job
# The threshold is judged only once this many lines are finished: 1 failure of the first 3
# lines is not 33% of a million-line job.
MIN_FINISHED_FOR_THRESHOLD = 100
TOLERATED_FAILURES_EXCEEDED = "tolerated_failures_exceeded"

_TAG_KEY = re.compile(r"[A-Za-z0-9_.:/+\-@ ]+")
_BLANKS = " \t\r\n\f\v"  # the trim: ASCII whitespace only
_DIGITS = re.compile(r"[0-9]+")
_PERCENT = re.compile(rf"[0-9]{{1,3}}(?:\.[0-9]{{1,{MAX_PERCENT_DECIMALS}}})?%")
# What MaxFailures.__str__ wrote before the canonical form: float's "%g" ("1e+06", "33.3333%").
_LEGACY = re.compile(r"-?[0-9.]{1,24}(?:e[+-][0-9]{1,3})?%?")
# A legacy count past this is "never" for any job: such a stored threshold is ignored.
_LEGACY_COUNT_CEILING = 10**18
_SHOWN_CHARS = 40


class OptionError(ValueError):
    """An unknown or malformed option; the message names it."""


def _option_shown(option: str) -> str:
    return (
        option
        if option.isascii() and option.isprintable() and len(option) <= _SHOWN_CHARS
        else _shown(option)
    )


def _shown(raw: str) -> str:
    """``raw`` quoted for a message (the JOB's error): escaped, and cut after 40 characters."""
    return repr(raw[:_SHOWN_CHARS]) + ("…" if len(raw) > _SHOWN_CHARS else "")


def _whole(raw: str, high: int) -> int | None:
    """``raw`` as a whole number if it is ASCII digits (leading zeros allowed) no longer than
    ``high``'s, else None: a 300-digit value is refused before ``int()`` ever sees it."""
    text = raw.strip(_BLANKS)
    if not _DIGITS.fullmatch(text):
        return None
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= len(str(high)) else None


def parse_count(raw: str, option: str, low: int, high: int, unit: str = "") -> int:
    """A whole number from ``low`` to ``high`` in ASCII digits (leading zeros allowed), else an
    OptionError naming ``option`` and the bounds. The length is checked before ``int()``."""
    number = _whole(raw, high)
    if number is not None and low <= number <= high:
        return number
    raise OptionError(f"{option}={_shown(raw)}: a whole number from {low:,} to {high:,}{unit}")


@dataclass(frozen=True)
class MaxFailures:
    """At most ``value`` failed lines (a count: ``int``), or at most ``value`` percent of the
    finished lines (``percent``: a ``Decimal``, exact).

    ``str()`` is the canonical form (``1000000``, ``5%``, ``2.5%``): the JOB record and the chunk
    messages store it, and ``parse`` (the option's own parser) reads it back exactly.
    """

    value: int | Decimal
    percent: bool = False

    def __str__(self) -> str:
        if not self.percent:
            return str(self.value)
        number = Decimal(self.value).normalize()
        return f"{number:f}%"

    @classmethod
    def parse(cls, raw: str) -> MaxFailures:
        """The option (x-amz-meta-max-failures, submit --max-failures) and the stored form."""
        text = raw.strip(_BLANKS)
        if text.endswith("%"):
            if _PERCENT.fullmatch(text) and Decimal(text[:-1]) <= 100:
                return cls(Decimal(text[:-1]).normalize(), percent=True)
        else:
            count = _whole(text, MAX_FAILURES_COUNT)
            if count is not None and count <= MAX_FAILURES_COUNT:
                return cls(count)
        raise OptionError(
            f"max-failures={_shown(raw)}: give a count of failed lines from 0 to {MAX_FAILURES_COUNT:,}"
            f" (e.g. 50) or a percentage from 0% to 100% with up to {MAX_PERCENT_DECIMALS} decimals"
            " (e.g. 5% or 0.25%)"
        )

    @classmethod
    def from_stored(cls, stored: object) -> MaxFailures | None:
        """The threshold a JOB record or a chunk message holds; None if it cannot be read.

        Never raises: the writer judges the threshold after a chunk was counted, where an
        exception would only bring the chunk back, again and again. Reads the canonical form,
        and the older ``%g`` form ("1e+06", "33.3333%", counts past today's cap) of jobs
        started before it.
        """
        if not isinstance(stored, str):
            return None
        try:
            return cls.parse(stored)
        except OptionError:
            pass
        text = stored.strip(_BLANKS).lower()
        if not _LEGACY.fullmatch(text):
            return None
        percent = text.endswith("%")
        try:
            number = Decimal(text.removesuffix("%"))
        except InvalidOperation:
            return None
        if not number.is_finite() or number < 0:
            return None
        if percent:
            return cls(number.normalize(), percent=True) if number <= 100 else None
        return cls(int(number)) if number <= _LEGACY_COUNT_CEILING else None

    def exceeded(self, failed: int, finished: int) -> bool:
        """Passed (strictly) once at least MIN_FINISHED_FOR_THRESHOLD lines are finished.
        Exact: a percentage is compared as a fraction, never as a float."""
        if finished < MIN_FINISHED_FOR_THRESHOLD:
            return False
        if self.percent:
            return failed * 100 > Fraction(self.value) * finished
        return failed > self.value


@dataclass(frozen=True)
class JobOptions:
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    top_k: int | None = None
    max_failures: MaxFailures | None = None
    timeout_seconds: int | None = None
    notify: tuple[str, ...] = ()
    fidelity: Fidelity | None = None  # None: exact
    host_rps: Decimal | None = None  # None: the stack's HOST_RPS
    robots: str | None = None  # ROBOTS_IGNORE, or None: honour

    def as_metadata(self) -> dict[str, str]:
        """What to put in the manifest object's user metadata (the inverse of ``parse_options``)."""
        metadata = {
            "name": self.name,
            "tags": ",".join(f"{k}={v}" for k, v in self.tags.items()) or None,
            "top-k": _text(self.top_k),
            "max-failures": _text(self.max_failures),
            "timeout": _text(self.timeout_seconds),
            "notify": ",".join(self.notify) or None,
            "fidelity": _text(self.fidelity),
            "host-rps": _text(self.host_rps),
            "robots": self.robots,
        }
        return {k: v for k, v in metadata.items() if v is not None}

    def as_item(self) -> dict[str, Any]:
        """The JOB record's attributes (absent options are left out); max-failures in its
        canonical form (``MaxFailures.parse`` reads it back)."""
        item = {
            "name": self.name,
            "tags": self.tags or None,
            "top_k": self.top_k,
            "max_failures": _text(self.max_failures),
            "timeout_seconds": self.timeout_seconds,
            "notify": list(self.notify) or None,
            "fidelity": _text(self.fidelity),
            "host_rps": _text(self.host_rps),
            "robots": self.robots,
        }
        return {k: v for k, v in item.items() if v is not None}


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _name(raw: str) -> str:
    if not raw.strip() or len(raw) > MAX_NAME or not raw.isprintable():
        raise OptionError(f"name={_shown(raw)}: 1 to {MAX_NAME} printable characters")
    return raw.strip()


def parse_tags(raw: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in (p.strip() for p in raw.split(",")):
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if (
            not sep
            or not key
            or len(key) > MAX_TAG_KEY
            or len(value) > MAX_TAG_VALUE
            or not _TAG_KEY.fullmatch(key)
            or not value.isprintable()
            or "," in value
        ):
            raise OptionError(
                f"tags={_shown(raw)}: give key=value pairs separated by commas (bad: {_shown(pair)})"
            )
        if key in tags:
            raise OptionError(f"tags={_shown(raw)}: tag {key!r} given twice")
        tags[key] = value
    if len(tags) > MAX_TAGS:
        raise OptionError(f"tags: at most {MAX_TAGS} tags, got {len(tags)}")
    return tags


def parse_top_k(raw: str) -> int:
    return parse_count(raw, "top-k", 1, MAX_TOP_K, " (classes per image)")


def parse_timeout(raw: str) -> int:
    return parse_count(raw, "timeout", MIN_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS, " seconds (7 days)")


def parse_notify(raw: str) -> tuple[str, ...]:
    channels = tuple(c.strip().lower() for c in raw.split(",") if c.strip())
    unknown = [c for c in channels if c not in NOTIFY_CHANNELS]
    if unknown or not channels:
        raise OptionError(
            f"notify={_shown(raw)}: channels are {', '.join(NOTIFY_CHANNELS)} (comma separated)"
        )
    return tuple(dict.fromkeys(channels))


FIDELITIES = tuple(f.value for f in Fidelity)


def parse_fidelity(raw: str) -> Fidelity:
    text = raw.strip(_BLANKS).lower()
    if text not in FIDELITIES:
        raise OptionError(f"fidelity={_shown(raw)}: give one of {', '.join(FIDELITIES)}")
    return Fidelity(text)


def parse_host_rps(raw: str) -> Decimal:
    text = raw.strip(_BLANKS)
    if not _RATE.fullmatch(text) or not MIN_HOST_RPS <= Decimal(text) <= MAX_HOST_RPS:
        raise OptionError(
            f"host-rps={_shown(raw)}: requests a second to one host, {MIN_HOST_RPS}-{MAX_HOST_RPS}"
            " (up to 3 decimals)"
        )
    return Decimal(text).normalize() if "." in text else Decimal(text)


ROBOTS_HONOUR = "honour"
ROBOTS_IGNORE = "ignore"


def parse_robots(raw: str) -> str | None:
    """``honour`` (None: the default, stored as no option) or ``ignore``."""
    text = raw.strip(_BLANKS).lower()
    if text not in (ROBOTS_HONOUR, ROBOTS_IGNORE):
        raise OptionError(f"robots={_shown(raw)}: give {ROBOTS_HONOUR} or {ROBOTS_IGNORE}")
    return ROBOTS_IGNORE if text == ROBOTS_IGNORE else None


_PARSERS = {
    "name": ("name", _name),
    "tags": ("tags", parse_tags),
    "top-k": ("top_k", parse_top_k),
    "max-failures": ("max_failures", MaxFailures.parse),
    "timeout": ("timeout_seconds", parse_timeout),
    "notify": ("notify", parse_notify),
    "fidelity": ("fidelity", parse_fidelity),
    "host-rps": ("host_rps", parse_host_rps),
    "robots": ("robots", parse_robots),
}
OPTIONS = tuple(_PARSERS)  # the x-amz-meta-<option> names


def parse_options(metadata: dict[str, str]) -> JobOptions:
    """The options in a manifest's user metadata (keys as S3 returns them: lowercase, no
    ``x-amz-meta-`` prefix). Raises OptionError naming the first bad option, and nothing else."""
    values: dict[str, Any] = {}
    for key, raw in sorted(metadata.items()):
        option = key.lower()
        if option not in _PARSERS:
            known = ", ".join(f"x-amz-meta-{k}" for k in _PARSERS)
            raise OptionError(f"unknown option x-amz-meta-{_option_shown(option)}: the options are {known}")
        attribute, parse = _PARSERS[option]
        values[attribute] = parse(raw)
    return JobOptions(**values)
