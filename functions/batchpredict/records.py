"""The result record: one per manifest line, the same in the JSONL files and in DynamoDB."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchpredict.errors import ErrorCode

SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"


@dataclass(frozen=True)
class WorkItem:
    """One manifest line as it travels in a chunk message: an image to predict, or a line
    that already failed while the manifest was split (``error`` set)."""

    index: int
    url: str | None = None
    id: str | None = None
    metadata: dict[str, Any] | None = None
    error: dict[str, str] | None = None

    def as_message(self) -> dict[str, Any]:
        fields = {
            "index": self.index,
            "url": self.url,
            "id": self.id,
            "metadata": self.metadata,
            "error": self.error,
        }
        return {k: v for k, v in fields.items() if v is not None}

    @classmethod
    def from_message(cls, body: dict[str, Any]) -> WorkItem:
        return cls(
            index=int(body["index"]),
            url=body.get("url"),
            id=body.get("id"),
            metadata=body.get("metadata"),
            error=body.get("error"),
        )


def base_record(job_id: str | None, item: WorkItem, model: str | None) -> dict[str, Any]:
    """The record's fields in their JSONL order; ``job_id`` None (predict_api) leaves it out."""
    record: dict[str, Any] = {
        "job_id": job_id,
        "index": item.index,
        "id": item.id,
        "url": item.url,
        "status": FAILED,
        "predictions": [],
        "error": None,
        "model": model,
        "image": None,
        "timing_ms": {"fetch": 0.0, "preprocess": 0.0, "inference": 0.0},
    }
    if job_id is None:
        del record["job_id"]
    if item.metadata is not None:
        record["metadata"] = item.metadata
    return record


def failed_record(
    job_id: str | None, item: WorkItem, code: ErrorCode | str, message: str, model: str | None = None
) -> dict[str, Any]:
    return base_record(job_id, item, model) | {"error": {"code": str(code), "message": message}}
