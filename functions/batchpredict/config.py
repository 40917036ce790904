"""Typed settings, parsed once at start from an environment mapping.

Logic receives these frozen objects and never reads ``os.environ``; a missing
required setting fails at start with a message naming the variable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from batchpredict.model import DEFAULT_MAX_BATCH, DEFAULT_TOP_K

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


@dataclass(frozen=True)
class EngineConfig:
    model_uri: str
    max_batch: int = DEFAULT_MAX_BATCH
    threads: int | None = None  # None: every CPU the process may use
    top_k: int = DEFAULT_TOP_K


def engine_config(env: Mapping[str, str]) -> EngineConfig:
    return EngineConfig(
        model_uri=setting(
            env, "MODEL_URI", str, help_text="model bundle location (s3://bucket/prefix or a folder)"
        ),
        max_batch=setting(env, "MAX_BATCH", positive_int, DEFAULT_MAX_BATCH),
        threads=setting(env, "INFERENCE_THREADS", positive_int, None),
        top_k=setting(env, "TOP_K", positive_int, DEFAULT_TOP_K),
    )
