"""The bodies of the pipeline's SQS messages, and the job id.

* manifest queue: S3 event notifications (``ObjectCreated``), S3's ``s3:TestEvent``,
  and our own continuation messages for manifests too long for one invocation;
* work queue: chunk messages ``{"job_id", "chunk", "items": [...]}``; a chunk sent back for
  lines whose host said "not now" holds only those lines, and a ``deferral`` (Deferral);
* finalize queue: ``{"job_id"}``, from predict or reconcile when a job's last chunk is counted,
  and from finalize itself to continue a long merge in a new invocation.

reconcile reads the three dead-letter queues (manifest, work and finalize):
``parse_dead_letter`` tells their messages apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import S3Event

from batchpredict.fidelity import DEFAULT_FIDELITY, Fidelity
from batchpredict.records import WorkItem

# Size limits of the work queue's messages. SQS holds 256 KiB a message (1 MiB since 2025-08;
# the lower figure holds everywhere, moto included), and a predict event of WorkBatchSize (at
# most 10) such messages stays far below Lambda's 6 MB payload: 10 x 256 KiB = 2.5 MiB.
SQS_MAX_MESSAGE_BYTES = 256 * 1024
MAX_CHUNK_SIZE = 25  # lines per chunk message (the CHUNK_SIZE setting's cap)
# The chunk's own fields (job id, chunk number, options) and brackets: far less than this.
CHUNK_ENVELOPE_BYTES = 1024
# One line as it travels (its WorkItem's compact UTF-8 JSON). Escaping can grow a line: a C0
# control character is 1 byte in a CSV field but 6 in JSON (\u0001), a backslash 2, so the raw
# 8 KiB line limit alone does not bound a message. A line over this fails alone (split.py).
MAX_WORK_ITEM_BYTES = 10 * 1024
assert MAX_CHUNK_SIZE * (MAX_WORK_ITEM_BYTES + 1) + CHUNK_ENVELOPE_BYTES <= SQS_MAX_MESSAGE_BYTES


def work_item_bytes(item: WorkItem) -> int:
    """``item``'s size in a chunk message; UnicodeEncodeError if it holds text UTF-8 cannot carry."""
    return len(_compact(item.as_message()).encode("utf-8"))


def _compact(doc: Any) -> str:
    # UTF-8 as is (ensure_ascii=False): escaping would grow a non-ASCII line up to 6x.
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class ManifestObject:
    bucket: str
    key: str
    version_id: str | None
    etag: str | None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def job_id(self) -> str:
        """Deterministic: the same object version always maps to the same job."""
        identity = f"{self.bucket}\n{self.key}\n{self.version_id or ''}\n{self.etag or ''}"
        return "job-" + hashlib.sha256(identity.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Continuation:
    """Resume splitting ``manifest`` at ``position`` (see manifest.Position)."""

    job_id: str
    manifest: ManifestObject
    position: dict[str, Any]

    def body(self) -> str:
        m = self.manifest
        return json.dumps(
            {
                "continuation": {
                    "job_id": self.job_id,
                    "bucket": m.bucket,
                    "key": m.key,
                    "version_id": m.version_id,
                    "etag": m.etag,
                    "position": self.position,
                }
            }
        )


@dataclass(frozen=True)
class ManifestMessage:
    """What one manifest-queue message asks for: new objects, a continuation, or nothing."""

    objects: list[ManifestObject] = field(default_factory=list)
    continuation: Continuation | None = None


def parse_manifest_message(body: str) -> ManifestMessage:
    doc = json.loads(body)
    if doc.get("Event") == "s3:TestEvent":  # sent by S3 when the notification is configured
        return ManifestMessage()
    if "continuation" in doc:
        c = doc["continuation"]
        manifest = ManifestObject(c["bucket"], c["key"], c.get("version_id"), c.get("etag"))
        return ManifestMessage(continuation=Continuation(c["job_id"], manifest, c["position"]))
    objects = []
    for record in S3Event(doc).records:
        if not record.event_name.startswith("ObjectCreated:"):
            continue
        obj = record.s3.get_object
        # Keys arrive URL-encoded, with '+' for spaces.
        objects.append(
            ManifestObject(record.s3.bucket.name, unquote_plus(obj.key), obj.version_id, obj.etag or None)
        )
    return ManifestMessage(objects=objects)


@dataclass(frozen=True)
class Deferral:
    """A chunk sent back for the lines its host deferred (deferral.py): the how-many-th time,
    since when (epoch seconds), the rounds whose finished lines wait in S3
    (results.deferred_key), and each line's refusals (429/503) so far."""

    round: int
    first_at: float
    saved: tuple[int, ...] = ()
    refusals: dict[int, int] = field(default_factory=dict)

    def as_message(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "first_at": self.first_at,
            "saved": list(self.saved),
            "refusals": {str(k): v for k, v in self.refusals.items()},
        }

    @classmethod
    def from_message(cls, doc: dict[str, Any]) -> Deferral:
        return cls(
            int(doc["round"]),
            float(doc["first_at"]),
            tuple(int(r) for r in doc.get("saved") or ()),
            {int(k): int(v) for k, v in (doc.get("refusals") or {}).items()},
        )


@dataclass(frozen=True)
class Chunk:
    job_id: str
    chunk: int
    items: list[WorkItem]
    top_k: int | None = None  # the job's top-k option (None: the function's TOP_K)
    max_failures: str | None = None  # the job's max-failures: its writer then judges the threshold
    fidelity: Fidelity | None = None  # the job's fidelity (None: exact); parse gives it to each item
    host_rps: float | None = None  # the job's host-rps (None: the stack's); parse gives it to each item
    deferral: Deferral | None = None  # set on a chunk sent back for its deferred lines
    ignore_robots: bool = False  # the job's x-amz-meta-robots=ignore; parse gives it to each item

    def body(self) -> str:
        # MAX_CHUNK_SIZE items of at most MAX_WORK_ITEM_BYTES each fit one SQS message.
        doc: dict[str, Any] = {"job_id": self.job_id, "chunk": self.chunk}
        if self.top_k is not None:
            doc["top_k"] = self.top_k
        if self.max_failures is not None:
            doc["max_failures"] = self.max_failures
        if self.fidelity is not None:
            doc["fidelity"] = self.fidelity.value
        if self.host_rps is not None:
            doc["host_rps"] = self.host_rps
        if self.deferral is not None:
            doc["deferral"] = self.deferral.as_message()
        if self.ignore_robots:
            doc["robots"] = "ignore"
        doc["items"] = [item.as_message() for item in self.items]
        return _compact(doc)

    @classmethod
    def parse(cls, body: str) -> Chunk:
        doc = json.loads(body)
        top_k, fidelity, host_rps = doc.get("top_k"), doc.get("fidelity"), doc.get("host_rps")
        chosen = Fidelity(fidelity) if fidelity is not None else None
        job_id = str(doc["job_id"])
        rate = float(host_rps) if host_rps is not None else None
        deferral = doc.get("deferral")
        ignore_robots = doc.get("robots") == "ignore"
        return cls(
            job_id,
            int(doc["chunk"]),
            [
                WorkItem.from_message(
                    i, chosen or DEFAULT_FIDELITY, rate, job_id, honour_robots=not ignore_robots
                )
                for i in doc["items"]
            ],
            int(top_k) if top_k is not None else None,
            doc.get("max_failures"),
            chosen,
            rate,
            Deferral.from_message(deferral) if deferral is not None else None,
            ignore_robots=ignore_robots,
        )


def finalize_body(job_id: str) -> str:
    return json.dumps({"job_id": job_id})


def parse_finalize(body: str) -> str:
    return str(json.loads(body)["job_id"])


def parse_dead_letter(body: str) -> Chunk | str | ManifestMessage:
    """A dead-lettered chunk, the job id of a dead-lettered finalize message, or what a
    dead-lettered manifest-queue message asked for (an S3 event's objects, a continuation)."""
    doc = json.loads(body)
    if "chunk" in doc:
        return Chunk.parse(body)
    if "job_id" in doc:
        return str(doc["job_id"])
    return parse_manifest_message(body)
