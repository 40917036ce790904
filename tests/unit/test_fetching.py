"""Unit tests for fetching.py: ImageFetcher's retries of transient failures, by attempts and by
the image's deadline, with the pipeline's backoff (a recording sleep moves a fake clock)."""

from __future__ import annotations

from batchpredict.errors import ErrorCode, PredictionError
from batchpredict.fetch import FetchPolicy
from batchpredict.fetching import ImageFetcher
from tests.unit.fakes import ScriptedFetcher, SleepLog

URL = "https://img.example/a.jpg"


def _images(
    fetcher: ScriptedFetcher, attempts: int, total_timeout: float = 30.0
) -> tuple[ImageFetcher, SleepLog]:
    sleeps = SleepLog()
    policy = FetchPolicy(attempts=attempts, backoff_seconds=0.5)
    images = ImageFetcher(fetcher, policy, total_timeout, sleep=sleeps, clock=sleeps.clock)  # type: ignore[arg-type]
    return images, sleeps


def _reset() -> PredictionError:
    return PredictionError(ErrorCode.CONNECTION_ERROR, "reset", transient=True)


def test_transient_failures_are_retried_after_doubling_jittered_pauses() -> None:
    fetcher = ScriptedFetcher({URL: [_reset(), _reset(), b"jpeg"]})
    images, sleeps = _images(fetcher, attempts=3)

    assert images.fetch(URL).payload == b"jpeg"
    assert fetcher.calls[URL] == 3
    assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


def test_the_last_error_stands_after_the_attempts_or_a_permanent_failure() -> None:
    fetcher = ScriptedFetcher({URL: [_reset()]})
    images, sleeps = _images(fetcher, attempts=3)
    assert isinstance(images.fetch(URL).payload, PredictionError) and fetcher.calls[URL] == 3

    gone = PredictionError(ErrorCode.HTTP_ERROR, "HTTP 404", transient=False)
    fetcher = ScriptedFetcher({URL: [gone]})
    images, sleeps = _images(fetcher, attempts=3)
    assert images.fetch(URL).payload is gone and fetcher.calls[URL] == 1 and sleeps == []


def test_no_pause_runs_past_the_images_deadline() -> None:
    fetcher = ScriptedFetcher({URL: [_reset()]})
    images, sleeps = _images(fetcher, attempts=10, total_timeout=2.0)
    started = sleeps.now

    assert isinstance(images.fetch(URL).payload, PredictionError)
    assert sleeps.now <= started + 2.0 and fetcher.calls[URL] == len(sleeps) + 1 < 10
