"""DynamoDB adapter for finalize's checkpoint: where a job's merge into results files stands.

One item a job, ``pk`` = job id, ``sk`` = ``MERGE``, written only by finalize: after every
uploaded part it holds the multipart upload (id, the parts' ETags), the next chunk to read and
the tally of the lines before it, so a continued or redelivered finalize resumes the same
upload. Every save is conditional on the version it read: two finalizers of one job (a
duplicate finalize message) can never both move the merge on; the one that loses stops.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from batchpredict.jobs import from_dynamo, to_dynamo

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, PutItemInputTypeDef

    from batchpredict.jobs import Item

MERGE_SK = "MERGE"


@dataclass(frozen=True)
class ResultsFile:
    """A completed results file: its key, the manifest index of its first line, its size."""

    key: str
    first_index: int
    lines: int
    bytes: int


@dataclass(frozen=True)
class MergeCheckpoint:
    job_id: str
    version: int = 0  # 0: never saved
    next_chunk: int = 0
    # The tally of every line before next_chunk.
    lines: int = 0
    succeeded: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)
    # The results file being written (1-based), the line it starts at, its open upload.
    file_number: int = 1
    file_first_index: int = 0
    file_bytes: int = 0
    upload_id: str | None = None
    etags: list[str] = field(default_factory=list)
    files: list[ResultsFile] = field(default_factory=list)
    done: bool = False  # every file completed
    last_error: str | None = None

    @classmethod
    def from_item(cls, item: Mapping[str, AttributeValueTypeDef]) -> MergeCheckpoint:
        data = from_dynamo(item)
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        values["files"] = [ResultsFile(**f) for f in values.get("files", [])]
        return cls(**(values | {"job_id": data["pk"]}))

    def item(self) -> dict[str, Any]:
        data = asdict(self)
        return {"pk": data.pop("job_id"), "sk": MERGE_SK} | data


class MergeStore:
    """``table``: the pipeline's one table."""

    def __init__(self, client: DynamoDBClient, table: str, *, ttl_seconds: int | None = None) -> None:
        self.client = client
        self.table = table
        self.ttl_seconds = ttl_seconds

    def _key(self, job_id: str) -> Item:
        return {"pk": {"S": job_id}, "sk": {"S": MERGE_SK}}

    def get(self, job_id: str) -> MergeCheckpoint:
        item = self.client.get_item(TableName=self.table, Key=self._key(job_id), ConsistentRead=True).get(
            "Item"
        )
        return MergeCheckpoint.from_item(item) if item else MergeCheckpoint(job_id)

    def save(self, checkpoint: MergeCheckpoint) -> MergeCheckpoint | None:
        """Store ``checkpoint`` as the next version of the one it was made from; None (nothing
        stored) if another finalizer saved a version in between."""
        saved = replace(checkpoint, version=checkpoint.version + 1, last_error=None)
        expiry = {"expires_at": int(time.time()) + self.ttl_seconds} if self.ttl_seconds else {}
        condition, values = (
            ("attribute_not_exists(version)", None)
            if checkpoint.version == 0
            else ("version = :v", {":v": {"N": str(checkpoint.version)}})
        )
        request: PutItemInputTypeDef = {
            "TableName": self.table,
            "Item": to_dynamo(saved.item() | expiry),
            "ConditionExpression": condition,
        }
        if values:
            request["ExpressionAttributeValues"] = values
        try:
            self.client.put_item(**request)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return None
            raise
        return saved

    def record_error(self, job_id: str, message: str) -> None:
        """Remember why the last attempt failed, for the dead-letter consumer's reason."""
        self.client.update_item(
            TableName=self.table,
            Key=self._key(job_id),
            UpdateExpression="SET last_error = :e",
            ExpressionAttributeValues={":e": {"S": message[:1000]}},
        )
