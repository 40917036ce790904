"""Per-job options from S3 user metadata, and the failure threshold's arithmetic."""

from __future__ import annotations

import pytest

from batchpredict.options import JobOptions, MaxFailures, OptionError, parse_options


def test_every_option_parses_and_round_trips_through_metadata() -> None:
    metadata = {
        "name": " nightly run ",
        "tags": "team=vision, run=7",
        "top-k": "3",
        "max-failures": "2.5%",
        "notify": "EMAIL",
    }
    options = parse_options(metadata)
    assert options == JobOptions(
        name="nightly run",
        tags={"team": "vision", "run": "7"},
        top_k=3,
        max_failures=MaxFailures(2.5, percent=True),
        notify=("email",),
    )
    assert parse_options(options.as_metadata()) == options
    assert options.as_item() == {
        "name": "nightly run",
        "tags": {"team": "vision", "run": "7"},
        "top_k": 3,
        "max_failures": "2.5%",
        "notify": ["email"],
    }
    assert parse_options({}) == JobOptions() and JobOptions().as_item() == {}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"colour": "red"}, "unknown option x-amz-meta-colour"),
        ({"top-k": "0"}, "top-k='0'"),
        ({"top-k": "101"}, "top-k='101'"),
        ({"top-k": "five"}, "top-k='five'"),
        ({"max-failures": "-1"}, "max-failures='-1'"),
        ({"max-failures": "101%"}, "max-failures='101%'"),
        ({"max-failures": "nan%"}, "max-failures='nan%'"),
        ({"max-failures": "lots"}, "max-failures='lots'"),
        ({"tags": "team"}, "tags='team'"),
        ({"tags": "a=1,a=2"}, "given twice"),
        ({"notify": "sms"}, "notify='sms'"),
        ({"name": " "}, "name="),
    ],
)
def test_a_bad_option_is_refused_naming_it(metadata: dict[str, str], message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("(", r"\(")):
        parse_options(metadata)


@pytest.mark.parametrize(
    ("threshold", "failed", "finished", "exceeded"),
    [
        ("5", 6, 99, False),  # fewer than 100 finished lines: not judged yet
        ("5", 5, 100, False),  # at the threshold is not past it
        ("5", 6, 100, True),
        ("5%", 5, 100, False),
        ("5%", 6, 100, True),
        ("5%", 50, 1000, False),
        ("5%", 51, 1000, True),
        ("0", 1, 100, True),
        ("100%", 100, 100, False),
    ],
)
def test_max_failures_is_passed_strictly_after_100_finished_lines(
    threshold: str, failed: int, finished: int, exceeded: bool
) -> None:
    assert MaxFailures.parse(threshold).exceeded(failed, finished) is exceeded
