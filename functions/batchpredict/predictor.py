"""Bytes in, predictions out: decode every payload, then one batched forward pass.

Shared by the CLI, the batch ``predict`` handler and ``predict_api``; failures of
single images are carried as values so that one bad image never sinks the batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from batchpredict.errors import PredictionError
from batchpredict.images import DecodedImage, decode_image
from batchpredict.model import Engine, Prediction


@dataclass
class Outcome:
    """The result for one payload: predictions, or the error that stopped it."""

    predictions: list[Prediction] = field(default_factory=list)
    error: PredictionError | None = None
    image: DecodedImage | None = None
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0


def predict_payloads(
    engine: Engine, payloads: Sequence[bytes | PredictionError], top_k: int, max_pixels: int | None = None
) -> list[Outcome]:
    """Decode each payload (bytes, or the fetch error already met) and predict all in one batch."""
    outcomes = [Outcome() for _ in payloads]
    ready: list[int] = []
    for index, payload in enumerate(payloads):
        if isinstance(payload, PredictionError):
            outcomes[index].error = payload
            continue
        started = time.perf_counter()
        try:
            kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
            outcomes[index].image = decode_image(payload, engine.spec.preprocess, **kwargs)
            ready.append(index)
        except PredictionError as exc:
            outcomes[index].error = exc
        outcomes[index].preprocess_ms = (time.perf_counter() - started) * 1000
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
