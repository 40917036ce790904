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
from batchpredict.fetch import Fetcher
from batchpredict.jobs import FINAL_STATUSES, JobStore
from batchpredict.messages import Chunk, finalize_body
from batchpredict.model import Engine, available_cpus
from batchpredict.predictor import predict_payloads
from batchpredict.queues import Queue
from batchpredict.records import SUCCEEDED, WorkItem, failed_record, outcome_record
from batchpredict.results import ResultStore


@dataclass(frozen=True)
class FetchPolicy:
    concurrency: int = 16
    attempts: int = 3  # transient failures are tried this many times in all
    backoff_seconds: float = 0.5  # doubled after each round


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


class ChunkWriter:
    """Part file + IMG# rows + counted marker; asks for finalize when the job is done."""

    def __init__(self, jobs: JobStore, results: ResultStore, finalize: Queue) -> None:
        self.jobs = jobs
        self.results = results
        self.finalize = finalize

    def write(self, chunk: Chunk, records: list[dict[str, Any]], model: str | None) -> bool:
        """Returns True if this call counted the chunk (False: counted by an earlier delivery).

        A chunk counted before keeps the part and rows written then: the job may already be
        finalized from them, and results.jsonl and the table must keep telling the same story.
        """
        if self.jobs.chunk_counted(chunk.job_id, chunk.chunk):
            self.request_finalize_if_done(chunk.job_id)
            return False
        self.results.write_part(chunk.job_id, chunk.chunk, records)
        self.jobs.put_results(records)
        succeeded = sum(1 for r in records if r["status"] == SUCCEEDED)
        counted = self.jobs.count_chunk(chunk.job_id, chunk.chunk, succeeded, len(records) - succeeded, model)
        self.request_finalize_if_done(chunk.job_id)
        return counted

    def request_finalize_if_done(self, job_id: str) -> None:
        # Checked on every delivery, counted or not: a redelivery after a lost finalize
        # message still completes the job (finalize itself is idempotent).
        job = self.jobs.get(job_id)
        if job is not None and job.all_chunks_done and job.status not in FINAL_STATUSES:
            self.finalize.send(finalize_body(job_id))
