"""The long fuzz run of the manifest path (issue 17, item 9): arbitrary manifests (bytes, unicode
with lone surrogates, JSON numbers of every range, CSV quoting and sizes, gzip) through the real
splitter and the row encoding, with fakes for AWS. The property and the strategies are
tests/unit/manifest_fuzz.py's; the unit tier runs a few hundred of the same examples.

Prints the examples tried, how each ended (split, or the job FAILED with a reason), the time,
and the escapes (an exception out of split, or a line not exactly one item): hypothesis stops
at the first one and prints it, shrunk.

    python benchmarks/manifest_fuzz.py                    # 20,000 examples
    python benchmarks/manifest_fuzz.py --examples 500 --seed 1
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "functions")]
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "CRITICAL")  # the splitter logs every job

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

# Imported by name: the tests are not part of the type-checked tree.
fuzz: Any = importlib.import_module("tests.unit.manifest_fuzz")


def run(examples: int, seed_value: int | None) -> Counter[str]:
    outcomes: Counter[str] = Counter()

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(fuzz.manifests())
    def each(manifest: Any) -> None:
        outcomes[fuzz.check(manifest)] += 1

    if seed_value is not None:
        each = seed(seed_value)(each)
    each()
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    try:
        outcomes = run(args.examples, args.seed)
    except Exception as exc:
        print(f"ESCAPE after {time.perf_counter() - started:.1f} s: {type(exc).__name__}: {exc}")
        raise
    seconds = time.perf_counter() - started
    tried = sum(outcomes.values())
    print(
        f"{tried} examples in {seconds:.1f} s ({tried / seconds:.0f}/s): "
        f"{outcomes['split']} split with every line one item, {outcomes['failed']} FAILED with a reason, "
        "0 escapes"
    )


if __name__ == "__main__":
    main()
