"""The stable, documented error codes a result line can carry, and the exception behind them."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Error codes of FAILED result lines. Values are a public contract: never rename one."""

    INVALID_MANIFEST_LINE = "invalid_manifest_line"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    BLOCKED_ADDRESS = "blocked_address"
    FETCH_TIMEOUT = "fetch_timeout"
    CONNECTION_ERROR = "connection_error"
    HTTP_ERROR = "http_error"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    TOO_LARGE = "too_large"
    NOT_AN_IMAGE = "not_an_image"
    IMAGE_TOO_LARGE = "image_too_large"
    S3_NOT_FOUND = "s3_not_found"
    S3_ACCESS_DENIED = "s3_access_denied"
    FILE_NOT_FOUND = "file_not_found"
    DEAD_LETTERED = "dead_lettered"
    INVALID_URL = "invalid_url"
    INVALID_REDIRECT = "invalid_redirect"
    DECODE_TIMEOUT = "decode_timeout"
    IMAGE_TOO_COMPLEX = "image_too_complex"
    INTERNAL_ERROR = "internal_error"
    CANCELLED = "cancelled"  # the job was cancelled, stopped or failed before this line was predicted
    # The host kept refusing (429/503) or its turn never came within the line's deferral budget
    # (hostlimits.HostPolicy: refusals, defer_budget_seconds; a host that refuses everything).
    RATE_LIMITED = "rate_limited"
    # The host asked not to be used so: X-Robots-Tag noai/noimageai/none on the image, or its
    # robots.txt (when the stack checks it). Permanent: asking again gets the same answer.
    ROBOTS_DISALLOWED = "robots_disallowed"


# Worth another attempt: the same request may succeed later.
TRANSIENT_CODES = frozenset({ErrorCode.FETCH_TIMEOUT, ErrorCode.CONNECTION_ERROR})


class PredictionError(Exception):
    """One image could not be predicted; ``code`` goes into the result line.

    ``transient`` marks failures worth retrying (timeouts, 5xx, 408/429, resets).
    """

    def __init__(self, code: ErrorCode, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = code in TRANSIENT_CODES if transient is None else transient

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


class RefusedError(PredictionError):
    """The host said "not now" (HTTP 429 or 503): ``retry_after`` seconds (its Retry-After
    header, parsed and capped; None without one). The line is deferred, not failed."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(ErrorCode.RATE_LIMITED, message, transient=True)
        self.retry_after = retry_after


class BundleError(Exception):
    """A model bundle is missing a file, has a wrong hash, or does not fit its description."""
