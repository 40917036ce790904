"""S3 adapter for the input bucket: open a manifest object as a stream, from a byte offset."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import ClientError

from batchpredict.manifest import ByteStream

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import GetObjectRequestTypeDef, HeadObjectRequestTypeDef

# Errors that no retry will mend: the job fails with the reason instead.
UNREADABLE_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404", "AccessDenied", "403"})


class ManifestUnreadableError(Exception):
    """The manifest object is gone or may not be read."""


class ManifestBody(ByteStream, Protocol):
    """An open manifest object (a StreamingBody), read to its end and closed."""

    def close(self) -> None: ...


class ManifestStore:
    def __init__(self, client: S3Client) -> None:
        self.client = client

    def metadata(self, bucket: str, key: str, version_id: str | None) -> dict[str, str]:
        """The object's user metadata (x-amz-meta-*, keys lowercase without the prefix)."""
        with _readable(bucket, key):
            return dict(self.client.head_object(**_where(bucket, key, version_id)).get("Metadata") or {})

    def open(self, bucket: str, key: str, version_id: str | None, start_byte: int = 0) -> ManifestBody:
        """A streaming body of the object (the version the event named), from ``start_byte``."""
        request: GetObjectRequestTypeDef = {**_where(bucket, key, version_id)}
        if start_byte:
            request["Range"] = f"bytes={start_byte}-"
        try:
            with _readable(bucket, key):
                return self.client.get_object(**request)["Body"]
        except ClientError as exc:
            # A split handed over exactly at the end: S3 answers a range from the object's size
            # with 416 InvalidRange. Nothing is left to read.
            if start_byte and exc.response["Error"]["Code"] == "InvalidRange":
                return io.BytesIO(b"")
            raise


def _where(bucket: str, key: str, version_id: str | None) -> HeadObjectRequestTypeDef:
    where: HeadObjectRequestTypeDef = {"Bucket": bucket, "Key": key}
    if version_id:
        where["VersionId"] = version_id
    return where


@contextmanager
def _readable(bucket: str, key: str) -> Iterator[None]:
    """A ClientError no retry will mend, as ManifestUnreadableError."""
    try:
        yield
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code in UNREADABLE_CODES:
            raise ManifestUnreadableError(f"cannot read manifest s3://{bucket}/{key}: {code}") from exc
        raise
