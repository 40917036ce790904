"""boto3 clients, created on demand (never at import), with standard retries.

Endpoints come from boto3's own settings (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``, ...),
which is how the local stack points the same code at servers on loopback.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

RETRIES = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


def client(service: str, config: Config | None = None, session: boto3.session.Session | None = None) -> Any:
    """A client from a fresh session: it reads the credentials and endpoints in the environment
    now, where boto3's default session would keep the ones it saw first. ``config`` is merged
    onto :data:`RETRIES` (its settings win). ``session`` (the CLI's ``--profile``/``--region``)
    replaces the fresh one."""
    merged = RETRIES.merge(config) if config is not None else RETRIES
    return (session or boto3.session.Session()).client(service, config=merged)  # type: ignore[call-overload]
