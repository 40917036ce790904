"""Tests for manifest.py: in-memory streams only, no network."""

from __future__ import annotations

import gzip
import io
import json
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from batchpredict.errors import ErrorCode
from batchpredict.manifest import (
    MAX_LINE_BYTES,
    MAX_URL_LENGTH,
    ImageLine,
    InvalidLine,
    ManifestError,
    ManifestFormat,
    ManifestItem,
    Position,
    detect_format,
    iter_manifest,
)

JSONL, CSV, TXT = ManifestFormat.JSONL, ManifestFormat.CSV, ManifestFormat.TXT
BAD = ErrorCode.INVALID_MANIFEST_LINE
INVALID_URL = ErrorCode.INVALID_URL


def run(
    data: bytes, fmt: ManifestFormat, gzipped: bool = False, **kwargs: Any
) -> list[tuple[ManifestItem, Position]]:
    stream = io.BytesIO(gzip.compress(data) if gzipped else data)
    return list(iter_manifest(stream, fmt, gzipped, **kwargs))


def items(data: bytes, fmt: ManifestFormat, gzipped: bool = False, **kwargs: Any) -> list[ManifestItem]:
    return [item for item, _ in run(data, fmt, gzipped, **kwargs)]


def only(data: bytes, fmt: ManifestFormat) -> ManifestItem:
    (item,) = items(data, fmt)
    return item


def invalid(data: bytes, fmt: ManifestFormat) -> InvalidLine:
    item = only(data, fmt)
    assert isinstance(item, InvalidLine), item
    return item


class ChunkStream:
    """A read(n)-only stream (like a boto3 StreamingBody) fed from chunks, returning short reads."""

    def __init__(self, chunks: Iterator[bytes], max_read: int | None = None) -> None:
        self._chunks = chunks
        self._pending = b""
        self._max_read = max_read
        self.largest_request = 0
        self.bytes_read = 0

    def read(self, size: int, /) -> bytes:
        self.largest_request = max(self.largest_request, size)
        if not self._pending:
            self._pending = next(self._chunks, b"")
        limit = min(size, self._max_read or size)
        out, self._pending = self._pending[:limit], self._pending[limit:]
        self.bytes_read += len(out)
        return out


# --- detect_format -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("manifests/a.jsonl", (JSONL, False)),
        ("manifests/a.ndjson", (JSONL, False)),
        ("manifests/a.JSONL.GZ", (JSONL, True)),
        ("manifests/a.csv", (CSV, False)),
        ("manifests/a.csv.gz", (CSV, True)),
        ("manifests/a.txt", (TXT, False)),
        ("manifests/a.b.txt.gz", (TXT, True)),
    ],
)
def test_detect_format(key: str, expected: tuple[ManifestFormat, bool]) -> None:
    assert detect_format(key) == expected


@pytest.mark.parametrize("key", ["manifests/a.json", "manifests/a.csv.bz2", "manifests/a", "manifests/a.gz"])
def test_detect_format_rejects_other_extensions(key: str) -> None:
    with pytest.raises(ManifestError, match="unsupported manifest extension"):
        detect_format(key)


# --- the three formats -----------------------------------------------------------------------


def test_txt_ignores_blank_and_comment_lines_and_numbers_the_rest() -> None:
    data = b"# header comment\n\nhttps://a.example/1.jpg\n   \n  http://b.example/2.png  \n\t# indented\ns3://bucket/k/3.jpg"
    assert items(data, TXT) == [
        ImageLine(index=0, line=3, url="https://a.example/1.jpg", id=None, metadata=None),
        ImageLine(index=1, line=5, url="http://b.example/2.png", id=None, metadata=None),
        ImageLine(index=2, line=7, url="s3://bucket/k/3.jpg", id=None, metadata=None),
    ]


def test_jsonl_reads_url_id_and_metadata() -> None:
    data = (
        b'{"url": "https://a.example/1.jpg", "id": "cat-1", "metadata": {"k": [1, 2]}}\n'
        b"\n"
        b'{"url": " s3://bkt/2.jpg ", "id": 42}\n'
        b'{"url": "http://b.example/3.jpg", "id": null, "other": true}\n'
    )
    assert items(data, JSONL) == [
        ImageLine(index=0, line=1, url="https://a.example/1.jpg", id="cat-1", metadata={"k": [1, 2]}),
        ImageLine(index=1, line=3, url="s3://bkt/2.jpg", id="42", metadata=None),
        ImageLine(index=2, line=4, url="http://b.example/3.jpg", id=None, metadata=None),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "line 1: not valid JSON: Expecting value"),
        (b'{"url": "https://a/x.jpg"', "line 1: not valid JSON: Expecting ',' delimiter"),
        (b'["https://a/x.jpg"]', "line 1: expected a JSON object, got array"),
        (b'"https://a/x.jpg"', "line 1: expected a JSON object, got string"),
        (b'{"id": "x"}', 'line 1: missing "url"'),
        (b'{"url": 5}', 'line 1: "url" must be a string, got number'),
        (b'{"url": null}', 'line 1: "url" must be a string, got null'),
        (b'{"url": "https://a/x.jpg", "id": true}', 'line 1: "id" must be a string or a number, got boolean'),
        (b'{"url": "https://a/x.jpg", "id": {}}', 'line 1: "id" must be a string or a number, got object'),
        (b'{"url": "https://a/x.jpg", "metadata": [1]}', 'line 1: "metadata" must be an object, got array'),
        (b'{"url": "https://a/x.jpg", "metadata": {"a": NaN}}', "line 1: not valid JSON: NaN is not allowed"),
        (b'{"url": "https://a/x.jpg", "metadata": {"a": 1e999}}', "out of range"),
        (b"[" * 4000 + b"]" * 4000, "line 1: not valid JSON: nested too deeply"),
    ],
)
def test_jsonl_bad_lines(line: bytes, message: str) -> None:
    item = invalid(line, JSONL)
    assert item.code is BAD
    assert item.index == 0
    assert item.line == 1
    assert message in item.message


def test_csv_quoted_commas_header_case_and_metadata() -> None:
    data = (
        b" URL ,Id,caption,source\n"
        b'"https://a.example/x.jpg?a=1,2",7,"hello, ""world""",web\n'
        b"s3://bkt/y.jpg,,,\n"
        b"http://b.example/z.jpg,9\n"
    )
    assert items(data, CSV) == [
        ImageLine(
            index=0,
            line=2,
            url="https://a.example/x.jpg?a=1,2",
            id="7",
            metadata={"caption": 'hello, "world"', "source": "web"},
        ),
        ImageLine(index=1, line=3, url="s3://bkt/y.jpg", id=None, metadata={"caption": "", "source": ""}),
        # a short row leaves the trailing columns out of the metadata
        ImageLine(index=2, line=4, url="http://b.example/z.jpg", id="9", metadata=None),
    ]


def test_csv_header_only_url_column_gives_no_metadata_and_ignores_blank_named_columns() -> None:
    data = b"\n\nurl,\nhttps://a.example/x.jpg,\n"
    assert items(data, CSV) == [
        ImageLine(index=0, line=4, url="https://a.example/x.jpg", id=None, metadata=None)
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (b",1,x", "line 2: empty url"),
        (b"   ,1,x", "line 2: empty url"),
        (b"https://a/x.jpg,1,x,extra", "line 2: 4 fields but the header has 3"),
        (b'https://a/x.jpg,1,"unclosed', "line 2: not valid CSV"),
        (b'https://a/x.jpg,"1"x,y', "line 2: not valid CSV"),
    ],
)
def test_csv_bad_rows(row: bytes, message: str) -> None:
    item = invalid(b"url,id,note\n" + row + b"\n", CSV)
    assert item.code is BAD
    assert message in item.message


def test_csv_multiline_quoted_field_becomes_invalid_lines_and_parsing_continues() -> None:
    data = b'url,note\nhttps://a/1.jpg,"first\nsecond"\nhttps://a/2.jpg,ok\n'
    got = items(data, CSV)
    assert [type(item) for item in got] == [InvalidLine, InvalidLine, ImageLine]
    assert [item.index for item in got] == [0, 1, 2]
    assert got[2] == ImageLine(index=2, line=4, url="https://a/2.jpg", id=None, metadata={"note": "ok"})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"image,id\nhttps://a/x.jpg,1\n", "CSV header has no 'url' column (found: 'image', 'id')"),
        (b"url,URL\nhttps://a/x.jpg,x\n", "more than one 'url' column"),
        (b"url,id,Id\nhttps://a/x.jpg,1,2\n", "more than one 'id' column"),
        (b"\xff,url\n", "CSV header row (line 1) cannot be read"),
        (b"u" * (MAX_LINE_BYTES + 1) + b",url\n", "CSV header row (line 1) is longer than"),
    ],
)
def test_csv_unreadable_header_fails_the_manifest(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        items(data, CSV)


def test_empty_manifests_yield_nothing() -> None:
    for fmt in ManifestFormat:
        assert items(b"", fmt) == []
        assert items(b"\n\r\n  \n", fmt) == []
    assert items(b"url,id\n", CSV) == []


# --- URL checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        (
            "ftp://a.example/x.jpg",
            ErrorCode.UNSUPPORTED_SCHEME,
            "unsupported scheme 'ftp' (allowed: https, http, s3)",
        ),
        ("FILE:///etc/passwd", ErrorCode.UNSUPPORTED_SCHEME, "unsupported scheme 'file'"),
        ("javascript:alert(1)", ErrorCode.UNSUPPORTED_SCHEME, "unsupported scheme 'javascript'"),
        ("a.example/x.jpg", BAD, "url has no scheme"),
        ("https:///x.jpg", INVALID_URL, "url has no host"),
        ("http://", INVALID_URL, "url has no host"),
        ("https://a.example:99999/x.jpg", INVALID_URL, "url cannot be parsed"),
        ("https://a.example:0/x.jpg", INVALID_URL, "url cannot be parsed: port 0"),
        ("https://a.example:x/x.jpg", INVALID_URL, "url cannot be parsed"),
        ("https://[::1/x.jpg", INVALID_URL, "url cannot be parsed"),
        ("http://[fe80::1%eth0]/a.jpg", INVALID_URL, "url has an IPv6 zone id"),
        ("http://[fe80::1%25eth0]:8080/a.jpg", INVALID_URL, "url has an IPv6 zone id"),
        ("s3://bucket", INVALID_URL, "s3 url needs a bucket and a key"),
        ("s3://bucket/", INVALID_URL, "s3 url needs a bucket and a key"),
        ("s3:///key.jpg", INVALID_URL, "s3 url needs a bucket and a key"),
        ("https://a.example/x y.jpg", BAD, "url contains whitespace or control characters"),
        ("https://a.example/x\x07.jpg", BAD, "url contains whitespace or control characters"),
        ("https://a.example/x\u00a0.jpg", BAD, "url contains whitespace or control characters"),
        ("https://a.example/" + "x" * MAX_URL_LENGTH, BAD, f"url longer than {MAX_URL_LENGTH} characters"),
    ],
)
def test_bad_urls_in_every_format(url: str, code: ErrorCode, message: str) -> None:
    lines = {
        TXT: url.encode(),
        JSONL: json.dumps({"url": url}).encode(),
        CSV: b'url\n"' + url.replace('"', '""').encode() + b'"',
    }
    for fmt, data in lines.items():
        item = invalid(data, fmt)
        assert item.code is code, fmt
        assert message in item.message, (fmt, item.message)
        assert item.message.startswith(f"line {item.line}: ")


@pytest.mark.parametrize(
    "url",
    [
        "HTTPS://A.example/x.jpg",
        "https://a.example:8443/x.jpg?size=large#frag",
        "http://127.0.0.1/x.jpg",  # address policy is fetch.py's job, not the parser's
        "http://[2001:db8::1]:8080/x%25.jpg",  # an IPv6 literal without a zone; '%' in the path
        "s3://bkt/deep/key with%20escapes.jpg".replace(" ", "_"),
        "https://a.example/" + "x" * (MAX_URL_LENGTH - len("https://a.example/")),
    ],
)
def test_good_urls_pass(url: str) -> None:
    item = only(url.encode(), TXT)
    assert isinstance(item, ImageLine)
    assert item.url == url


# --- encoding, line endings, invalid bytes --------------------------------------------------


def test_bom_and_crlf_are_handled_in_every_format() -> None:
    cases = {
        TXT: b"https://a/1.jpg\r\n\r\nhttps://a/2.jpg\r\n",
        JSONL: b'{"url": "https://a/1.jpg"}\r\n\r\n{"url": "https://a/2.jpg"}\r\n',
        CSV: b"url\r\nhttps://a/1.jpg\r\n\r\nhttps://a/2.jpg\r\n",
    }
    for fmt, data in cases.items():
        plain = items(data, fmt)
        with_bom = run(b"\xef\xbb\xbf" + data, fmt)
        assert [item for item, _ in with_bom] == plain, fmt
        assert [item.url for item in plain if isinstance(item, ImageLine)] == [
            "https://a/1.jpg",
            "https://a/2.jpg",
        ]
        # the BOM is consumed bytes, so the final offset is the whole stream
        assert with_bom[-1][1].byte_offset == len(data) + 3


def test_bom_is_only_special_at_the_very_start() -> None:
    got = items(b"https://a/1.jpg\n\xef\xbb\xbfhttps://a/2.jpg\n", TXT)
    assert isinstance(got[0], ImageLine)
    assert isinstance(got[1], InvalidLine)


def test_invalid_utf8_line_is_one_invalid_item_and_the_next_line_parses() -> None:
    got = items(b"https://a/\xe9t\xe9.jpg\nhttps://a/ok.jpg\n", TXT)
    bad = got[0]
    assert isinstance(bad, InvalidLine)
    assert bad.code is BAD
    assert bad.message == "line 1: not valid UTF-8 (byte 0xe9 at 10)"
    assert bad.raw == "https://a/\ufffdt\ufffd.jpg"
    assert got[1] == ImageLine(index=1, line=2, url="https://a/ok.jpg", id=None, metadata=None)


def test_invalid_line_raw_is_truncated() -> None:
    item = invalid(b'{"url": 1, "pad": "' + b"p" * 1000 + b'"}', JSONL)
    assert len(item.raw) == 201
    assert item.raw.endswith("…")
    assert item.raw.startswith('{"url": 1')


# --- binary and gzip -----------------------------------------------------------------------


def test_binary_first_block_fails_before_any_item() -> None:
    png_like = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    stream = io.BytesIO(png_like)
    gen = iter_manifest(stream, TXT, False)
    with pytest.raises(ManifestError, match="manifest looks binary"):
        next(gen)


def test_nul_byte_on_a_later_line_fails_the_manifest_naming_the_line() -> None:
    data = b"https://a/1.jpg\n" * 5000 + b"https://a/\x00.jpg\n"  # well past the first block
    got: list[ManifestItem] = []
    with pytest.raises(ManifestError, match="NUL byte on line 5001"):
        for item, _ in iter_manifest(io.BytesIO(data), TXT, False):
            got.append(item)
    assert len(got) == 5000


def test_utf16_manifest_is_reported_as_binary() -> None:
    with pytest.raises(ManifestError, match="looks binary"):
        items("url\nhttps://a/1.jpg\n".encode("utf-16"), CSV)


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        (TXT, b"# c\nhttps://a/1.jpg\nftp://a/2\n\nhttps://a/3.jpg\n"),
        (JSONL, b'{"url": "https://a/1.jpg", "id": 1}\nnope\n{"url": "s3://b/k"}\n'),
        (CSV, b'url,id\n"https://a/1.jpg",x\n,y\nhttps://a/3.jpg,z\n'),
    ],
)
def test_gzip_gives_the_same_items_and_positions_as_plain(fmt: ManifestFormat, data: bytes) -> None:
    assert run(data, fmt, gzipped=True) == run(data, fmt)


def test_multi_member_gzip_is_read_whole() -> None:
    data = gzip.compress(b"https://a/1.jpg\n") + gzip.compress(b"https://a/2.jpg\n")
    got = list(iter_manifest(io.BytesIO(data), TXT, True))
    assert [item.url for item, _ in got if isinstance(item, ImageLine)] == [
        "https://a/1.jpg",
        "https://a/2.jpg",
    ]


@pytest.mark.parametrize(
    "blob",
    [
        b"https://a/1.jpg\n",  # not gzip at all
        gzip.compress(b"https://a/1.jpg\n" * 1000)[:-20],  # truncated
        gzip.compress(b"https://a/1.jpg\n")[:-8] + b"\x00\x00\x00\x00" + gzip.compress(b"x")[-4:],  # bad CRC
        gzip.compress(b"https://a/1.jpg\n")[:12] + b"\xff" * 40,  # corrupt deflate data
    ],
)
def test_corrupt_gzip_is_a_manifest_error(blob: bytes) -> None:
    with pytest.raises(ManifestError, match="not a valid gzip file"):
        list(iter_manifest(io.BytesIO(blob), TXT, True))


# --- limits --------------------------------------------------------------------------------


def test_max_lines_counts_items_not_ignored_lines() -> None:
    data = b"# comment\n\nhttps://a/1.jpg\nnot a url\n\nhttps://a/3.jpg\n"
    assert len(items(data, TXT, max_lines=3)) == 3
    with pytest.raises(ManifestError, match="manifest has more than 2 lines"):
        items(data, TXT, max_lines=2)


def test_max_lines_holds_across_a_resume() -> None:
    data = b"https://a/1.jpg\nhttps://a/2.jpg\nhttps://a/3.jpg\n"
    first, pos = run(data, TXT)[0]
    assert isinstance(first, ImageLine)
    with pytest.raises(ManifestError, match="more than 2 lines"):
        items(data, TXT, start=pos, max_lines=2)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b""])
def test_line_length_limit_is_exact(ending: bytes) -> None:
    def line(size: int) -> bytes:
        head, tail = b'{"url": "https://a/x.jpg", "pad": "', b'"}'
        return head + b"p" * (size - len(head) - len(tail)) + tail

    ok = only(line(MAX_LINE_BYTES) + ending, JSONL)
    assert isinstance(ok, ImageLine)
    assert ok.url == "https://a/x.jpg"
    item = invalid(line(MAX_LINE_BYTES + 1) + ending, JSONL)
    assert item.code is BAD
    assert item.message == f"line 1: line longer than {MAX_LINE_BYTES} bytes"


def test_line_length_limit_holds_when_a_read_ends_inside_the_line_ending() -> None:
    line = b"https://a/" + b"x" * (MAX_LINE_BYTES - len(b"https://a/"))
    for chunks in ([line + b"\r", b"\nhttps://a/2.jpg\n"], [line, b"\r\nhttps://a/2.jpg\n"]):
        got = list(iter_manifest(ChunkStream(iter(chunks)), TXT, False))
        first = got[0][0]
        assert isinstance(first, InvalidLine)
        assert "url longer than" in first.message  # the line itself was within the limit
        assert got[1][0] == ImageLine(index=1, line=2, url="https://a/2.jpg", id=None, metadata=None)


def test_nul_byte_inside_a_discarded_long_line_still_fails_the_manifest() -> None:
    data = b"https://a/1.jpg\n" * 5000 + b"y" * (300 * 1024) + b"\x00" + b"y" * 10 + b"\n"
    with pytest.raises(ManifestError, match="NUL byte on line 5001"):
        items(data, TXT)


def test_one_megabyte_line_is_skipped_with_bounded_memory_and_the_next_line_parses() -> None:
    big = b'{"url": "https://a/' + b"x" * (1024 * 1024) + b'"}'
    data = b'{"url": "https://a/0.jpg"}\n' + big + b'\r\n{"url": "https://a/2.jpg"}\n'
    stream = io.BytesIO(data)
    tracemalloc.start()
    try:
        got = list(iter_manifest(stream, JSONL, False))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 400 * 1024  # a few chunks, never the 1 MB line
    long_line = got[1][0]
    assert isinstance(long_line, InvalidLine)
    assert long_line.code is BAD
    assert long_line.message == f"line 2: line longer than {MAX_LINE_BYTES} bytes"
    assert long_line.raw.startswith('{"url": "https://a/xxx')
    assert len(long_line.raw) <= 201
    assert got[2] == (
        ImageLine(index=2, line=3, url="https://a/2.jpg", id=None, metadata=None),
        Position(index=3, line=3, byte_offset=len(data)),
    )


def test_huge_line_from_a_read_only_stream_is_consumed_in_bounded_reads() -> None:
    size = 64 * 1024 * 1024
    chunk = b"a" * (1024 * 1024)

    def chunks() -> Iterator[bytes]:
        yield b"https://a/0.jpg\n"
        for _ in range(size // len(chunk)):
            yield chunk
        yield b"\nhttps://a/2.jpg"  # last line without a newline

    stream = ChunkStream(chunks())
    tracemalloc.start()
    try:
        got = [item for item, _ in iter_manifest(stream, TXT, False)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024  # the test's own 1 MB chunk plus bounded parser state
    assert stream.largest_request <= 64 * 1024
    assert stream.bytes_read == 16 + size + 16
    assert [type(item) for item in got] == [ImageLine, InvalidLine, ImageLine]
    assert got[2] == ImageLine(index=2, line=3, url="https://a/2.jpg", id=None, metadata=None)


def test_long_comment_in_txt_is_still_a_comment() -> None:
    data = b"# " + b"c" * (MAX_LINE_BYTES * 3) + b"\nhttps://a/1.jpg\n"
    assert items(data, TXT) == [ImageLine(index=0, line=2, url="https://a/1.jpg", id=None, metadata=None)]


def test_overlong_last_line_without_newline() -> None:
    data = b"https://a/1.jpg\n" + b"y" * (MAX_LINE_BYTES * 10)
    got = run(data, TXT)
    assert isinstance(got[1][0], InvalidLine)
    assert got[1][1] == Position(index=2, line=2, byte_offset=len(data))


# --- positions and resuming ----------------------------------------------------------------

MIXED = {
    TXT: (
        b"\xef\xbb\xbf# list\r\nhttps://a/0.jpg\r\n\nftp://a/1\n"
        + b"z" * (MAX_LINE_BYTES + 5)
        + b"\n\xff\xfe\n  s3://b/4.jpg  \n# end\n\nhttps://a/5.jpg"
    ),
    JSONL: (
        b'\xef\xbb\xbf{"url": "https://a/0.jpg", "id": 0}\r\n\n[1]\n'
        + b'{"url": "'
        + b"z" * (MAX_LINE_BYTES * 2)
        + b'"}\n'
        + b'{"url": "s3://b/4.jpg", "metadata": {"m": 1}}\n\xc3\n\n{"url": "https://a/6.jpg"}\n'
    ),
    CSV: (
        b'\xef\xbb\xbf\n\n Url ,ID,note\r\n"https://a/0.jpg",0,"a, b"\r\n,1,x\n\n'
        + b"https://a/2.jpg,"
        + b"z" * (MAX_LINE_BYTES * 2)
        + b"\n"
        + b'https://a/3.jpg,3,"open\nhttps://a/5.jpg,5,y\n'
    ),
}


@pytest.mark.parametrize("fmt", list(ManifestFormat))
@pytest.mark.parametrize("gzipped", [False, True])
def test_resume_by_skipping_lines_matches_an_uninterrupted_run(fmt: ManifestFormat, gzipped: bool) -> None:
    data = MIXED[fmt]
    full = run(data, fmt, gzipped)
    assert [item.index for item, _ in full] == list(range(len(full)))
    assert len(full) >= 5
    for k in range(len(full) + 1):
        start = full[k - 1][1] if k else Position()
        start = Position.from_dict(json.loads(json.dumps(start.to_dict())))  # as a stored checkpoint
        assert full[:k] + run(data, fmt, gzipped, start=start) == full, k


@pytest.mark.parametrize("fmt", list(ManifestFormat))
def test_resume_at_byte_offset_matches_an_uninterrupted_run(fmt: ManifestFormat) -> None:
    data = MIXED[fmt]
    full = run(data, fmt)
    for k in range(len(full) + 1):
        start = full[k - 1][1] if k else Position()
        start = Position.from_dict(json.loads(json.dumps(start.to_dict())))
        ranged = io.BytesIO(data[start.byte_offset :])  # what an S3 Range GET would return
        rest = list(iter_manifest(ranged, fmt, False, start=start, stream_is_at_offset=True))
        assert full[:k] + rest == full, k


def test_positions_track_lines_and_decompressed_bytes() -> None:
    data = b"\n# c\nhttps://a/1.jpg\r\n\nhttps://a/2.jpg\n\n"
    got = run(data, TXT, gzipped=True)
    assert [pos for _, pos in got] == [
        Position(index=1, line=3, byte_offset=len(b"\n# c\nhttps://a/1.jpg\r\n")),
        Position(index=2, line=5, byte_offset=len(b"\n# c\nhttps://a/1.jpg\r\n\nhttps://a/2.jpg\n")),
    ]


def test_short_reads_give_the_same_result() -> None:
    for fmt, data in MIXED.items():
        stream = ChunkStream(iter([data]), max_read=7)
        assert list(iter_manifest(stream, fmt, False)) == run(data, fmt), fmt


def test_csv_resume_at_offset_takes_the_header_from_the_position_or_the_argument() -> None:
    data = b"id,URL\n1,https://a/1.jpg\n2,https://a/2.jpg\n"
    full = run(data, CSV)
    pos = full[0][1]
    assert pos.csv_header == ("id", "URL")
    tail = data[pos.byte_offset :]
    bare = Position(index=pos.index, line=pos.line, byte_offset=pos.byte_offset)
    with pytest.raises(ValueError, match="needs its header"):
        list(iter_manifest(io.BytesIO(tail), CSV, False, start=bare, stream_is_at_offset=True))
    given = list(
        iter_manifest(
            io.BytesIO(tail), CSV, False, start=bare, stream_is_at_offset=True, csv_header=["id", "URL"]
        )
    )
    assert [item for item, _ in given] == [item for item, _ in full[1:]]
    with pytest.raises(ManifestError, match="no 'url' column"):
        list(
            iter_manifest(
                io.BytesIO(tail), CSV, False, start=bare, stream_is_at_offset=True, csv_header=["id"]
            )
        )


def test_gzip_cannot_resume_at_a_byte_offset() -> None:
    with pytest.raises(ValueError, match="re-stream it from the start"):
        list(iter_manifest(io.BytesIO(b""), TXT, True, start=Position(1, 1, 10), stream_is_at_offset=True))


# --- metadata a result row could not carry, and manifest bombs ----------------------------------


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("fmt", [JSONL])
def test_metadata_depth_is_limited_at_parse_time(fmt: ManifestFormat) -> None:
    # DynamoDB refuses items nested over 32 levels; moto does not, so this must be caught here.
    line = {"url": "https://a.example/x.jpg", "id": "deep", "metadata": _nested(17)}
    bad = invalid(json.dumps(line).encode(), fmt)
    assert (bad.code, bad.id) == (BAD, "deep")
    assert bad.message == 'line 1: "metadata" is nested more than 16 levels deep'
    deep_list = {"url": "https://a.example/x.jpg", "metadata": {"k": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}}
    assert isinstance(only(json.dumps(deep_list).encode(), fmt), InvalidLine)
    ok = {"url": "https://a.example/x.jpg", "metadata": _nested(16)}
    assert isinstance(only(json.dumps(ok).encode(), fmt), ImageLine)


def test_metadata_size_is_limited_at_parse_time() -> None:
    # 2,100 two-byte characters: 4.2 KB of UTF-8 on a line well under MAX_LINE_BYTES.
    big = json.dumps({"url": "https://a.example/x.jpg", "metadata": {"note": "é" * 2100}}, ensure_ascii=False)
    assert "over the 4096-byte limit" in invalid(big.encode(), JSONL).message
    fits = json.dumps(
        {"url": "https://a.example/x.jpg", "metadata": {"note": "é" * 2000}}, ensure_ascii=False
    )
    assert isinstance(only(fits.encode(), JSONL), ImageLine)
    wide_csv = b"url,note\nhttps://a.example/x.jpg," + b"n" * 4100 + b"\n"
    assert "over the 4096-byte limit" in invalid(wide_csv, CSV).message


def test_blank_lines_count_toward_the_physical_line_cap() -> None:
    data = b"https://a.example/1.jpg\n" + b"\n" * 1000 + b"# comment\n" * 1000
    assert len(items(data, TXT, True, max_physical_lines=2001)) == 1
    with pytest.raises(ManifestError, match="more than 2000 lines"):
        items(data, TXT, True, max_physical_lines=2000)


def test_decompressed_bytes_are_capped() -> None:
    data = b"https://a.example/1.jpg\n" + b"\n" * 200_000
    with pytest.raises(ManifestError, match="larger than 100000 bytes"):
        items(data, TXT, True, max_bytes=100_000)
    assert len(items(data, TXT, True, max_bytes=len(data))) == 1


def test_tick_runs_every_so_many_physical_lines_with_a_resumable_position() -> None:
    data = b"https://a.example/1.jpg\n" + b"\n" * 25_000 + b"https://a.example/2.jpg\n"
    ticks: list[Position] = []
    got = items(data, TXT, tick=ticks.append)
    assert len(got) == 2
    assert [(p.index, p.line, p.byte_offset) for p in ticks] == [
        (1, 9_999, 24 + 9_998),
        (1, 19_999, 24 + 19_998),
    ]
    resumed = list(
        iter_manifest(
            io.BytesIO(data[ticks[0].byte_offset :]), TXT, False, start=ticks[0], stream_is_at_offset=True
        )
    )
    assert [item for item, _ in resumed] == got[1:]
