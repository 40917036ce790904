"""boto3 clients, created on demand (never at import), with standard retries.

Endpoints come from boto3's own settings (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``, ...),
which is how the local stack points the same code at servers on loopback.

Each service name gives its own client type (the ``mypy_boto3_*`` stubs, dev dependencies):
they are imported for the type checker only, so the Lambda zips run without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, overload

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from botocore.client import BaseClient
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

Session = boto3.session.Session
RETRIES = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)

Service = Literal["cloudformation", "dynamodb", "events", "s3", "sqs"]


@overload
def client(
    service: Literal["cloudformation"], config: Config | None = None, session: Session | None = None
) -> CloudFormationClient: ...
@overload
def client(
    service: Literal["dynamodb"], config: Config | None = None, session: Session | None = None
) -> DynamoDBClient: ...
@overload
def client(
    service: Literal["events"], config: Config | None = None, session: Session | None = None
) -> EventBridgeClient: ...
@overload
def client(
    service: Literal["s3"], config: Config | None = None, session: Session | None = None
) -> S3Client: ...
@overload
def client(
    service: Literal["sqs"], config: Config | None = None, session: Session | None = None
) -> SQSClient: ...
def client(service: Service, config: Config | None = None, session: Session | None = None) -> BaseClient:
    """A client from a fresh session: it reads the credentials and endpoints in the environment
    now, where boto3's default session would keep the ones it saw first. ``config`` is merged
    onto :data:`RETRIES` (its settings win). ``session`` (the CLI's ``--profile``/``--region``)
    replaces the fresh one."""
    merged = RETRIES.merge(config) if config is not None else RETRIES
    return (session or Session()).client(service, config=merged)
