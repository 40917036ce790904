"""Bytes in, predictions out: an image's ``Outcome``, and the CLI's simple path.

``Outcome`` is what the streaming predictor (pipeline.py) carries per image, failures as
values so that one bad image never sinks the batch. ``predict_payloads`` (decode every
payload, then one forward pass) serves ``batchpredict predict`` on local files and URLs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from batchpredict.errors import PredictionError
from batchpredict.images import DEFAULT_MAX_PIXELS, DecodedImage, Preprocess, decode_image
from batchpredict.model import Engine, Prediction


@dataclass
class Outcome:
    """The result for one payload: predictions, or the error that stopped it."""

    predictions: list[Prediction] = field(default_factory=list)
    error: PredictionError | None = None
    image: DecodedImage | None = None
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    # Not now: the line's host is busy or refused it (``error`` says which). Epoch seconds before
    # which it should not come back; its run defers it (batch.py), never writes it as failed.
    deferred_until: float | None = None
    refused: bool = False  # deferred by the host's own 429/503 (counts in the line's budget)


def _decode(payload: bytes | PredictionError, preprocess: Preprocess, max_pixels: int) -> Outcome:
    if isinstance(payload, PredictionError):
        return Outcome(error=payload)
    started = time.perf_counter()
    outcome = Outcome()
    try:
        outcome.image = decode_image(payload, preprocess, max_pixels)
    except PredictionError as exc:
        outcome.error = exc
    outcome.preprocess_ms = (time.perf_counter() - started) * 1000
    return outcome


def predict_payloads(
    engine: Engine,
    payloads: Sequence[bytes | PredictionError],
    top_k: int,
    max_pixels: int | None = None,
    pool: Executor | None = None,
) -> list[Outcome]:
    """Decode each payload (bytes, or the fetch error already met) and predict all in one batch.

    With a ``pool``, images decode in parallel: Pillow releases the GIL while it decodes and
    resizes, and decoding costs about as much as inference per image.
    """
    preprocess, limit = engine.spec.preprocess, max_pixels or DEFAULT_MAX_PIXELS
    if pool is None:
        outcomes = [_decode(p, preprocess, limit) for p in payloads]
    else:
        outcomes = list(pool.map(_decode, payloads, repeat(preprocess), repeat(limit)))
    ready = [i for i, outcome in enumerate(outcomes) if outcome.image is not None]
    if ready:
        batch = np.stack([outcomes[i].image.tensor for i in ready])  # type: ignore[union-attr]
        started = time.perf_counter()
        predictions = engine.run_inference(batch, top_k)
        # The forward pass is shared, so each image is charged its share of it.
        share = (time.perf_counter() - started) * 1000 / len(ready)
        for index, preds in zip(ready, predictions, strict=True):
            outcomes[index].predictions = preds
            outcomes[index].inference_ms = share
    return outcomes
