"""Per-job options from S3 user metadata, and the failure threshold's arithmetic."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchpredict.options import (
    MAX_FAILURES_COUNT,
    MAX_TIMEOUT_SECONDS,
    MAX_TOP_K,
    OPTIONS,
    JobOptions,
    MaxFailures,
    OptionError,
    parse_options,
)


def test_every_option_parses_and_round_trips_through_metadata() -> None:
    metadata = {
        "name": " nightly run ",
        "tags": "team=vision, run=7",
        "top-k": "3",
        "max-failures": "2.5%",
        "timeout": "3600",
        "notify": "EMAIL",
    }
    options = parse_options(metadata)
    assert options == JobOptions(
        name="nightly run",
        tags={"team": "vision", "run": "7"},
        top_k=3,
        max_failures=MaxFailures(Decimal("2.5"), percent=True),
        timeout_seconds=3600,
        notify=("email",),
    )
    assert parse_options(options.as_metadata()) == options
    assert options.as_item() == {
        "name": "nightly run",
        "tags": {"team": "vision", "run": "7"},
        "top_k": 3,
        "max_failures": "2.5%",
        "timeout_seconds": 3600,
        "notify": ["email"],
    }
    assert parse_options({}) == JobOptions() and JobOptions().as_item() == {}


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"colour": "red"}, "unknown option x-amz-meta-colour"),
        ({"top-k": "0"}, "top-k='0'"),
        ({"top-k": "21"}, "top-k='21': a whole number from 1 to 20"),
        ({"top-k": "101"}, "top-k='101'"),
        ({"top-k": "five"}, "top-k='five'"),
        ({"top-k": "\u0661\u0662"}, "top-k='\u0661\u0662'"),  # Arabic-Indic 12: int() takes them
        ({"top-k": "+5"}, "top-k='+5'"),
        ({"top-k": "1_0"}, "top-k='1_0'"),
        ({"top-k": "\u00a05"}, "top-k='\\xa05'"),  # a no-break space is not trimmed
        ({"max-failures": "-1"}, "max-failures='-1'"),
        ({"max-failures": "101%"}, "max-failures='101%'"),
        ({"max-failures": "nan%"}, "max-failures='nan%'"),
        ({"max-failures": "lots"}, "max-failures='lots'"),
        (
            {"max-failures": "1000001"},
            "max-failures='1000001': give a count of failed lines from 0 to 1,000,000",
        ),
        ({"max-failures": "1e6"}, "max-failures='1e6'"),
        ({"max-failures": "1_000"}, "max-failures='1_000'"),
        ({"max-failures": "+5"}, "max-failures='+5'"),
        ({"max-failures": "5.5"}, "max-failures='5.5'"),  # a count is whole
        ({"max-failures": "\u0665"}, "max-failures='\u0665'"),
        ({"max-failures": "\uff15%"}, "max-failures='\uff15%'"),  # a fullwidth digit
        ({"max-failures": "5 %"}, "max-failures='5 %'"),
        ({"max-failures": "0.00001%"}, "max-failures='0.00001%'"),  # at most 4 decimals
        ({"timeout": "0"}, "timeout='0': a whole number from 1 to 604,800 seconds"),
        ({"timeout": "604801"}, "timeout='604801'"),
        ({"timeout": "1h"}, "timeout='1h'"),
        ({"timeout": "\u0663\u0660"}, "timeout='\u0663\u0660'"),
        ({"tags": "team"}, "tags='team'"),
        ({"tags": "a=1,a=2"}, "given twice"),
        ({"notify": "sms"}, "notify='sms'"),
        ({"name": " "}, "name="),
    ],
)
def test_a_bad_option_is_refused_naming_it(metadata: dict[str, str], message: str) -> None:
    with pytest.raises(OptionError, match=re.escape(message)):
        parse_options(metadata)


def test_a_310_digit_count_is_an_option_error_not_an_overflow() -> None:
    huge = "1" + "0" * 310
    with pytest.raises(OptionError, match=r"max-failures='10000.*'…: give a count of failed lines") as caught:
        parse_options({"max-failures": huge})
    assert len(str(caught.value)) < 300  # the value is cut in the message (and so on the JOB)
    for option in ("top-k", "timeout"):
        with pytest.raises(OptionError, match=option):
            parse_options({option: huge})


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("0", "0"),
        ("50", "50"),
        ("999999", "999999"),
        ("1000000", "1000000"),  # once stored as "1e+06", which the writer could not read
        (" 0001000000 ", "1000000"),
        ("5%", "5%"),
        ("2.50%", "2.5%"),
        ("0.0001%", "0.0001%"),
        ("100%", "100%"),
        ("100.0000%", "100%"),
        ("0%", "0%"),
    ],
)
def test_max_failures_is_stored_in_its_canonical_form(raw: str, stored: str) -> None:
    item = parse_options({"max-failures": raw}).as_item()
    assert item == {"max_failures": stored}
    assert MaxFailures.parse(stored) == MaxFailures.parse(raw)


@given(st.integers(min_value=0, max_value=MAX_FAILURES_COUNT))
def test_every_count_round_trips_exactly(count: int) -> None:
    threshold = MaxFailures.parse(str(count))
    assert threshold == MaxFailures(count) and str(threshold) == str(count)
    assert MaxFailures.parse(str(threshold)) == threshold == MaxFailures.from_stored(str(threshold))


@given(st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False))
def test_every_percentage_round_trips_exactly(value: Decimal) -> None:
    threshold = MaxFailures.parse(f"{value:f}%")
    assert threshold == MaxFailures(value, percent=True)
    assert MaxFailures.parse(str(threshold)) == threshold == MaxFailures.from_stored(str(threshold))


def test_the_caps_are_the_documented_ones() -> None:
    from batchpredict.split import SplitSettings

    # a count past the longest job the splitter takes (by default) never stops one
    assert MAX_FAILURES_COUNT == SplitSettings().max_manifest_lines == 1_000_000
    assert MaxFailures.parse(str(MAX_FAILURES_COUNT)) == MaxFailures(MAX_FAILURES_COUNT)
    assert (MAX_TOP_K, MAX_TIMEOUT_SECONDS) == (20, 7 * 24 * 3600)
    assert parse_options({"top-k": "20", "timeout": "604800"}) == JobOptions(top_k=20, timeout_seconds=604800)


@pytest.mark.parametrize(
    ("stored", "threshold"),
    [
        ("1000000", MaxFailures(1_000_000)),
        ("1e+06", MaxFailures(1_000_000)),  # what main wrote for 1,000,000
        ("1.23457e+06", MaxFailures(1_234_570)),  # %g kept 6 digits: the nearest it can say
        ("5000000", MaxFailures(5_000_000)),  # past today's cap, stored before it
        ("33.3333%", MaxFailures(Decimal("33.3333"), percent=True)),
        ("1e-05%", MaxFailures(Decimal("0.00001"), percent=True)),
        ("2.5%", MaxFailures(Decimal("2.5"), percent=True)),
        ("-0", MaxFailures(0)),
    ],
)
def test_stored_thresholds_of_older_jobs_still_read(stored: str, threshold: MaxFailures) -> None:
    assert MaxFailures.from_stored(stored) == threshold


@pytest.mark.parametrize(
    "stored", ["lots", "nan", "inf", "-1", "101%", "1e+999", "1" * 400, "", "1..2", None, 5, 2.5, ["5"]]
)
def test_an_unreadable_stored_threshold_is_none_never_an_exception(stored: object) -> None:
    assert MaxFailures.from_stored(stored) is None


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
        ("1000000", 1_000_000, 1_000_000, False),
        ("1000000", 1_000_001, 1_000_001, True),
        ("0.0001%", 1, 1_000_000, False),  # exactly one in a million: not past it
        ("0.0001%", 2, 1_000_000, True),
        ("33.3333%", 333_333, 1_000_000, False),  # exact: no float rounding either way
        ("33.3333%", 333_334, 1_000_000, True),
    ],
)
def test_max_failures_is_passed_strictly_after_100_finished_lines(
    threshold: str, failed: int, finished: int, exceeded: bool
) -> None:
    assert MaxFailures.parse(threshold).exceeded(failed, finished) is exceeded


# --- untrusted metadata: any text, every option ------------------------------------------------


@given(option=st.sampled_from(OPTIONS), raw=st.text(max_size=400))
def test_any_text_is_an_option_or_an_option_error_naming_it(option: str, raw: str) -> None:
    _parsed_or_named(option, raw)


# ASCII digits and their look-alikes: Arabic-Indic, fullwidth, superscript; no-break space
_NUMBERISH = st.text(
    alphabet=st.sampled_from("0123456789 .%+-_e\t\u0661\u0662\uff15\u00b2\u00a0"), max_size=12
)


@given(option=st.sampled_from(("top-k", "max-failures", "timeout")), raw=_NUMBERISH)
def test_any_number_like_text_is_a_count_or_an_option_error(option: str, raw: str) -> None:
    options = _parsed_or_named(option, raw)
    if options is not None:
        # what was taken is ASCII digits (a percent sign, a point) and within its bounds
        assert raw.strip(" \t").replace(".", "").removesuffix("%").isascii()
        assert raw.strip(" \t").replace(".", "").removesuffix("%").isdigit()


def _parsed_or_named(option: str, raw: str) -> JobOptions | None:
    """Parse ``{option: raw}``: the options, which round-trip through the metadata and store
    as a JOB item, or None after an OptionError that names the option and could be stored."""
    try:
        options = parse_options({option: raw})
    except OptionError as exc:
        message = str(exc)
        assert message.startswith(f"{option}=") or message.startswith(f"{option}:"), message
        message.encode("utf-8")  # the JOB's error and _summary.json can hold it
        assert len(message) < 400
        return None
    assert parse_options(options.as_metadata()) == options
    options.as_item()
    return options
