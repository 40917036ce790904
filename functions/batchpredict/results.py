"""S3 adapter for the output bucket: per-chunk parts, the merged results.jsonl, the summary.

Keys are deterministic (``results/{job}/parts/{chunk:06d}.jsonl``), so a retried chunk
overwrites its part instead of adding a second one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from batchpredict.records import ResultRecord

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

JSONL = "application/x-ndjson"


def part_key(job_id: str, chunk: int) -> str:
    return f"results/{job_id}/parts/{chunk:06d}.jsonl"


def deferred_key(job_id: str, chunk: int, round_: int) -> str:
    """The lines a deferred chunk had finished in its deferral ``round_`` (deferral.py)."""
    return f"results/{job_id}/deferred/{chunk:06d}-{round_:03d}.jsonl"


def results_key(job_id: str, number: int = 1) -> str:
    """The job's results file ``number``: ``results.jsonl``, then (past the one-file cap)
    ``results-2.jsonl``, ``results-3.jsonl``..."""
    name = "results" if number == 1 else f"results-{number}"
    return f"results/{job_id}/{name}.jsonl"


def summary_key(job_id: str) -> str:
    return f"results/{job_id}/_summary.json"


def multipart_etag(etags: list[str]) -> str:
    """The ETag S3 gives an object completed from parts with these ETags (MD5 of their MD5s)."""
    digests = b"".join(bytes.fromhex(etag.strip('"')) for etag in etags)
    return f'"{hashlib.md5(digests).hexdigest()}-{len(etags)}"'


class UploadGoneError(RuntimeError):
    """The multipart upload no longer exists (completed by someone else, or aborted)."""


def _missing(exc: ClientError, *codes: str) -> bool:
    return exc.response.get("Error", {}).get("Code") in codes


def jsonl(records: Iterable[ResultRecord]) -> bytes:
    return b"".join(
        json.dumps(r.to_json(), separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for r in records
    )


class ResultStore:
    """Every output-bucket call of the pipeline."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def write_part(self, job_id: str, chunk: int, records: list[ResultRecord]) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=part_key(job_id, chunk),
            Body=jsonl(records),
            ContentType=JSONL,
        )

    def save_deferred(self, job_id: str, chunk: int, round_: int, records: list[ResultRecord]) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=deferred_key(job_id, chunk, round_),
            Body=jsonl(records),
            ContentType=JSONL,
        )

    def saved_records(self, job_id: str, chunk: int, rounds: Iterable[int]) -> list[ResultRecord]:
        """The records ``save_deferred`` kept for these rounds; a missing one raises (the chunk
        then comes back, and past its receives reconcile reports its lines)."""
        records = []
        for round_ in rounds:
            body = self.client.get_object(Bucket=self.bucket, Key=deferred_key(job_id, chunk, round_))["Body"]
            with body:
                records += [
                    ResultRecord.from_json(json.loads(line)) for line in body.read().splitlines() if line
                ]
        return records

    def read_part(self, job_id: str, chunk: int) -> bytes | None:
        """A chunk's part, whole (a few KiB); None if it does not exist."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=part_key(job_id, chunk))["Body"]
        except ClientError as exc:
            if _missing(exc, "NoSuchKey"):
                return None
            raise
        with body:
            return body.read()

    # --- results files: multipart uploads driven (and checkpointed) by merge.py ----------------

    def put_file(self, key: str, body: bytes) -> None:
        """A results file small enough for one PUT (no part was cut from it)."""
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=JSONL)

    def start_upload(self, key: str) -> str:
        return self.client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=JSONL)["UploadId"]

    def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        """Upload part ``number`` (1-based); returns its ETag. UploadGoneError if the upload is gone."""
        try:
            response = self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
        except ClientError as exc:
            if _missing(exc, "NoSuchUpload"):
                raise UploadGoneError(f"{key}: upload {upload_id} is gone") from exc
            raise
        return response["ETag"]

    def complete_upload(self, key: str, upload_id: str, etags: list[str]) -> None:
        """Complete the upload from its parts. Completing it again (a finalize that died right after
        completing) is fine: S3 no longer knows the upload, but the object is there with the ETag
        these parts give. UploadGoneError otherwise."""
        parts: list[CompletedPartTypeDef] = [
            {"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, start=1)
        ]
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except ClientError as exc:
            if not _missing(exc, "NoSuchUpload"):
                raise
            if self._etag(key) != multipart_etag(etags):
                raise UploadGoneError(f"{key}: upload {upload_id} is gone") from exc

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if not _missing(exc, "NoSuchUpload"):
                raise

    def _etag(self, key: str) -> str | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["ETag"]
        except ClientError as exc:
            if _missing(exc, "404", "NoSuchKey", "NotFound"):
                return None
            raise

    def write_summary(self, job_id: str, summary: dict[str, Any]) -> str:
        key = summary_key(job_id)
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            ContentType="application/json",
            Body=json.dumps(summary, indent=2, sort_keys=True).encode(),
        )
        return self.uri(key)

    def read_json(self, key: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        return doc
