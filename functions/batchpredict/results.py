"""S3 adapter for the output bucket: per-chunk parts, the merged results.jsonl, the summary.

Keys are deterministic (``results/{job}/parts/{chunk:06d}.jsonl``), so a retried chunk
overwrites its part instead of adding a second one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from boto3.s3.transfer import TransferConfig

# Multipart pieces of 8 MiB, two in flight: merging a job of any size holds ~16 MiB.
MERGE_TRANSFER = TransferConfig(
    multipart_threshold=8 * 1024 * 1024,
    multipart_chunksize=8 * 1024 * 1024,
    max_concurrency=2,
    use_threads=True,
)


def part_key(job_id: str, chunk: int) -> str:
    return f"results/{job_id}/parts/{chunk:06d}.jsonl"


def results_key(job_id: str) -> str:
    return f"results/{job_id}/results.jsonl"


def summary_key(job_id: str) -> str:
    return f"results/{job_id}/_summary.json"


def jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(
        json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for r in records
    )


class _IterStream(io.RawIOBase):
    """A read-only file over an iterator of byte strings, for upload_fileobj's multipart upload."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._pieces)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


class ResultStore:
    """Every output-bucket call of the pipeline. ``client`` is a boto3 S3 client."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def write_part(self, job_id: str, chunk: int, records: list[dict[str, Any]]) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=part_key(job_id, chunk),
            Body=jsonl(records),
            ContentType="application/x-ndjson",
        )

    def part_lines(self, job_id: str, chunk: int) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=part_key(job_id, chunk))["Body"]
        try:
            for line in body.iter_lines():
                if line:
                    yield line
        finally:
            body.close()

    def merge(self, job_id: str, lines: Iterator[bytes]) -> str:
        """Stream ``lines`` (without newlines) into results.jsonl; returns its s3:// URI."""
        key = results_key(job_id)
        stream = io.BufferedReader(_IterStream(line + b"\n" for line in lines), buffer_size=1024 * 1024)
        self.client.upload_fileobj(
            stream, self.bucket, key, Config=MERGE_TRANSFER, ExtraArgs={"ContentType": "application/x-ndjson"}
        )
        return self.uri(key)

    def write_summary(self, job_id: str, summary: dict[str, Any]) -> str:
        key = summary_key(job_id)
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            ContentType="application/json",
            Body=json.dumps(summary, indent=2, sort_keys=True).encode(),
        )
        return self.uri(key)

    def read_json(self, key: str) -> Any:
        return json.loads(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
