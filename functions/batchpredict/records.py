"""The result record: one per manifest line, the same in the JSONL files and in DynamoDB.

``ResultRecord`` is the one typed form of it: built by batch.py (``image_record``) and writer.py
(``ResultRecord.failed``), written as a JSONL line (``to_json``) and an IMG# row (``to_item``),
read back by merge.py and the user side (``from_json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from batchpredict.errors import ErrorCode
from batchpredict.fidelity import DEFAULT_FIDELITY, Fidelity

PREVIEW_CHARS = 200  # what a failed line keeps of its raw text, url or id for the error report


def preview(text: str | None) -> str | None:
    """``text`` cut to PREVIEW_CHARS (an ellipsis marks the cut), as UTF-8 can carry it (a lone
    surrogate becomes "?")."""
    if text is None:
        return None
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


Status = Literal["SUCCEEDED", "FAILED"]
SUCCEEDED: Final = "SUCCEEDED"
FAILED: Final = "FAILED"

# The IMG# row's key. Fixed: users compute a line's page. A page's 1,000 rows of <= 1 KiB cost
# <= 1,000 WCU over their whole life, so no order of chunk deliveries can push one page's key
# past DynamoDB's 1,000 WCU/s.
PAGE_LINES = 1000
IMG_PREFIX = "IMG#"


def page_of(index: int) -> int:
    """The result page of manifest line ``index``."""
    return index // PAGE_LINES


def page_pk(job_id: str, page: int) -> str:
    return f"{job_id}#{page}"


def img_sk(index: int) -> str:
    return f"{IMG_PREFIX}{index:09d}"


@dataclass(frozen=True)
class WorkItem:
    """One manifest line as it travels in a chunk message: an image to predict, or a line
    that already failed while the manifest was split (``error`` set). ``fidelity``, ``job_id``
    and ``honour_robots`` (False: the job's x-amz-meta-robots=ignore) are its job's: the chunk
    message carries them once for all its lines (``messages.Chunk``), not each line. ``shares``:
    the earlier line of the job with the same URL (urlkey.py), whose fetch and prediction this
    line takes (split.FirstLines marks it; sharing.py reads it)."""

    index: int
    url: str | None = None
    id: str | None = None
    metadata: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    fidelity: Fidelity = DEFAULT_FIDELITY
    host_rps: float | None = None  # the job's x-amz-meta-host-rps, carried once by the chunk too
    honour_robots: bool = True
    shares: int | None = None
    # Context from the chunk, not part of the line: left out of comparisons, as of the message.
    job_id: str | None = field(default=None, compare=False)

    def as_message(self) -> dict[str, Any]:
        fields = {
            "index": self.index,
            "url": self.url,
            "id": self.id,
            "metadata": self.metadata,
            "error": self.error,
            "shares": self.shares,
        }
        return {k: v for k, v in fields.items() if v is not None}

    @classmethod
    def from_message(
        cls,
        body: dict[str, Any],
        fidelity: Fidelity = DEFAULT_FIDELITY,
        host_rps: float | None = None,
        job_id: str | None = None,
        *,
        honour_robots: bool = True,
    ) -> WorkItem:
        shares = body.get("shares")
        return cls(
            index=int(body["index"]),
            url=body.get("url"),
            id=body.get("id"),
            metadata=body.get("metadata"),
            error=body.get("error"),
            fidelity=fidelity,
            host_rps=host_rps,
            shares=None if shares is None else int(shares),
            job_id=job_id,
            honour_robots=honour_robots,
        )


@dataclass(frozen=True, slots=True)
class Prediction:
    """One of an image's top-k classes (model.py's engine returns them)."""

    rank: int
    class_index: int
    wnid: str
    label: str
    probability: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "class_index": self.class_index,
            "wnid": self.wnid,
            "label": self.label,
            "probability": self.probability,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prediction:
        return cls(data["rank"], data["class_index"], data["wnid"], data["label"], data["probability"])


@dataclass(frozen=True, slots=True)
class ResultError:
    """Why a line FAILED: a code of ``errors.ErrorCode`` (a reader may meet newer ones) and a
    message for people."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """The decoded image: its size in pixels (after EXIF orientation), its encoded bytes, their
    sha256 (hex) and the format Pillow read (lower case: jpeg, png, webp, gif, bmp, tiff, avif).
    ``sha256`` and ``format`` are None only in records written before they existed."""

    width: int
    height: int
    bytes: int
    sha256: str | None
    format: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "format": self.format,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageInfo:
        return cls(data["width"], data["height"], data["bytes"], data.get("sha256"), data.get("format"))


@dataclass(frozen=True, slots=True)
class Timing:
    """Milliseconds a line spent fetching, decoding and in its share of the forward pass."""

    fetch: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultRecord:
    """One manifest line's result. ``job_id`` None: predict_api's record, which has none;
    ``metadata`` None: the line had none (both are then left out of the JSON). ``fidelity``:
    the decode its job asked for (a record written before there was a choice was ``exact``).
    ``shared_with``: the line of the same job whose fetch this one shares (its predictions, image
    and error are that line's; None: the line was fetched for itself)."""

    job_id: str | None
    index: int
    id: str | None = None
    url: str | None = None
    status: Status
    predictions: tuple[Prediction, ...] = ()
    error: ResultError | None = None
    model: str | None = None
    fidelity: Fidelity = DEFAULT_FIDELITY
    image: ImageInfo | None = None
    timing_ms: Timing = Timing()
    metadata: dict[str, Any] | None = None
    shared_with: int | None = None

    def __post_init__(self) -> None:
        if (self.status == SUCCEEDED) != (self.error is None):
            raise ValueError(f"a {self.status} record with error {self.error}")

    @classmethod
    def for_item(
        cls,
        job_id: str | None,
        item: WorkItem,
        *,
        model: str | None,
        error: ResultError | None = None,
        predictions: tuple[Prediction, ...] = (),
        image: ImageInfo | None = None,
        timing: Timing = Timing(),
        shared_with: int | None = None,
    ) -> ResultRecord:
        """``item``'s record: SUCCEEDED, or FAILED with ``error``."""
        return cls(
            job_id=job_id,
            index=item.index,
            id=item.id,
            url=item.url,
            status=SUCCEEDED if error is None else FAILED,
            predictions=predictions,
            error=error,
            model=model,
            fidelity=item.fidelity,
            image=image,
            timing_ms=timing,
            metadata=item.metadata,
            shared_with=shared_with,
        )

    @classmethod
    def failed(
        cls, job_id: str | None, item: WorkItem, code: ErrorCode | str, message: str, model: str | None = None
    ) -> ResultRecord:
        """``item`` FAILED with ``code`` before anything was fetched (or without its fetch's details)."""
        return cls.for_item(job_id, item, model=model, error=ResultError(str(code), message))

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the contract, its keys in their JSONL order."""
        data: dict[str, Any] = {} if self.job_id is None else {"job_id": self.job_id}
        data |= {
            "index": self.index,
            "id": self.id,
            "url": self.url,
            "status": self.status,
            "predictions": [p.as_dict() for p in self.predictions],
            "error": None if self.error is None else {"code": self.error.code, "message": self.error.message},
            "model": self.model,
            "fidelity": self.fidelity.value,
            "image": None if self.image is None else self.image.as_dict(),
            "timing_ms": {
                "fetch": self.timing_ms.fetch,
                "preprocess": self.timing_ms.preprocess,
                "inference": self.timing_ms.inference,
            },
        }
        if self.shared_with is not None:
            data["shared_with"] = self.shared_with
        if self.metadata is not None:
            data["metadata"] = self.metadata
        return data

    def to_item(self) -> dict[str, Any]:
        """The IMG# row, plain values (``jobs.to_dynamo`` types them): its key, then the JSON."""
        if self.job_id is None:
            raise ValueError(f"line {self.index} has no job, so no row")
        return {"pk": page_pk(self.job_id, page_of(self.index)), "sk": img_sk(self.index)} | self.to_json()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResultRecord:
        """A record from its JSON object: a JSONL line parsed, an API record, or an IMG# row read
        back as plain values (its ``pk``, ``sk`` and ``expires_at`` are not part of it)."""
        error, image, timing = data["error"], data["image"], data["timing_ms"]
        return cls(
            job_id=data.get("job_id"),
            index=data["index"],
            id=data["id"],
            url=data["url"],
            status=_status(data["status"]),
            predictions=tuple(Prediction.from_dict(p) for p in data["predictions"]),
            error=None if error is None else ResultError(error["code"], error["message"]),
            model=data["model"],
            fidelity=Fidelity(data.get("fidelity", DEFAULT_FIDELITY)),
            image=None if image is None else ImageInfo.from_dict(image),
            timing_ms=Timing(timing["fetch"], timing["preprocess"], timing["inference"]),
            metadata=data.get("metadata"),
            shared_with=None if data.get("shared_with") is None else int(data["shared_with"]),
        )


def _status(value: Any) -> Status:
    if value == SUCCEEDED:
        return SUCCEEDED
    if value == FAILED:
        return FAILED
    raise ValueError(f"not a result status: {value!r}")
