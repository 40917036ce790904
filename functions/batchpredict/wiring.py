"""Builds the collaborators the handlers need from their settings (the composition root).

Heavy imports stay inside the functions that need them: the zip functions import this
module and must not load numpy, Pillow or MXNet.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from botocore.config import Config

from batchpredict import aws
from batchpredict.config import (
    ApiConfig,
    EngineConfig,
    FinalizeConfig,
    PredictConfig,
    PredictorConfig,
    SweepConfig,
    Tables,
)
from batchpredict.costs import LAMBDA_MB_PER_VCPU
from batchpredict.cpu_gate import UNGATED, CpuGate
from batchpredict.events import JobEvents
from batchpredict.fetch import Fetcher, FetchLimits, wide_allowances
from batchpredict.hostlimiter import HostLimiter, HostStateStore
from batchpredict.hostlimits import HostPolicy
from batchpredict.jobs import JobStore
from batchpredict.merges import MergeStore
from batchpredict.observability import logger
from batchpredict.queues import Queue
from batchpredict.results import ResultStore
from batchpredict.useragent import PLACEHOLDER_CONTACT_URL
from batchpredict.writer import ChunkWriter

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from batchpredict.batch import ChunkBatch
    from batchpredict.finalize import Finalizer
    from batchpredict.model import Engine
    from batchpredict.pipeline import StreamingPredictor
    from batchpredict.sweep import Sweeper


def s3_client() -> S3Client:
    return aws.client("s3")


def engine(config: EngineConfig) -> Engine:
    """The model, loaded (from a folder or s3://), verified and bound: once per process."""
    from batchpredict.bundle import resolve_bundle
    from batchpredict.model import load_model

    return load_model(resolve_bundle(config.model_uri, s3_client), config.max_batch, config.threads)


def fetcher(limits: FetchLimits) -> Fetcher:
    wide = wide_allowances(limits.allowed_networks)
    if wide:
        logger.warning("ALLOWED_NETWORKS opens more than one host to image URLs", extra={"networks": wide})
    if PLACEHOLDER_CONTACT_URL in limits.user_agent:
        # Site operators read the User-Agent to find who fetches their images.
        logger.warning(
            "the User-Agent names no contact: set the stack's ContactUrl (or UserAgent) parameter",
            extra={"user_agent": limits.user_agent},
        )
    # No client factory: the fetcher builds its own S3 client with the fetch limits' timeouts,
    # so an s3:// image is bounded like an https one.
    return Fetcher(limits)


# botocore retries a failed DynamoDB call once, quickly; throttling beyond that is retried by
# JobStore's Backoff, which knows how long the invocation has left (throttling.py).
DYNAMODB_RETRIES = Config(retries={"mode": "standard", "max_attempts": 2})


def job_store(tables: Tables) -> JobStore:
    return JobStore(
        aws.client("dynamodb", DYNAMODB_RETRIES),
        tables.table,
        ttl_seconds=tables.ttl_seconds,
        deadlines=tables.deadlines,
    )


def job_events(bus: str) -> JobEvents:
    return JobEvents(aws.client("events"), bus)


def result_store(bucket: str, connections: int | None = None) -> ResultStore:
    """``connections``: the client's HTTP pool, for callers reading with that many threads."""
    config = Config(max_pool_connections=connections) if connections else None
    return ResultStore(aws.client("s3", config), bucket)


def queue(url: str) -> Queue:
    return Queue(aws.client("sqs"), url)


def finalizer(config: FinalizeConfig) -> Finalizer:
    from batchpredict.finalize import Finalizer

    tables = config.tables
    return Finalizer(
        job_store(tables),
        result_store(config.output_bucket, connections=config.merge.read_concurrency),
        MergeStore(aws.client("dynamodb"), tables.table, ttl_seconds=tables.ttl_seconds),
        queue(config.finalize_queue_url),
        config.merge,
        job_events(config.event_bus),
    )


def sweeper(config: SweepConfig) -> Sweeper:
    from batchpredict.sweep import Sweeper

    return Sweeper(job_store(config.tables), result_store(config.output_bucket), job_events(config.event_bus))


def chunk_writer(tables: Tables, output_bucket: str, finalize_queue_url: str) -> ChunkWriter:
    return ChunkWriter(job_store(tables), result_store(output_bucket), queue(finalize_queue_url))


def cpu_gate(config: PredictorConfig) -> CpuGate:
    """What predict's compute waits on: nothing on Lambda; on the local stack, the machine's
    cores shared between the predict workers (cpu_slots.py)."""
    if config.cpu_slots is None:
        return UNGATED
    from batchpredict.costs import vcpus
    from batchpredict.cpu_slots import process_gate

    return process_gate(config.cpu_slots, vcpus(config.memory_mb or LAMBDA_MB_PER_VCPU))


def host_limiter(tables: Tables, policy: HostPolicy) -> HostLimiter:
    """Per-host politeness shared by the fleet through the jobs table (hostlimiter.py)."""
    store = HostStateStore(aws.client("dynamodb", DYNAMODB_RETRIES), tables.table, policy)
    return HostLimiter(store, policy)


def streaming_predictor(
    config: PredictorConfig, gate: CpuGate = UNGATED, limiter: HostLimiter | None = None
) -> StreamingPredictor:
    """The model, the guarded fetcher and the decoders' memory budget, once per process.
    ``limiter``: predict's; predict_api has none (an HTTP caller gets 429s as rate_limited)."""
    from batchpredict.budget import MemoryBudget, decode_budget_bytes, machine_memory_mb, resident_bytes
    from batchpredict.fetching import ImageFetcher
    from batchpredict.pipeline import StreamingPredictor

    model = engine(config.engine)
    images = ImageFetcher(fetcher(config.fetch), config.policy, config.fetch.total_timeout, limiter=limiter)
    # Measured after the model is loaded and bound: what is left is the decoders'.
    budget = decode_budget_bytes(config.memory_mb or machine_memory_mb(), resident_bytes())
    return StreamingPredictor(
        model, images, config.stream, config.engine.top_k, MemoryBudget(budget), gate=gate
    )


def chunk_batch(config: PredictConfig) -> ChunkBatch:
    from batchpredict.batch import ChunkBatch
    from batchpredict.deferral import ChunkDeferrer

    gate = cpu_gate(config.predictor)
    writer = chunk_writer(config.tables, config.output_bucket, config.finalize_queue_url)
    work = queue(config.work_queue_url) if config.work_queue_url else None
    return ChunkBatch(
        # Built in the first run, under the heartbeat: a worker that dies loading the model frees
        # its messages as soon as one that dies predicting.
        partial(streaming_predictor, config.predictor, gate, host_limiter(config.tables, config.hosts)),
        writer,
        memory_mb=config.predictor.memory_mb or 0,
        write_reserve_seconds=config.write_reserve_seconds,
        work_queue=work,
        chunk_size=config.chunk_size,
        heartbeat_seconds=config.heartbeat_seconds,
        gate=gate,
        deferrer=ChunkDeferrer(writer.results, writer.jobs, work, config.hosts) if work is not None else None,
    )


def url_predictor(config: ApiConfig) -> StreamingPredictor:
    return streaming_predictor(config.predictor, cpu_gate(config.predictor))
