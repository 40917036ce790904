"""Typed settings, parsed once at start from an environment mapping.

Logic receives these frozen objects and never reads ``os.environ``; a missing
required setting fails at start with a message naming the variable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from batchpredict.deadlines import DEFAULT_WORK_BATCH_SIZE, DeadlineSettings
from batchpredict.defaults import DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS, DEFAULT_TOP_K
from batchpredict.fetch import FetchLimits, FetchPolicy, parse_networks, parse_s3_prefixes
from batchpredict.hostlimits import HostPolicy
from batchpredict.messages import MAX_CHUNK_SIZE
from batchpredict.options import MAX_TOP_K
from batchpredict.useragent import (
    PLACEHOLDER_CONTACT_URL,
    parse_contact_url,
    parse_user_agent,
    user_agent_for,
)

if TYPE_CHECKING:
    # Imported where used: predict's cold start has no use for the splitter's modules.
    from batchpredict.merge import MergeSettings
    from batchpredict.split import SplitSettings

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is missing or malformed."""


_REQUIRED: object = object()


def setting(
    env: Mapping[str, str],
    name: str,
    parse: Callable[[str], T],
    default: T | object = _REQUIRED,
    help_text: str = "",
) -> T:
    """One environment setting, parsed; a clear ConfigError when missing or malformed."""
    raw = env.get(name, "").strip()
    if not raw:
        if default is _REQUIRED:
            raise ConfigError(f"{name} is not set{': ' + help_text if help_text else ''}")
        return default  # type: ignore[return-value]
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is invalid: {exc}") from exc


def positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def top_k(raw: str) -> int:
    value = positive_int(raw)
    if value > MAX_TOP_K:
        raise ValueError(f"at most {MAX_TOP_K} (each class adds up to ~180 bytes to every IMG# row)")
    return value


def _prefix_of(uri: str) -> str:
    return uri.removeprefix("s3://").partition("/")[2].strip("/")


def model_uri(raw: str) -> str:
    """A bundle folder, or ``s3://bucket/prefix`` with a prefix: never a whole bucket."""
    if raw.startswith("s3://") and not (raw[5:].partition("/")[0] and _prefix_of(raw)):
        raise ValueError("give s3://bucket/prefix/ with a non-empty prefix, not a whole bucket")
    return raw


def image_source_prefixes(raw: str) -> tuple[str, ...]:
    """``parse_s3_prefixes``, refusing an entry that opens a whole bucket (an empty prefix)."""
    prefixes = parse_s3_prefixes(raw)
    for prefix in prefixes:
        if not _prefix_of(prefix):
            raise ValueError(
                f"{prefix!r} opens the whole bucket: give s3://bucket/prefix/ with a non-empty prefix"
            )
    return prefixes


@dataclass(frozen=True)
class EngineConfig:
    model_uri: str
    max_batch: int = DEFAULT_MAX_BATCH
    threads: int | None = None  # None: every CPU the process may use
    top_k: int = DEFAULT_TOP_K


def engine_config(env: Mapping[str, str]) -> EngineConfig:
    return EngineConfig(
        model_uri=setting(
            env, "MODEL_URI", model_uri, help_text="model bundle location (s3://bucket/prefix/ or a folder)"
        ),
        max_batch=setting(env, "MAX_BATCH", positive_int, DEFAULT_MAX_BATCH),
        threads=setting(env, "INFERENCE_THREADS", positive_int, None),
        top_k=setting(env, "TOP_K", top_k, DEFAULT_TOP_K),
    )


@dataclass(frozen=True)
class Tables:
    table: str
    ttl_seconds: int | None  # RESULT_TTL_DAYS: rows expire (DynamoDB TTL) this long after writing
    # What the JOB records' deadlines are made of (deadlines.py): split and sweep use them.
    deadlines: DeadlineSettings = field(default_factory=DeadlineSettings)


def _tables(env: Mapping[str, str]) -> Tables:
    days = setting(env, "RESULT_TTL_DAYS", positive_int, None)
    return Tables(
        table=setting(env, "TABLE_NAME", str, help_text="the DynamoDB table of jobs and results"),
        ttl_seconds=days * 86_400 if days else None,
        deadlines=deadline_settings(env),
    )


def deadline_settings(env: Mapping[str, str]) -> DeadlineSettings:
    """The stack's timeouts and retry budgets a job's deadline follows. The defaults are the
    template's (tests/infra compares); the template passes the two parameters that shape them
    (WORK_BATCH_SIZE, PREDICT_MAX_CONCURRENCY) and the local stack sets all, from its own caps."""
    d = DeadlineSettings()
    batch = setting(env, "WORK_BATCH_SIZE", positive_int, DEFAULT_WORK_BATCH_SIZE)
    concurrency = setting(env, "PREDICT_MAX_CONCURRENCY", positive_int, d.parallel_chunks // batch)
    return DeadlineSettings(
        split_seconds=setting(env, "DEADLINE_SPLIT_SECONDS", positive_float, d.split_seconds),
        predict_seconds=setting(env, "DEADLINE_PREDICT_SECONDS", positive_float, d.predict_seconds),
        attempts=setting(env, "DEADLINE_ATTEMPTS", positive_int, d.attempts),
        parallel_chunks=batch * concurrency,
        retry_seconds=setting(env, "DEADLINE_RETRY_SECONDS", positive_float, d.retry_seconds),
        finalize_seconds=setting(env, "DEADLINE_FINALIZE_SECONDS", positive_float, d.finalize_seconds),
        defer_seconds=setting(env, "DEFER_BUDGET_SECONDS", positive_float, d.defer_seconds),
    )


def fetch_limits(env: Mapping[str, str]) -> FetchLimits:
    defaults = FetchLimits()
    return FetchLimits(
        max_bytes=setting(env, "MAX_IMAGE_BYTES", positive_int, defaults.max_bytes),
        connect_timeout=setting(env, "FETCH_CONNECT_TIMEOUT", positive_float, defaults.connect_timeout),
        read_timeout=setting(env, "FETCH_READ_TIMEOUT", positive_float, defaults.read_timeout),
        total_timeout=setting(env, "FETCH_TOTAL_TIMEOUT", positive_float, defaults.total_timeout),
        max_redirects=setting(env, "MAX_REDIRECTS", non_negative_int, defaults.max_redirects),
        allowed_networks=setting(env, "ALLOWED_NETWORKS", parse_networks, ()),
        # Empty: no s3:// image at all (the template fills it from ImageSourcePrefixes).
        s3_prefixes=setting(env, "IMAGE_SOURCE_PREFIXES", image_source_prefixes, ()),
        user_agent=user_agent(env),
        robots_txt=setting(env, "ROBOTS_TXT", on_off, False),
    )


def user_agent(env: Mapping[str, str]) -> str:
    """USER_AGENT as given (the template's UserAgent), else ``batchpredict/VERSION (+CONTACT_URL)``."""
    contact = setting(env, "CONTACT_URL", parse_contact_url, PLACEHOLDER_CONTACT_URL)
    return setting(env, "USER_AGENT", parse_user_agent, user_agent_for(contact))


def on_off(raw: str) -> bool:
    if raw.lower() not in ("on", "off"):
        raise ValueError("give on or off")
    return raw.lower() == "on"


def chunk_size(raw: str) -> int:
    value = positive_int(raw)
    if value > MAX_CHUNK_SIZE:
        raise ValueError(f"at most {MAX_CHUNK_SIZE}, so a chunk of full-length lines fits in one SQS message")
    return value


# SQS: a message's visibility timeout is at most 12 hours.
MAX_VISIBILITY_SECONDS = 43_200
# predict's defaults: CHUNK_SIZE as split's (split.SplitSettings), the chunk a refill budgets at;
# a heartbeat keeps the messages in work hidden this long (see batch.py).
DEFAULT_CHUNK_SIZE = 16
DEFAULT_HEARTBEAT_SECONDS = 30.0


def heartbeat_seconds(raw: str) -> float:
    value = positive_float(raw)
    if not 3 <= value <= MAX_VISIBILITY_SECONDS:
        raise ValueError(f"3 to {MAX_VISIBILITY_SECONDS} (a beat every third of it, whole seconds to SQS)")
    return value


def non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


@dataclass(frozen=True)
class SplitConfig:
    tables: Tables
    output_bucket: str
    work_queue_url: str
    manifest_queue_url: str
    finalize_queue_url: str
    event_bus: str
    settings: SplitSettings


def split_config(env: Mapping[str, str]) -> SplitConfig:
    from batchpredict.split import SplitSettings

    defaults = SplitSettings()
    return SplitConfig(
        tables=_tables(env),
        output_bucket=setting(env, "OUTPUT_BUCKET", str, help_text="the bucket results are written to"),
        work_queue_url=setting(env, "WORK_QUEUE_URL", str),
        manifest_queue_url=setting(env, "MANIFEST_QUEUE_URL", str),
        finalize_queue_url=setting(env, "FINALIZE_QUEUE_URL", str),
        event_bus=_event_bus(env),
        settings=SplitSettings(
            chunk_size=setting(env, "CHUNK_SIZE", chunk_size, defaults.chunk_size),
            max_manifest_lines=setting(env, "MAX_MANIFEST_LINES", positive_int, defaults.max_manifest_lines),
            max_physical_lines=setting(
                env, "MAX_MANIFEST_PHYSICAL_LINES", positive_int, defaults.max_physical_lines
            ),
            max_manifest_bytes=setting(env, "MAX_MANIFEST_BYTES", positive_int, defaults.max_manifest_bytes),
            time_reserve_ms=setting(env, "SPLIT_TIME_RESERVE_MS", positive_int, defaults.time_reserve_ms),
            dedupe_max_urls=setting(env, "DEDUPE_MAX_URLS", non_negative_int, defaults.dedupe_max_urls),
        ),
    )


@dataclass(frozen=True)
class StreamSettings:
    """How the streaming predictor batches and bounds its work (see pipeline.py).

    ``bucket``: a forward pass runs once this many decoded images are ready.
    ``linger_seconds``: with fetches still out and no decode running, how long the oldest
    ready image waits for company before a smaller pass runs.
    ``decode_seconds``: the time budget of one decode. ``decoders``: None = one per CPU.
    ``refill_after_seconds``: once every fetch still out has been out this long and at most a
    bucket of work is left, the run takes more (a stalled server should not idle the cores).
    """

    bucket: int = 16
    linger_seconds: float = 0.05
    decode_seconds: float = 10.0
    refill_after_seconds: float = 0.25
    decoders: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS


def stream_settings(env: Mapping[str, str]) -> StreamSettings:
    defaults = StreamSettings()
    return StreamSettings(
        bucket=setting(env, "INFERENCE_BUCKET", positive_int, defaults.bucket),
        linger_seconds=setting(env, "INFERENCE_LINGER_SECONDS", positive_float, defaults.linger_seconds),
        decode_seconds=setting(env, "DECODE_TIMEOUT", positive_float, defaults.decode_seconds),
        refill_after_seconds=setting(
            env, "REFILL_AFTER_SECONDS", positive_float, defaults.refill_after_seconds
        ),
        decoders=setting(env, "DECODERS", positive_int, None),
        max_pixels=setting(env, "MAX_IMAGE_PIXELS", positive_int, DEFAULT_MAX_PIXELS),
    )


def fetch_policy(
    env: Mapping[str, str], concurrency: int | None = None, attempts: int | None = None
) -> FetchPolicy:
    defaults = FetchPolicy()
    return FetchPolicy(
        concurrency=concurrency or setting(env, "FETCH_CONCURRENCY", positive_int, defaults.concurrency),
        attempts=attempts or setting(env, "FETCH_ATTEMPTS", positive_int, defaults.attempts),
        backoff_seconds=setting(env, "FETCH_BACKOFF_SECONDS", positive_float, defaults.backoff_seconds),
    )


@dataclass(frozen=True)
class PredictorConfig:
    """Everything the streaming predictor needs: shared by predict and predict_api."""

    engine: EngineConfig
    fetch: FetchLimits
    policy: FetchPolicy
    stream: StreamSettings
    # The function's memory (Lambda sets AWS_LAMBDA_FUNCTION_MEMORY_SIZE; the local runner too).
    # None elsewhere: the decode budget then follows the machine's memory, and no GB-s are charged.
    memory_mb: int | None
    # LOCAL_CPU_SLOTS: the folder of the machine's CPU slots the local stack's predict workers
    # compute in turn on (cpu_slots.py); None (Lambda): the vCPUs are the invocation's own.
    cpu_slots: str | None = None


def predictor_config(env: Mapping[str, str], policy: FetchPolicy) -> PredictorConfig:
    return PredictorConfig(
        engine=engine_config(env),
        fetch=fetch_limits(env),
        policy=policy,
        stream=stream_settings(env),
        memory_mb=setting(env, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", positive_int, None),
        cpu_slots=setting(env, "LOCAL_CPU_SLOTS", str, None),
    )


def host_policy(env: Mapping[str, str]) -> HostPolicy:
    """Per-host politeness (hostlimits.py): every host's starting and highest rate, its
    concurrency, how long a line waits for its turn in its run, and a line's deferral budget."""
    d = HostPolicy()
    rps = setting(env, "HOST_RPS", positive_float, d.rps)
    max_rps = setting(env, "HOST_MAX_RPS", positive_float, max(d.max_rps, rps))
    if max_rps < rps:
        raise ConfigError(f"HOST_MAX_RPS={max_rps:g} is below HOST_RPS={rps:g}")
    return HostPolicy(
        rps=rps,
        max_rps=max_rps,
        min_rps=min(d.min_rps, rps),
        concurrency=setting(env, "HOST_CONCURRENCY", positive_int, d.concurrency),
        max_wait_seconds=setting(env, "HOST_MAX_WAIT_SECONDS", positive_float, d.max_wait_seconds),
        defer_budget_seconds=setting(env, "DEFER_BUDGET_SECONDS", positive_float, d.defer_budget_seconds),
        refusals=setting(env, "RATE_LIMIT_REFUSALS", positive_int, d.refusals),
    )


@dataclass(frozen=True)
class PredictConfig:
    tables: Tables
    output_bucket: str
    finalize_queue_url: str
    predictor: PredictorConfig
    # Kept back from the invocation's time for the last chunks' writes.
    write_reserve_seconds: float
    # The queue the function's chunks come from: refilled from while fetches stall, and its
    # messages kept hidden by the heartbeat while they are in work (None: neither).
    work_queue_url: str | None = None
    # CHUNK_SIZE, as split uses it: the lines a refill budgets each chunk it may receive at.
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # VISIBILITY_HEARTBEAT_SECONDS: how long each heartbeat keeps the messages in work hidden
    # (renewed every third of it), so how soon a crashed invocation's chunks come back.
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    hosts: HostPolicy = field(default_factory=HostPolicy)


def predict_config(env: Mapping[str, str]) -> PredictConfig:
    return PredictConfig(
        tables=_tables(env),
        output_bucket=setting(env, "OUTPUT_BUCKET", str, help_text="the bucket results are written to"),
        finalize_queue_url=setting(env, "FINALIZE_QUEUE_URL", str),
        predictor=predictor_config(env, fetch_policy(env)),
        write_reserve_seconds=setting(env, "WRITE_RESERVE_SECONDS", positive_float, 10.0),
        work_queue_url=setting(env, "WORK_QUEUE_URL", str, None),
        chunk_size=setting(env, "CHUNK_SIZE", chunk_size, DEFAULT_CHUNK_SIZE),
        heartbeat_seconds=setting(
            env, "VISIBILITY_HEARTBEAT_SECONDS", heartbeat_seconds, DEFAULT_HEARTBEAT_SECONDS
        ),
        hosts=host_policy(env),
    )


@dataclass(frozen=True)
class FinalizeConfig:
    tables: Tables
    output_bucket: str
    finalize_queue_url: str
    merge: MergeSettings
    event_bus: str


def part_mib(raw: str) -> int:
    from batchpredict.merge import MIB, S3_MAX_PART_BYTES, S3_MIN_PART_BYTES

    value = positive_int(raw)
    if not S3_MIN_PART_BYTES <= value * MIB <= S3_MAX_PART_BYTES:
        raise ValueError("an S3 part is 5 to 5,120 MiB")
    return value


def _event_bus(env: Mapping[str, str]) -> str:
    return setting(env, "EVENT_BUS_NAME", str, help_text="the EventBridge bus job state changes go to")


def finalize_config(env: Mapping[str, str]) -> FinalizeConfig:
    from batchpredict.merge import MIB, MergeSettings

    defaults = MergeSettings()
    return FinalizeConfig(
        tables=_tables(env),
        output_bucket=setting(env, "OUTPUT_BUCKET", str),
        finalize_queue_url=setting(env, "FINALIZE_QUEUE_URL", str),
        merge=MergeSettings(
            read_concurrency=setting(
                env, "FINALIZE_READ_CONCURRENCY", positive_int, defaults.read_concurrency
            ),
            prefetch_chunks=setting(env, "FINALIZE_PREFETCH_CHUNKS", positive_int, defaults.prefetch_chunks),
            part_bytes=setting(env, "FINALIZE_PART_MIB", part_mib, defaults.part_bytes // MIB) * MIB,
            time_reserve_seconds=setting(
                env, "FINALIZE_TIME_RESERVE_SECONDS", positive_float, defaults.time_reserve_seconds
            ),
        ),
        event_bus=_event_bus(env),
    )


@dataclass(frozen=True)
class SweepConfig:
    """The sweeper's: the table (and the deadlines of jobs written before they had one), where
    summaries go, the event bus."""

    tables: Tables
    output_bucket: str
    event_bus: str


def sweep_config(env: Mapping[str, str]) -> SweepConfig:
    return SweepConfig(
        tables=_tables(env),
        output_bucket=setting(env, "OUTPUT_BUCKET", str, help_text="the bucket summaries are written to"),
        event_bus=_event_bus(env),
    )


@dataclass(frozen=True)
class ApiConfig:
    predictor: PredictorConfig
    max_urls: int
    # Kept back from the request's time to shape and send the response.
    reply_reserve_seconds: float


def api_config(env: Mapping[str, str]) -> ApiConfig:
    max_urls = setting(env, "API_MAX_URLS", positive_int, 8)
    # One attempt: a caller waiting on HTTP would rather retry itself than wait for our backoff.
    return ApiConfig(
        predictor=predictor_config(env, fetch_policy(env, concurrency=max_urls, attempts=1)),
        max_urls=max_urls,
        reply_reserve_seconds=setting(env, "REPLY_RESERVE_SECONDS", positive_float, 2.0),
    )
