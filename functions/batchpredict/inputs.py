"""S3 adapter for the input bucket: open a manifest object as a stream, from a byte offset."""

from __future__ import annotations

import io
from typing import Any

from botocore.exceptions import ClientError

# Errors that no retry will mend: the job fails with the reason instead.
UNREADABLE_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404", "AccessDenied", "403"})


class ManifestUnreadableError(Exception):
    """The manifest object is gone or may not be read."""


class ManifestStore:
    def __init__(self, client: Any) -> None:
        self.client = client

    def metadata(self, bucket: str, key: str, version_id: str | None) -> dict[str, str]:
        """The object's user metadata (x-amz-meta-*, keys lowercase without the prefix)."""
        return dict(self._call(self.client.head_object, bucket, key, version_id).get("Metadata") or {})

    def open(self, bucket: str, key: str, version_id: str | None, start_byte: int = 0) -> Any:
        """A streaming body of the object (the version the event named), from ``start_byte``."""
        extra = {"Range": f"bytes={start_byte}-"} if start_byte else {}
        try:
            return self._call(self.client.get_object, bucket, key, version_id, **extra)["Body"]
        except ClientError as exc:
            # A split handed over exactly at the end: S3 answers a range from the object's size
            # with 416 InvalidRange. Nothing is left to read.
            if start_byte and exc.response["Error"]["Code"] == "InvalidRange":
                return io.BytesIO(b"")
            raise

    @staticmethod
    def _call(method: Any, bucket: str, key: str, version_id: str | None, **extra: Any) -> Any:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key} | extra
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            return method(**kwargs)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in UNREADABLE_CODES:
                raise ManifestUnreadableError(f"cannot read manifest s3://{bucket}/{key}: {code}") from exc
            raise
