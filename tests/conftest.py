"""Shared fixtures: the built model bundle and sample photos (``make test`` builds both first), and
each test's tier marker, taken from its folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
# A test's tier is its folder under tests/, as a marker (`pytest -m e2e`; `make test-e2e`).
TIERS = {
    "unit": "fakes in place of AWS, no network beyond loopback",
    "integration": "boto3 against a moto server (and DynamoDB Local) on loopback",
    "infra": "the SAM template linted, translated and deployed into a moto server; packaging",
    "e2e": "the CLI against the embedded local stack's worker processes",
}


def pytest_configure(config: pytest.Config) -> None:
    for tier, what in TIERS.items():
        config.addinivalue_line("markers", f"{tier}: tests/{tier}, {what}")


# First: pytest's own hook deselects by -m in this same call, so the markers must be on by then.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in one of tests/{{{','.join(TIERS)}}}/")
        item.add_marker(tier)


def _built(env_name: str, default: str, what: str) -> Path:
    path = Path(os.environ.get(env_name, ROOT / default))
    if not path.exists():
        pytest.fail(f"{path} is missing: {what} (run the tests with `make test`, which builds it)")
    return path


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    return _built("BATCHPREDICT_TEST_BUNDLE", "build/model/efficientnet-lite0", "the default model bundle")


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return _built("BATCHPREDICT_TEST_SAMPLES", "build/samples", "the sample photos")


@pytest.fixture(scope="session")
def wheels_dir() -> Path:
    return _built("BATCHPREDICT_TEST_WHEELS", "build/wheels", "the downloaded wheels")
