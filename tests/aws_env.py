"""The AWS settings of every test that builds boto3 clients: dummy credentials and a region, and
nothing from the developer's shell that could reach a real account or another endpoint."""

from __future__ import annotations

import pytest

REGION = "us-east-1"
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
# A profile or session token, the general endpoint and the per-service ones (which win over it).
LEAKS = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL_DYNAMODB",
)


def dummy_aws(mp: pytest.MonkeyPatch, endpoint: str | None = None) -> None:
    """Dummy credentials and a region, no profile; every service at ``endpoint`` when given."""
    for name in LEAKS:
        mp.delenv(name, raising=False)
    for name, value in DUMMY_CREDENTIALS.items():
        mp.setenv(name, value)
    if endpoint:
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
