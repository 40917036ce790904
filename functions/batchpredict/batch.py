"""predict logic: a batch of chunk messages -> fetched images -> one forward pass -> records.

All images of all chunks in the invocation are fetched concurrently and predicted
together (the engine splits at its max batch), then each chunk is written and counted
on its own, so one chunk's AWS error does not cost the others their results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from batchpredict.errors import PredictionError
from batchpredict.fetch import Fetcher, FetchPolicy
from batchpredict.messages import Chunk
from batchpredict.model import Engine, available_cpus
from batchpredict.predictor import Outcome, predict_payloads
from batchpredict.records import SUCCEEDED, WorkItem, base_record, failed_record


@dataclass(frozen=True)
class Fetched:
    payload: bytes | PredictionError
    fetch_ms: float


class ImageFetcher:
    """Fetch many URLs concurrently; transient failures get bounded retry rounds."""

    def __init__(
        self, fetcher: Fetcher, policy: FetchPolicy, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.fetcher = fetcher
        self.policy = policy
        self._sleep = sleep
        self.pool = ThreadPoolExecutor(max_workers=policy.concurrency, thread_name_prefix="fetch")

    def _one(self, url: str) -> Fetched:
        started = time.perf_counter()
        try:
            payload: bytes | PredictionError = self.fetcher.fetch(url).data
        except PredictionError as exc:
            payload = exc
        return Fetched(payload, (time.perf_counter() - started) * 1000)

    def fetch_all(self, urls: Sequence[str]) -> list[Fetched]:
        results: list[Fetched | None] = [None] * len(urls)
        todo = list(range(len(urls)))
        for attempt in range(self.policy.attempts):
            if attempt:
                self._sleep(self.policy.backoff_seconds * 2 ** (attempt - 1))
            for i, fetched in zip(todo, self.pool.map(self._one, [urls[i] for i in todo]), strict=True):
                previous = results[i]
                spent = previous.fetch_ms if previous else 0.0
                results[i] = Fetched(fetched.payload, spent + fetched.fetch_ms)
            todo = [i for i in todo if _transient(results[i])]
            if not todo:
                break
        return [r for r in results if r is not None]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()


def _transient(fetched: Fetched | None) -> bool:
    return fetched is not None and isinstance(fetched.payload, PredictionError) and fetched.payload.transient


def outcome_record(
    job_id: str, item: WorkItem, outcome: Outcome, model: str, fetch_ms: float
) -> dict[str, Any]:
    """The record of an image that went through fetch + predict (successfully or not)."""
    if outcome.error is not None:
        record = failed_record(job_id, item, outcome.error.code, outcome.error.message, model)
    else:
        record = base_record(job_id, item, model) | {
            "status": SUCCEEDED,
            "predictions": [p.as_dict() for p in outcome.predictions],
        }
    if outcome.image is not None:
        record["image"] = {
            "width": outcome.image.width,
            "height": outcome.image.height,
            "bytes": outcome.image.bytes,
        }
    record["timing_ms"] = {
        "fetch": round(fetch_ms, 2),
        "preprocess": round(outcome.preprocess_ms, 2),
        "inference": round(outcome.inference_ms, 2),
    }
    return record


class ChunkPredictor:
    """Records for every item of every chunk, from one batched inference."""

    def __init__(
        self, engine: Engine, images: ImageFetcher, top_k: int, max_pixels: int | None = None
    ) -> None:
        self.engine = engine
        self.images = images
        self.top_k = top_k
        self.max_pixels = max_pixels
        # One decoder per CPU: more would only hold more decoded images in memory at once.
        self._decoders = ThreadPoolExecutor(max_workers=available_cpus(), thread_name_prefix="decode")

    def records(self, chunks: Sequence[Chunk]) -> list[list[dict[str, Any]]]:
        model = self.engine.model_id
        todo: list[tuple[int, WorkItem]] = [
            (c, item)
            for c, chunk in enumerate(chunks)
            for item in chunk.items
            if item.error is None and item.url
        ]
        fetched = self.images.fetch_all([item.url or "" for _, item in todo])
        outcomes = predict_payloads(
            self.engine, [f.payload for f in fetched], self.top_k, self.max_pixels, pool=self._decoders
        )
        done: dict[tuple[int, int], dict[str, Any]] = {}
        for (c, item), fetch, outcome in zip(todo, fetched, outcomes, strict=True):
            done[(c, item.index)] = outcome_record(chunks[c].job_id, item, outcome, model, fetch.fetch_ms)
        out: list[list[dict[str, Any]]] = []
        for c, chunk in enumerate(chunks):
            rows = []
            for item in chunk.items:
                record = done.get((c, item.index))
                if record is None:  # failed at split time: no fetch, no model
                    error = item.error or {"code": "invalid_manifest_line", "message": "no url"}
                    record = failed_record(chunk.job_id, item, error["code"], error["message"])
                rows.append(record)
            out.append(rows)
        return out
