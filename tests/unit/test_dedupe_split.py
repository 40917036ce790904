"""Dedupe at split time (split.FirstLines): a later line with an earlier line's URL is marked
``shares`` = that line; the mark travels in the chunk message; results name ``shared_with``."""

from __future__ import annotations

import json

from batchpredict.messages import Chunk
from batchpredict.records import ResultRecord, Timing, WorkItem
from batchpredict.split import FirstLines
from tests.unit.test_pipeline_split import WORK_URL, Stack, s3_event


def _item(index: int, url: str, **fields: object) -> WorkItem:
    return WorkItem(index=index, url=url, **fields)  # type: ignore[arg-type]


def test_the_first_line_of_a_url_is_remembered_and_later_ones_share_it() -> None:
    lines = FirstLines(limit=10)
    urls = [
        "https://img.example/a.jpg",
        "https://img.example/b.jpg",
        "HTTPS://IMG.example:443/a.jpg#again",  # a's key
        "https://img.example/A.jpg",  # path case is significant: a URL of its own
        "https://img.example/b.jpg",
        "https://img.example/a.jpg",
    ]
    marked = [lines.mark(_item(i, url)) for i, url in enumerate(urls)]
    assert [item.shares for item in marked] == [None, None, 0, None, 1, 0]
    assert [item.url for item in marked] == urls  # the line itself is unchanged


def test_failed_lines_neither_lead_nor_follow() -> None:
    lines = FirstLines(limit=10)
    bad = {"code": "invalid_manifest_line", "message": "line 1: bad"}
    failed = lines.mark(_item(0, "https://img.example/a.jpg", error=bad))
    first = lines.mark(_item(1, "https://img.example/a.jpg"))
    again = lines.mark(_item(2, "https://img.example/a.jpg", error=bad))
    assert (failed.shares, first.shares, again.shares) == (None, None, None)
    assert lines.mark(_item(3, "https://img.example/a.jpg")).shares == 1


def test_past_its_limit_the_map_remembers_no_new_url_but_keeps_marking_the_old() -> None:
    lines = FirstLines(limit=2)
    urls = ["https://x/1", "https://x/2", "https://x/3", "https://x/3", "https://x/1", "https://x/2"]
    assert [lines.mark(_item(i, url)).shares for i, url in enumerate(urls)] == [None, None, None, None, 0, 1]


def test_limit_zero_marks_nothing() -> None:
    lines = FirstLines(limit=0)
    assert [lines.mark(_item(i, "https://x/1")).shares for i in range(3)] == [None, None, None]


def test_the_split_marks_duplicates_in_its_chunk_messages() -> None:
    body = "".join(f"https://img.example/{i % 3}.jpg\n" for i in range(8)) + "ftp://x/0.jpg\nnot a url\n"
    stack = Stack(chunk_size=4)
    stack.s3.add("input-bucket", "manifests/dups.txt", body.encode())

    (outcome,) = stack.handle(s3_event("manifests/dups.txt"))

    assert outcome.action == "split"
    raw = [json.loads(message) for message in stack.sqs.delivered[WORK_URL]]
    shares = {item["index"]: item.get("shares") for chunk in raw for item in chunk["items"]}
    # Lines 3-7 repeat lines 0-2 (across chunks too); the invalid lines 8 and 9 are never marked.
    assert shares == {0: None, 1: None, 2: None, 3: 0, 4: 1, 5: 2, 6: 0, 7: 1, 8: None, 9: None}
    assert "shares" not in raw[0]["items"][0]  # only a marked line carries the field
    parsed = [item for chunk in stack.sqs.chunks() for item in chunk.items]
    assert [item.shares for item in parsed] == list(shares.values())


def test_the_splits_map_is_capped_by_its_setting() -> None:
    body = "".join(f"https://img.example/{i}.jpg\n" for i in (0, 1, 2, 0, 1, 2))
    stack = Stack(chunk_size=4, dedupe_max_urls=2)
    stack.s3.add("input-bucket", "manifests/cap.txt", body.encode())

    stack.handle(s3_event("manifests/cap.txt"))

    assert [item.shares for chunk in stack.sqs.chunks() for item in chunk.items] == [
        None,
        None,
        None,  # the third URL is past the cap: not remembered
        0,
        1,
        None,  # its duplicate is fetched for itself
    ]


def test_shares_travels_in_the_chunk_message_and_the_job_comes_from_the_chunk() -> None:
    chunk = Chunk("job-1", 0, [_item(0, "https://x/a"), _item(1, "https://x/a", shares=0)])
    (first, second) = Chunk.parse(chunk.body()).items
    assert (first.shares, second.shares) == (None, 0)
    assert (first.job_id, second.job_id) == ("job-1", "job-1")
    assert Chunk.parse(chunk.body()) == chunk  # the job is context, not part of the line


def test_shared_with_is_in_the_record_only_when_set_and_reads_back() -> None:
    item = _item(7, "https://x/a", metadata={"k": 1})
    shared = ResultRecord.for_item("job-1", item, model="m", timing=Timing(), shared_with=3)
    own = ResultRecord.for_item("job-1", item, model="m")
    assert shared.to_json()["shared_with"] == 3
    assert "shared_with" not in own.to_json()
    assert list(shared.to_json())[-2:] == ["shared_with", "metadata"]
    assert ResultRecord.from_json(shared.to_json()) == shared
    assert ResultRecord.from_json(json.loads(json.dumps(shared.to_item()))) == shared
    assert ResultRecord.from_json(own.to_json()).shared_with is None
