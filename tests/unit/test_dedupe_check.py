"""benchmarks/dedupe.py's check of a job's result lines: what it accepts and what it flags."""

from __future__ import annotations

from typing import Any

from benchmarks.dedupe import check

URLS = ["http://h/p0.jpg", "HTTP://h/p0.jpg#x", "http://h/p1.jpg", "http://h/p0.jpg"]


def _line(
    index: int, probability: float = 0.9, shared_with: int | None = None, label: int = 7
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "index": index,
        "url": URLS[index],
        "status": "SUCCEEDED",
        "error": None,
        "predictions": [{"class_index": label, "probability": probability}],
        "image": {"width": 1, "height": 1},
        "timing_ms": {"inference": 0.0 if shared_with is not None else 5.0},
    }
    if shared_with is not None:
        line["shared_with"] = shared_with
    return line


def test_lines_that_share_or_were_fetched_again_within_tolerance_pass() -> None:
    lines = [_line(0), _line(1, shared_with=0), _line(2, label=3), _line(3, probability=0.9 + 5e-7)]
    tally = check(URLS, lines)
    assert tally.wrong == []
    assert (tally.lines, tally.distinct, tally.shared, tally.refetched, tally.own_inference) == (
        4,
        2,
        1,
        1,
        3,
    )


def test_a_wrong_share_or_a_different_prediction_is_flagged() -> None:
    lines = [_line(0), _line(1, shared_with=2), _line(2, label=3), _line(3, probability=0.5)]
    assert check(URLS, lines).wrong == [
        "line 1: shared_with 2, not a line of its URL fetched for itself",
        "line 1: predictions differ from shared_with's",
        "line 3: predictions differ from the first's",
    ]
    assert check(URLS, lines[:3]).wrong[0] == "3 results for 4 lines"
