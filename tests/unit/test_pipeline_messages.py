"""Unit tests for messages.py: S3 event parsing, continuations, chunk bodies and the job id."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from batchpredict.messages import (
    Chunk,
    Continuation,
    ManifestObject,
    finalize_body,
    parse_finalize,
    parse_manifest_message,
)
from batchpredict.records import WorkItem


def s3_record(
    key: str,
    event: str = "ObjectCreated:Put",
    bucket: str = "input-bucket",
    version_id: str | None = None,
    etag: str | None = "0123456789abcdef",
) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": key, "size": 120, "sequencer": "0055AED6DCD90281E5"}
    if etag is not None:
        obj["eTag"] = etag
    if version_id is not None:
        obj["versionId"] = version_id
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2025-01-01T00:00:00.000Z",
        "eventName": event,
        "userIdentity": {"principalId": "EXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "R", "x-amz-id-2": "I"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "manifests",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "EXAMPLE"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
    }


def s3_event(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


TEST_EVENT = json.dumps(
    {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2025-01-01T00:00:00.000Z",
        "Bucket": "input-bucket",
        "RequestId": "R",
        "HostId": "H",
    }
)


# --- S3 events --------------------------------------------------------------------------------


def test_object_created_gives_the_manifest_object() -> None:
    message = parse_manifest_message(s3_event(s3_record("manifests/a.txt", version_id="v1", etag="e1")))

    assert message.continuation is None
    assert message.objects == [ManifestObject("input-bucket", "manifests/a.txt", "v1", "e1")]
    assert message.objects[0].uri == "s3://input-bucket/manifests/a.txt"


def test_keys_are_url_decoded_plus_is_a_space_and_percent_2b_a_plus() -> None:
    message = parse_manifest_message(s3_event(s3_record("manifests%2Fmy+file%2B1.txt")))

    (obj,) = message.objects
    assert obj.key == "manifests/my file+1.txt"
    assert obj.uri == "s3://input-bucket/manifests/my file+1.txt"


def test_keys_are_decoded_once_only() -> None:
    # a literal "%41" in the key arrives as "%2541" and must stay "%41"
    (obj,) = parse_manifest_message(s3_event(s3_record("manifests/100%2541.txt"))).objects
    assert obj.key == "manifests/100%41.txt"


def test_s3_test_event_has_no_objects() -> None:
    message = parse_manifest_message(TEST_EVENT)

    assert message.objects == []
    assert message.continuation is None


def test_object_removed_records_are_ignored() -> None:
    body = s3_event(
        s3_record("manifests/gone.txt", event="ObjectRemoved:Delete", etag=None),
        s3_record("manifests/new.txt", event="ObjectCreated:CompleteMultipartUpload"),
    )

    message = parse_manifest_message(body)

    assert [o.key for o in message.objects] == ["manifests/new.txt"]


def test_only_removed_records_give_nothing() -> None:
    message = parse_manifest_message(s3_event(s3_record("manifests/gone.txt", event="ObjectRemoved:Delete")))
    assert message.objects == []
    assert message.continuation is None


def test_missing_etag_and_version_are_none() -> None:
    (obj,) = parse_manifest_message(s3_event(s3_record("manifests/a.txt", etag=None))).objects
    assert obj.version_id is None
    assert obj.etag is None


# --- job id -----------------------------------------------------------------------------------


def test_job_id_is_stable_for_the_same_object_version() -> None:
    a = ManifestObject("in", "manifests/a.txt", "v1", "e1")
    b = ManifestObject("in", "manifests/a.txt", "v1", "e1")

    assert a.job_id == b.job_id
    assert re.fullmatch(r"job-[0-9a-f]{20}", a.job_id)


def test_duplicate_s3_events_give_the_same_job_id() -> None:
    body = s3_event(s3_record("manifests%2Fa.txt", version_id="v1", etag="e1"))
    first = parse_manifest_message(body).objects[0]
    again = parse_manifest_message(body).objects[0]
    assert first.job_id == again.job_id


@pytest.mark.parametrize(
    "other",
    [
        ManifestObject("in", "manifests/a.txt", "v2", "e1"),  # another version
        ManifestObject("in", "manifests/a.txt", "v1", "e2"),  # another etag
        ManifestObject("in", "manifests/a.txt", None, "e1"),  # no version
        ManifestObject("in", "manifests/b.txt", "v1", "e1"),  # another key
        ManifestObject("other", "manifests/a.txt", "v1", "e1"),  # another bucket
    ],
)
def test_job_id_differs_by_version_etag_key_and_bucket(other: ManifestObject) -> None:
    assert ManifestObject("in", "manifests/a.txt", "v1", "e1").job_id != other.job_id


def test_job_id_fields_do_not_run_together() -> None:
    # "a" + "b.txt" must not collide with "ab" + ".txt"
    assert ManifestObject("a", "b.txt", None, None).job_id != ManifestObject("ab", ".txt", None, None).job_id


# --- continuation, chunk and finalize bodies ----------------------------------------------------


def test_continuation_round_trips() -> None:
    manifest = ManifestObject("in", "manifests/my file+1.csv", "v1", "e1")
    position = {"index": 160, "line": 161, "byte_offset": 9000, "csv_header": ["url", "id"]}
    continuation = Continuation("job-abc", manifest, position)

    message = parse_manifest_message(continuation.body())

    assert message.objects == []
    assert message.continuation == continuation


def test_continuation_without_version_round_trips() -> None:
    continuation = Continuation("job-abc", ManifestObject("in", "m.txt", None, None), {"index": 40})
    assert parse_manifest_message(continuation.body()).continuation == continuation


def test_chunk_body_round_trips() -> None:
    chunk = Chunk(
        "job-abc",
        17,
        [
            WorkItem(index=272, url="https://img.example/a.jpg", id="cat-1", metadata={"k": [1, 2.5, None]}),
            WorkItem(index=273, url="s3://b/k.png"),
            WorkItem(
                index=274,
                url="ftp://x/y.jpg",
                error={"code": "unsupported_scheme", "message": "line 275: unsupported scheme 'ftp'"},
            ),
            WorkItem(index=275, url="héllo wörld", id="ünïcode"),
        ],
    )

    assert Chunk.parse(chunk.body()) == chunk


def test_chunk_body_leaves_out_empty_fields() -> None:
    body = json.loads(Chunk("j", 0, [WorkItem(index=0, url="https://a/b.jpg")]).body())
    assert body == {"job_id": "j", "chunk": 0, "items": [{"index": 0, "url": "https://a/b.jpg"}]}


def test_finalize_body_round_trips() -> None:
    assert parse_finalize(finalize_body("job-abc")) == "job-abc"
