"""Per-job options: S3 user metadata on the manifest object (``x-amz-meta-<option>``).

The one channel that works for ``aws s3 cp --metadata``, the console and the CLI alike.
The splitter reads them once and stores them on the JOB record; an unknown or malformed
option fails the job at once with a message naming it (never silently ignored).

    x-amz-meta-name          free text, up to 256 characters
    x-amz-meta-tags          k=v pairs, comma separated (team=vision,run=7)
    x-amz-meta-top-k         classes per image, 1..100 (default: the function's TOP_K)
    x-amz-meta-max-failures  a count (50) or a percentage (5%): past it, after at least
                             100 finished lines, the job stops and ends FAILED
    x-amz-meta-notify        email: mail this job's state changes (the stack's NotificationEmail)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MAX_NAME = 256
MAX_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
MAX_TOP_K = 100
NOTIFY_CHANNELS = ("email",)  # the webhook, when the stack has one, gets every job
# The threshold is judged only once this many lines are finished: 1 failure of the first 3
# lines is not 33% of a million-line job.
MIN_FINISHED_FOR_THRESHOLD = 100
TOLERATED_FAILURES_EXCEEDED = "tolerated_failures_exceeded"

_TAG_KEY = re.compile(r"^[A-Za-z0-9_.:/+\-@ ]+$")


class OptionError(ValueError):
    """An unknown or malformed option; the message names it."""


@dataclass(frozen=True)
class MaxFailures:
    """A count (``percent`` False) or a percentage of the finished lines."""

    value: float
    percent: bool

    def __str__(self) -> str:
        number = f"{self.value:g}"
        return f"{number}%" if self.percent else number

    @classmethod
    def parse(cls, raw: str) -> MaxFailures:
        text = raw.strip()
        percent = text.endswith("%")
        try:
            value = float(text[:-1]) if percent else int(text)
        except ValueError:
            value = -1
        if not 0 <= value <= (100 if percent else float("inf")):
            raise OptionError(f"max-failures={raw!r}: give a count (50) or a percentage (5%)")
        return cls(value, percent)

    def exceeded(self, failed: int, finished: int) -> bool:
        """Passed (strictly) once at least MIN_FINISHED_FOR_THRESHOLD lines are finished."""
        if finished < MIN_FINISHED_FOR_THRESHOLD:
            return False
        if self.percent:
            return failed * 100 > self.value * finished
        return failed > self.value


@dataclass(frozen=True)
class JobOptions:
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    top_k: int | None = None
    max_failures: MaxFailures | None = None
    notify: tuple[str, ...] = ()

    def as_metadata(self) -> dict[str, str]:
        """What to put in the manifest object's user metadata (the inverse of ``parse_options``)."""
        metadata = {
            "name": self.name,
            "tags": ",".join(f"{k}={v}" for k, v in self.tags.items()) or None,
            "top-k": str(self.top_k) if self.top_k is not None else None,
            "max-failures": str(self.max_failures) if self.max_failures is not None else None,
            "notify": ",".join(self.notify) or None,
        }
        return {k: v for k, v in metadata.items() if v is not None}

    def as_item(self) -> dict[str, Any]:
        """The JOB record's attributes (absent options are left out)."""
        item = {
            "name": self.name,
            "tags": self.tags or None,
            "top_k": self.top_k,
            "max_failures": str(self.max_failures) if self.max_failures is not None else None,
            "notify": list(self.notify) or None,
        }
        return {k: v for k, v in item.items() if v is not None}


def _name(raw: str) -> str:
    if not raw.strip() or len(raw) > MAX_NAME or not raw.isprintable():
        raise OptionError(f"name={raw[:40]!r}: 1 to {MAX_NAME} printable characters")
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
            or not _TAG_KEY.match(key)
            or not value.isprintable()
            or "," in value
        ):
            raise OptionError(f"tags={raw[:80]!r}: give key=value pairs separated by commas (bad: {pair!r})")
        if key in tags:
            raise OptionError(f"tags={raw[:80]!r}: tag {key!r} given twice")
        tags[key] = value
    if len(tags) > MAX_TAGS:
        raise OptionError(f"tags: at most {MAX_TAGS} tags, got {len(tags)}")
    return tags


def parse_top_k(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_TOP_K:
        raise OptionError(f"top-k={raw!r}: a whole number from 1 to {MAX_TOP_K}")
    return value


def parse_notify(raw: str) -> tuple[str, ...]:
    channels = tuple(c.strip().lower() for c in raw.split(",") if c.strip())
    unknown = [c for c in channels if c not in NOTIFY_CHANNELS]
    if unknown or not channels:
        raise OptionError(f"notify={raw!r}: channels are {', '.join(NOTIFY_CHANNELS)} (comma separated)")
    return tuple(dict.fromkeys(channels))


def parse_options(metadata: dict[str, str]) -> JobOptions:
    """The options in a manifest's user metadata (keys as S3 returns them: lowercase, no
    ``x-amz-meta-`` prefix). Raises OptionError naming the first bad option."""
    values: dict[str, Any] = {}
    parsers = {
        "name": ("name", _name),
        "tags": ("tags", parse_tags),
        "top-k": ("top_k", parse_top_k),
        "max-failures": ("max_failures", MaxFailures.parse),
        "notify": ("notify", parse_notify),
    }
    for key, raw in sorted(metadata.items()):
        option = key.lower()
        if option not in parsers:
            known = ", ".join(f"x-amz-meta-{k}" for k in parsers)
            raise OptionError(f"unknown option x-amz-meta-{option}: the options are {known}")
        attribute, parse = parsers[option]
        values[attribute] = parse(raw)
    return JobOptions(**values)
