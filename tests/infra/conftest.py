"""The template (SAM and translated, offline) and stacks deployed from it into a moto server.

Every fixture here is package-scoped: the moto server and the AWS_* variables pointing at it
live exactly as long as tests/infra runs, so nothing leaks into the other test packages.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from batchpredict.local.servers import MotoServer
from tests.aws_env import dummy_aws
from tests.infra.cfn import load_sam, translate
from tests.infra.motostack import DeployedStack, deploy

# A second stack with every parameter that changes the template's shape set away from its
# default (the conditions' other branches, the mapping and memory settings).
CUSTOM_PARAMETERS = {
    "ModelUri": "s3://models-bucket/bundles/efficientnet-lite0/",
    "ImageSourcePrefixes": "s3://photo-archive/2024/,s3://more-photos/cats/",
    "ApiImageSourcePrefixes": "s3://more-photos/public/",
    "ApiAuth": "JWT",
    "ApiJwtIssuer": "https://issuer.example.com/",
    "ApiJwtAudience": "app1,app2",
    "ChunkSize": "8",
    "WorkBatchSize": "4",
    "WorkBatchingWindowSeconds": "5",
    "PredictMaxConcurrency": "50",
    "PredictMemorySize": "5307",
    "ResultRetentionDays": "7",
    "LogLevel": "DEBUG",
    "AlarmEmail": "ops@example.com",
}


@pytest.fixture(scope="package")
def aws_env() -> Iterator[pytest.MonkeyPatch]:
    """Dummy credentials and a region, no profile: nothing here can reach a real account."""
    with pytest.MonkeyPatch.context() as mp:
        dummy_aws(mp)
        yield mp


@pytest.fixture(scope="package")
def sam() -> dict[str, Any]:
    return load_sam()


@pytest.fixture(scope="package")
def cfn(sam: dict[str, Any], aws_env: pytest.MonkeyPatch) -> dict[str, Any]:
    return translate(sam)


@pytest.fixture(scope="package")
def moto_endpoint(aws_env: pytest.MonkeyPatch) -> Iterator[str]:
    server = MotoServer()
    endpoint = server.start()
    aws_env.setenv("AWS_ENDPOINT_URL", endpoint)
    yield endpoint
    server.stop()


@pytest.fixture(scope="package")
def stack(cfn: dict[str, Any], moto_endpoint: str) -> DeployedStack:
    """The template with its default parameters, deployed."""
    return deploy(cfn, "batchpredict")


@pytest.fixture(scope="package")
def custom_stack(cfn: dict[str, Any], moto_endpoint: str) -> DeployedStack:
    return deploy(cfn, "batchpredict-custom", CUSTOM_PARAMETERS)
