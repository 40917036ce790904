"""Stream a manifest of image URLs, one item per line, without holding the file in memory.

Pure logic: the caller hands in a binary stream (a boto3 ``StreamingBody``, ``open(path, "rb")``,
``io.BytesIO``) that only needs ``read(n)``. Lines are read in bounded chunks, so memory stays
bounded however large the manifest or any single line is.

Every non-ignored physical line becomes exactly one item (an :class:`ImageLine` or an
:class:`InvalidLine`) with consecutive indexes 0, 1, 2, ...; ignored lines (blank lines, ``#``
comments in ``.txt``, the CSV header row) get no index. A bad line never stops the stream: only a
manifest that cannot be read at all raises :class:`ManifestError`.

Each item is yielded with the :class:`Position` just after it, a checkpoint the caller can store
and hand back as ``start`` to continue later, either by re-streaming from the beginning (the
parser skips the consumed lines; works for gzip) or with a stream that already begins at
``Position.byte_offset`` (an S3 Range GET on a plain object). A CSV checkpoint carries the header
row (``Position.csv_header``), so a continuation that starts mid-file needs nothing else.

Format notes: CSV uses the default (excel) dialect, comma-delimited; a quoted field may contain
commas and doubled quotes but not a line break (each physical line is parsed on its own, so such
a row becomes invalid lines). Leading and trailing whitespace around a URL is ignored in every
format. Only ``\\n`` and ``\\r\\n`` end a line.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import urlsplit

from batchpredict.errors import ErrorCode
from batchpredict.records import PREVIEW_CHARS

MAX_LINE_BYTES = 8192
MAX_URL_LENGTH = 2048
ALLOWED_SCHEMES = ("https", "http", "s3")

# Metadata is stored in every result row: DynamoDB refuses items nested more than 32 levels
# deep, and a row must stay far below its 400 KB item limit.
MAX_METADATA_DEPTH = 16
MAX_METADATA_BYTES = 4096  # compact UTF-8 JSON
# Every this many physical lines (blank and comment lines included) the caller's ``tick`` runs,
# so a run of lines that yield no item still lets the caller check its remaining time.
TICK_EVERY_LINES = 10_000
RAW_PREVIEW_CHARS = PREVIEW_CHARS  # InvalidLine.raw keeps this much of the line for the error report
_CHUNK_BYTES = 64 * 1024
_BOM = b"\xef\xbb\xbf"
_BAD_URL_CHARS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")  # \s is Unicode-aware for str patterns
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "txt"}


class ManifestFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    TXT = "txt"


class ManifestError(Exception):
    """The manifest as a whole cannot be read (binary, corrupt gzip, no CSV url column, too long)."""


class ByteStream(Protocol):
    """What the parser needs from a stream: ``BinaryIO``, ``GzipFile`` and ``StreamingBody`` fit."""

    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class ImageLine:
    index: int
    line: int
    url: str
    id: str | None
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
class InvalidLine:
    index: int
    line: int
    raw: str
    code: ErrorCode
    message: str
    id: str | None = None  # the caller's key, when the line got far enough to have one


ManifestItem = ImageLine | InvalidLine


@dataclass(frozen=True)
class Position:
    """Where to resume: everything before this point has been handed out.

    ``line`` counts physical lines consumed (the next line is ``line + 1``); ``byte_offset``
    counts bytes of the decompressed stream consumed, BOM included. ``csv_header`` is the CSV
    header row once it has been read, so a mid-file continuation does not need to re-read it.
    """

    index: int = 0
    line: int = 0
    byte_offset: int = 0
    csv_header: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for a checkpoint stored in a message or a table."""
        return {
            "index": self.index,
            "line": self.line,
            "byte_offset": self.byte_offset,
            "csv_header": list(self.csv_header) if self.csv_header is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Position:
        header = data.get("csv_header")
        return cls(
            index=int(data["index"]),
            line=int(data["line"]),
            byte_offset=int(data["byte_offset"]),
            csv_header=tuple(str(name) for name in header) if header is not None else None,
        )


def detect_format(key: str) -> tuple[ManifestFormat, bool]:
    """Return ``(format, gzipped)`` from an object key's extension (case-insensitive)."""
    name = key.lower()
    gzipped = name.endswith(".gz")
    if gzipped:
        name = name[: -len(".gz")]
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return ManifestFormat(fmt), gzipped
    raise ManifestError(
        f"unsupported manifest extension in {key!r}: expected .jsonl, .ndjson, .csv or .txt, optionally .gz"
    )


def check_url(url: str) -> tuple[ErrorCode, str] | None:
    """Why ``url`` cannot be fetched, as ``(code, message)``, or ``None`` when it looks fetchable."""
    if not url:
        return ErrorCode.INVALID_MANIFEST_LINE, "empty url"
    if len(url) > MAX_URL_LENGTH:
        return ErrorCode.INVALID_MANIFEST_LINE, f"url longer than {MAX_URL_LENGTH} characters"
    if _BAD_URL_CHARS.search(url):
        return ErrorCode.INVALID_MANIFEST_LINE, "url contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError as exc:
        return ErrorCode.INVALID_URL, f"url cannot be parsed: {exc}"
    if not parts.scheme:
        return ErrorCode.INVALID_MANIFEST_LINE, "url has no scheme (expected https://, http:// or s3://)"
    if parts.scheme not in ALLOWED_SCHEMES:  # urlsplit lowercases the scheme
        allowed = ", ".join(ALLOWED_SCHEMES)
        return ErrorCode.UNSUPPORTED_SCHEME, f"unsupported scheme {parts.scheme!r} (allowed: {allowed})"
    if parts.scheme == "s3":
        if not parts.netloc or not parts.path.lstrip("/"):
            return ErrorCode.INVALID_URL, "s3 url needs a bucket and a key: s3://bucket/key"
    elif not parts.hostname:
        return ErrorCode.INVALID_URL, "url has no host"
    elif "[" in parts.netloc and "%" in parts.hostname:
        # fe80::1%eth0 names an interface of whichever machine reads it; the fetcher refuses it.
        return ErrorCode.INVALID_URL, "url has an IPv6 zone id"
    elif port == 0:
        return ErrorCode.INVALID_URL, "url cannot be parsed: port 0"
    return None


def iter_manifest(
    stream: ByteStream,
    fmt: ManifestFormat,
    gzipped: bool,
    *,
    start: Position = Position(),  # frozen, so a shared default is safe
    stream_is_at_offset: bool = False,
    max_lines: int = 1_000_000,
    max_physical_lines: int | None = None,
    max_bytes: int | None = None,
    csv_header: list[str] | None = None,
    tick: Callable[[Position], None] | None = None,
) -> Iterator[tuple[ManifestItem, Position]]:
    """Yield ``(item, position after item)`` for every manifest line from ``start`` on.

    Caps: ``max_lines`` items; ``max_physical_lines`` lines of any kind (blank lines and
    comments count: a gzip of newlines expands ~1000-fold); ``max_bytes`` of the decompressed
    stream. Past a cap the manifest as a whole is refused (ManifestError). ``tick(position)``
    runs every TICK_EVERY_LINES physical lines, with the position after the line before (or
    ``start``, while lines consumed before ``start`` are re-read); it may raise to stop the
    stream (the caller's own exception passes through).

    ``stream_is_at_offset``: the stream already begins at ``start.byte_offset`` (plain objects
    only); otherwise the stream begins at the start of the manifest and the first ``start.line``
    lines are skipped. ``csv_header`` overrides ``start.csv_header`` for a mid-file CSV
    continuation; it is ignored whenever the stream itself includes the header row.

    Raises
    ------
    ManifestError
        The manifest cannot be read as a whole; raised lazily, possibly after some items.
    ValueError
        The resume arguments do not fit together.
    """
    at_offset = stream_is_at_offset and start.line > 0
    if at_offset and gzipped:
        raise ValueError("a gzip manifest cannot be resumed at a byte offset: re-stream it from the start")
    header = _resume_header(fmt, start, csv_header) if at_offset else None
    reader = _LineReader(
        _open(stream, gzipped),
        offset=start.byte_offset if at_offset else 0,
        line=start.line if at_offset else 0,
        max_lines=max_physical_lines,
        max_bytes=max_bytes,
    )
    parser = _CsvParser(header) if fmt is ManifestFormat.CSV else None
    index = start.index
    for raw in reader:
        if tick is not None and raw.number % TICK_EVERY_LINES == 0:
            header = parser.header if parser else None
            if raw.number - 1 <= start.line:
                tick(start)  # still re-reading (gzip) what an earlier call consumed: no progress yet
            elif parser is None or header is not None:  # a CSV continuation needs its header
                tick(Position(index, raw.number - 1, raw.start_offset, header))
        if parser is not None and parser.wants_header(raw):
            parser.read_header(raw)
            continue
        if raw.number <= start.line:  # consumed before the checkpoint
            continue
        item = _parse(raw, index, fmt, parser)
        if item is None:
            continue
        if index >= max_lines:
            raise ManifestError(f"manifest has more than {max_lines} lines")
        index += 1
        yield item, Position(index, raw.number, raw.end_offset, parser.header if parser else None)


def _resume_header(
    fmt: ManifestFormat, start: Position, csv_header: list[str] | None
) -> tuple[str, ...] | None:
    if fmt is not ManifestFormat.CSV:
        return None
    header = tuple(csv_header) if csv_header is not None else start.csv_header
    if header is None:
        raise ValueError("resuming a CSV manifest at a byte offset needs its header (Position.csv_header)")
    return header


# --- reading physical lines ---------------------------------------------------------------


@dataclass(frozen=True)
class _RawLine:
    number: int  # 1-based physical line number
    data: bytes  # without the line ending; only a preview when ``overlong``
    overlong: bool
    start_offset: int  # stream offset of this line's first byte
    end_offset: int  # stream offset just after this line's ending


class _GzipSource:
    """Decompress as we read; a corrupt or truncated gzip becomes a ManifestError."""

    def __init__(self, stream: ByteStream) -> None:
        # typeshed asks for seek() too, but GzipFile never calls it when only reading forward
        self._gzip = gzip.GzipFile(fileobj=cast(BinaryIO, stream), mode="rb")

    def read(self, size: int, /) -> bytes:
        try:
            return self._gzip.read(size)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # bad header or CRC, truncated, bad data
            raise ManifestError(f"manifest is not a valid gzip file: {exc}") from exc


def _open(stream: ByteStream, gzipped: bool) -> ByteStream:
    return _GzipSource(stream) if gzipped else stream


class _LineReader:
    """Split a byte stream into lines while holding at most ~MAX_LINE_BYTES + one chunk.

    A line longer than MAX_LINE_BYTES is consumed chunk by chunk and discarded, keeping only a
    preview for the error report.
    """

    def __init__(
        self,
        source: ByteStream,
        *,
        offset: int,
        line: int,
        max_lines: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self._source = source
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._read = offset  # bytes of the (decompressed) stream read so far
        self._buf = b""
        self._pos = 0  # start of unconsumed data in _buf; avoids re-slicing the buffer per line
        self._eof = False
        self._sniff = offset == 0  # only the start of a manifest is sniffed for binary content
        self.offset = offset
        self.line = line

    def __iter__(self) -> Iterator[_RawLine]:
        while (raw := self._next()) is not None:
            yield raw

    def _next(self) -> _RawLine | None:
        while True:
            newline = self._buf.find(b"\n", self._pos)
            if newline >= 0:
                return self._emit(self._buf[self._pos : newline + 1])
            if len(self._buf) - self._pos > MAX_LINE_BYTES + 1:  # too long even if "\r\n" follows
                return self._discard_long_line()
            if not self._fill():
                rest = self._buf[self._pos :]
                return self._emit(rest) if rest else None

    def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = self._source.read(_CHUNK_BYTES)
        if not chunk:
            self._eof = True
            return False
        self._read += len(chunk)
        if self._max_bytes is not None and self._read > self._max_bytes:
            raise ManifestError(f"manifest is larger than {self._max_bytes} bytes (decompressed)")
        if self._sniff:
            self._sniff = False
            if b"\0" in chunk:
                raise ManifestError(
                    "manifest looks binary (NUL bytes in its first block); expected UTF-8 text"
                )
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    def _emit(self, line: bytes) -> _RawLine:
        self._pos += len(line)
        end = self.offset + len(line)
        content = line.removesuffix(b"\n").removesuffix(b"\r")
        self._check_text(content)
        if self.offset == 0:  # a BOM can only be at the very start
            content = content.removeprefix(_BOM)
        start = self.offset
        self.offset = end
        self._count_line()
        overlong = len(content) > MAX_LINE_BYTES
        preview = content[: RAW_PREVIEW_CHARS * 4] if overlong else content
        return _RawLine(self.line, preview, overlong, start, end)

    def _count_line(self) -> None:
        self.line += 1
        if self._max_lines is not None and self.line > self._max_lines:
            raise ManifestError(
                f"manifest has more than {self._max_lines} lines (blank lines and comments included)"
            )

    def _discard_long_line(self) -> _RawLine:
        preview = self._buf[self._pos : self._pos + RAW_PREVIEW_CHARS * 4]
        consumed = 0
        while True:
            newline = self._buf.find(b"\n", self._pos)
            stop = newline + 1 if newline >= 0 else len(self._buf)
            self._check_text(self._buf[self._pos : stop])
            consumed += stop - self._pos
            self._pos = stop
            if newline >= 0 or not self._fill():
                break
        if self.offset == 0:
            preview = preview.removeprefix(_BOM)
        start = self.offset
        self.offset += consumed
        self._count_line()
        return _RawLine(self.line, preview, True, start, self.offset)

    def _check_text(self, data: bytes) -> None:
        if b"\0" in data:
            raise ManifestError(
                f"manifest looks binary (NUL byte on line {self.line + 1}); expected UTF-8 text"
            )


# --- parsing one line ----------------------------------------------------------------------


def _parse(
    raw: _RawLine, index: int, fmt: ManifestFormat, csv_parser: _CsvParser | None
) -> ManifestItem | None:
    """One physical line → an item, or ``None`` for a line that carries no item."""
    if raw.overlong:
        if fmt is ManifestFormat.TXT and raw.data.lstrip().startswith(b"#"):
            return None  # a long comment is still a comment
        return _invalid(raw, index, _preview(raw.data), f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        text = raw.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw.data[exc.start]
        return _invalid(raw, index, _preview(raw.data), f"not valid UTF-8 (byte 0x{bad:02x} at {exc.start})")
    if not text.strip():
        return None
    if fmt is ManifestFormat.TXT:
        return _parse_txt(raw, index, text)
    if fmt is ManifestFormat.JSONL:
        return _parse_jsonl(raw, index, text)
    assert csv_parser is not None
    return csv_parser.parse(raw, index, text)


def _parse_txt(raw: _RawLine, index: int, text: str) -> ManifestItem | None:
    url = text.strip()
    if url.startswith("#"):
        return None
    return _image(raw, index, text, url, None, None)


def _parse_jsonl(raw: _RawLine, index: int, text: str) -> ManifestItem:
    try:
        obj = json.loads(
            text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_storable_int
        )
    except ValueError as exc:  # JSONDecodeError, or a non-finite number
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return _invalid(raw, index, text, f"not valid JSON: {reason}")
    except RecursionError:
        return _invalid(raw, index, text, "not valid JSON: nested too deeply")
    if not isinstance(obj, dict):
        return _invalid(raw, index, text, f"expected a JSON object, got {_json_type(obj)}")
    if "\\u" in text and (surrogate := _lone_surrogate(obj)) is not None:
        # json.loads accepts "\ud800", but no UTF-8 text (a message, a row, a file) can carry it.
        return _invalid(raw, index, text, f"not valid JSON text: lone surrogate \\u{surrogate:04x}")
    if "url" not in obj:
        return _invalid(raw, index, text, 'missing "url"')
    url, item_id, metadata = obj["url"], obj.get("id"), obj.get("metadata")
    if not isinstance(url, str):
        return _invalid(raw, index, text, f'"url" must be a string, got {_json_type(url)}')
    if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, str | int | float)):
        return _invalid(raw, index, text, f'"id" must be a string or a number, got {_json_type(item_id)}')
    if metadata is not None and not isinstance(metadata, dict):
        return _invalid(raw, index, text, f'"metadata" must be an object, got {_json_type(metadata)}')
    return _image(raw, index, text, url.strip(), _id(item_id), metadata)


def _lone_surrogate(value: Any) -> int | None:
    """The first lone surrogate (U+D800..U+DFFF) in any key or string of ``value``, or None."""
    pending = [value]
    while pending:  # a walk, not recursion: json.loads accepts nesting deeper than dumps would
        node = pending.pop()
        if isinstance(node, dict):
            pending.extend(node.keys())
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError as exc:
                return ord(node[exc.start])
    return None


def _reject_constant(name: str) -> Any:
    # NaN/Infinity are not JSON, and neither the result JSONL nor DynamoDB could carry them.
    raise ValueError(f"{name} is not allowed")


# DynamoDB numbers: up to 38 significant digits, magnitude 1e-130 .. 1e126. A record that
# carries any other number cannot be written, so such a line is refused here, up front.
_DYNAMODB_MAX_DIGITS = 38
_DYNAMODB_MIN_MAGNITUDE = 1e-130
_DYNAMODB_MAX_MAGNITUDE = 1e126


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise ValueError(f"number {text} is out of range")
    if value and not _DYNAMODB_MIN_MAGNITUDE <= abs(value) < _DYNAMODB_MAX_MAGNITUDE:
        raise ValueError(f"number {text} is outside the range DynamoDB can store")
    return value


def _storable_int(text: str) -> int:
    if len(text.lstrip("-")) > _DYNAMODB_MAX_DIGITS:
        raise ValueError(f"number {text[:20]}... has more than {_DYNAMODB_MAX_DIGITS} digits")
    return int(text)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    names = {str: "string", int: "number", float: "number", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


class _CsvParser:
    """CSV rows keyed by the header row: ``url`` (required) and ``id`` (optional) columns,
    matched case-insensitively after trimming; every other named column goes into metadata."""

    def __init__(self, header: tuple[str, ...] | None) -> None:
        self.header: tuple[str, ...] | None = None
        self._url_col = ""
        self._id_col: str | None = None
        if header is not None:
            self._set_header(header)

    def wants_header(self, raw: _RawLine) -> bool:
        """The first non-blank line is the header row."""
        return self.header is None and bool(raw.overlong or raw.data.strip())

    def read_header(self, raw: _RawLine) -> None:
        if raw.overlong:
            raise ManifestError(f"CSV header row (line {raw.number}) is longer than {MAX_LINE_BYTES} bytes")
        try:
            fields = _csv_fields(raw.data.decode("utf-8"))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ManifestError(f"CSV header row (line {raw.number}) cannot be read: {exc}") from exc
        self._set_header(tuple(fields))

    def _set_header(self, header: tuple[str, ...]) -> None:
        header = tuple(name.strip() for name in header)
        url_col = _column(header, "url")
        if url_col is None:
            found = ", ".join(repr(name) for name in header)
            raise ManifestError(f"CSV header has no 'url' column (found: {found})")
        self._url_col, self._id_col, self.header = url_col, _column(header, "id"), header

    def parse(self, raw: _RawLine, index: int, text: str) -> ManifestItem:
        assert self.header is not None
        try:
            fields = _csv_fields(text)
        except csv.Error as exc:
            return _invalid(raw, index, text, f"not valid CSV: {exc}")
        if len(fields) > len(self.header):
            return _invalid(raw, index, text, f"{len(fields)} fields but the header has {len(self.header)}")
        row = dict(zip(self.header, fields, strict=False))  # a short row leaves trailing columns out
        url = row.get(self._url_col, "").strip()
        item_id = row.get(self._id_col) if self._id_col else None
        metadata = {
            name: value for name, value in row.items() if name and name not in (self._url_col, self._id_col)
        }
        return _image(raw, index, text, url, _id(item_id), metadata or None)


def _csv_fields(text: str) -> list[str]:
    # strict: an unbalanced quote (e.g. a field continued on the next line) is an error, not a guess
    return next(csv.reader([text], strict=True), [])


def _column(header: tuple[str, ...], wanted: str) -> str | None:
    """The header name of column ``wanted`` (case-insensitive); a duplicate would be ambiguous."""
    matches = [name for name in header if name.lower() == wanted]
    if len(matches) > 1:
        raise ManifestError(f"CSV header has more than one {wanted!r} column")
    return matches[0] if matches else None


# --- building items ----------------------------------------------------------------------


def _id(value: object) -> str | None:
    """A caller id as a string; an empty id counts as none."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    return text or None


def _image(
    raw: _RawLine, index: int, text: str, url: str, item_id: str | None, metadata: dict[str, Any] | None
) -> ManifestItem:
    problem = check_url(url)
    if problem is not None:
        code, message = problem
        return replace(_invalid(raw, index, url or text, message, code), id=item_id)
    if metadata is not None:
        reason = metadata_problem(metadata)
        if reason is not None:
            return replace(_invalid(raw, index, text, reason), id=item_id)
    return ImageLine(index=index, line=raw.number, url=url, id=item_id, metadata=metadata)


def metadata_problem(metadata: dict[str, Any]) -> str | None:
    """Why a line's metadata cannot travel in a result row, or None."""
    if _deeper_than(metadata, MAX_METADATA_DEPTH):
        return f'"metadata" is nested more than {MAX_METADATA_DEPTH} levels deep'
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        return f'"metadata" is {size} bytes as JSON, over the {MAX_METADATA_BYTES}-byte limit'
    return None


def _deeper_than(value: Any, limit: int) -> bool:
    """Objects and arrays nested more than ``limit`` levels (``value`` itself is level 1)."""
    level = [value]
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node if isinstance(node, list) else ())
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def _invalid(
    raw: _RawLine, index: int, text: str, message: str, code: ErrorCode = ErrorCode.INVALID_MANIFEST_LINE
) -> InvalidLine:
    if len(text) > RAW_PREVIEW_CHARS:
        text = text[:RAW_PREVIEW_CHARS] + "…"
    return InvalidLine(
        index=index, line=raw.number, raw=text, code=code, message=f"line {raw.number}: {message}"
    )


def _preview(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
