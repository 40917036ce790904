"""S3 adapter for the input bucket: open a manifest object as a stream, from a byte offset."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

# Errors that no retry will mend: the job fails with the reason instead.
UNREADABLE_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404", "AccessDenied", "403"})


class ManifestUnreadableError(Exception):
    """The manifest object is gone or may not be read."""


class ManifestStore:
    def __init__(self, client: Any) -> None:
        self.client = client

    def open(self, bucket: str, key: str, version_id: str | None, start_byte: int = 0) -> Any:
        """A streaming body of the object (the version the event named), from ``start_byte``."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        if start_byte:
            kwargs["Range"] = f"bytes={start_byte}-"
        try:
            return self.client.get_object(**kwargs)["Body"]
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in UNREADABLE_CODES:
                raise ManifestUnreadableError(f"cannot read manifest s3://{bucket}/{key}: {code}") from exc
            raise
