"""Shared fixtures: the built model bundle and sample photos (``make test`` builds both first)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
