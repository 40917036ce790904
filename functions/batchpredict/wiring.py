"""Builds the collaborators the handlers need from their settings (the composition root).

Heavy imports stay inside the functions that need them: the zip functions import this
module and must not load numpy, Pillow or MXNet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchpredict import aws
from batchpredict.config import EngineConfig, Tables
from batchpredict.fetch import Fetcher, FetchLimits
from batchpredict.jobs import JobStore
from batchpredict.queues import Queue
from batchpredict.results import ResultStore
from batchpredict.writer import ChunkWriter

if TYPE_CHECKING:
    from batchpredict.model import Engine


def s3_client() -> Any:
    return aws.client("s3")


def engine(config: EngineConfig) -> Engine:
    """The model, loaded (from a folder or s3://), verified and bound: once per process."""
    from batchpredict.bundle import resolve_bundle
    from batchpredict.model import load_model

    return load_model(resolve_bundle(config.model_uri, s3_client), config.max_batch, config.threads)


def fetcher(limits: FetchLimits) -> Fetcher:
    # No client factory: the fetcher builds its own S3 client with the fetch limits' timeouts,
    # so an s3:// image is bounded like an https one.
    return Fetcher(limits)


def job_store(tables: Tables) -> JobStore:
    return JobStore(aws.client("dynamodb"), tables.table, ttl_seconds=tables.ttl_seconds)


def result_store(bucket: str) -> ResultStore:
    return ResultStore(s3_client(), bucket)


def queue(url: str) -> Queue:
    return Queue(aws.client("sqs"), url)


def chunk_writer(tables: Tables, output_bucket: str, finalize_queue_url: str) -> ChunkWriter:
    return ChunkWriter(job_store(tables), result_store(output_bucket), queue(finalize_queue_url))
