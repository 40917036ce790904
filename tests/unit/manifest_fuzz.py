"""The manifest path under arbitrary input, for hypothesis: random bytes, unicode (lone
surrogates included, as JSON escapes), JSON shapes and numbers of every range and precision, CSV
quoting and sizes, CRLF, BOMs, gzip (corrupt too), through the real Splitter (fakes for AWS) and
the row encoding predict uses.

The property (``check``): nothing escapes ``split``; either the job is split and every line that
carries an item (the oracle below, written from the manifest contract, not from the parser) is
exactly one work item, in order, each message within SQS's size and each row one DynamoDB
accepts, or the job ends FAILED with a reason and a summary. Used by
tests/unit/test_manifest_fuzz.py (a few hundred examples) and benchmarks/manifest_fuzz.py (the
long run).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass

from hypothesis import strategies as st

from batchpredict.jobs import JobStatus, to_dynamo
from batchpredict.manifest import MAX_LINE_BYTES, check_url
from batchpredict.messages import SQS_MAX_MESSAGE_BYTES, Chunk
from batchpredict.records import ImageInfo, Prediction, ResultError, ResultRecord
from batchpredict.results import summary_key
from batchpredict.writer import storable
from tests.unit.test_pipeline_split import IN, OUT, WORK_URL, Stack, job_of, s3_event

SQS_MAX_BATCH_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"

# --- strategies ------------------------------------------------------------------------------

_URLS = st.one_of(
    st.sampled_from(
        [
            "https://img.example/a.jpg",
            "http://img.example:8080/b.png?x=1#f",
            "s3://bucket/key.jpg",
            "ftp://img.example/c.jpg",
            "img.example/no-scheme.jpg",
            "https://[::1]:99999/",
            "https://[fe80::1%25eth0]/x",
            "s3://bucket/",
            "https://",
            "",
            " https://img.example/padded.jpg ",
            "https://img.example/" + "a" * 2100,
            "https://img.example/\u00e9\U0001f600.jpg",
        ]
    ),
    st.text(max_size=40),
    st.text(max_size=30).map(lambda s: "https://img.example/" + s),
)
_ESCAPES = st.sampled_from(
    ["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\ud83d", "\\u0000", "\\u0001", "\\u001f", '\\"', "\\\\", "\\/"]
)
# Number tokens as text, of every range and precision (json.dumps could never write 1e400).
_NUMBERS = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,45})(\.[0-9]{1,45})?([eE][+-]?[0-9]{1,4})?", fullmatch=True),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "0.0", "1e-400", "1e126", "1e-130"]),
)


@st.composite
def _json_string(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(st.one_of(st.text(max_size=12).map(lambda s: json.dumps(s)[1:-1]), _ESCAPES), max_size=6)
    )
    return '"' + "".join(parts) + '"'


def _json_value(max_leaves: int = 12) -> st.SearchStrategy[str]:
    scalars = st.one_of(_json_string(), _NUMBERS, st.sampled_from(["true", "false", "null"]))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
            st.lists(st.tuples(_json_string(), inner), max_size=4).map(
                lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}"
            ),
        ),
        max_leaves=max_leaves,
    )


@st.composite
def _jsonl_line(draw: st.DrawFn) -> str:
    fields = []
    if draw(st.booleans()) or draw(st.booleans()):
        fields.append('"url":' + draw(st.one_of(_URLS.map(json.dumps), _json_string(), _json_value(3))))
    if draw(st.booleans()):
        fields.append('"id":' + draw(st.one_of(_json_string(), _NUMBERS, _json_value(3))))
    if draw(st.booleans()):
        fields.append('"metadata":' + draw(_json_value()))
    if draw(st.booleans()):
        fields.append(draw(_json_string()) + ":" + draw(_json_value(4)))
    line = "{" + ",".join(fields) + "}"
    return draw(st.one_of(st.just(line), _json_value(), st.just(line[: draw(st.integers(0, len(line)))])))


def _csv_field(text: str, quote: bool) -> str:
    return '"' + text.replace('"', '""') + '"' if quote else text


@st.composite
def _csv_line(draw: st.DrawFn, columns: int) -> str:
    values = draw(st.lists(st.one_of(_URLS, st.text(max_size=20)), min_size=0, max_size=columns + 1))
    if draw(st.integers(0, 9)) == 0:  # a long field: control characters, backslashes, quotes
        char = draw(st.sampled_from(["\x01", "\\", '"', "a", "\u00e9", "\U0001f600"]))
        values.append(char * draw(st.integers(100, MAX_LINE_BYTES)))
    return ",".join(_csv_field(v, draw(st.booleans())) for v in values)


_HEADERS = st.sampled_from(["url", "url,id", "id,url,caption", "URL , Id,note", "name,id", "url,url", ""])


@st.composite
def _txt_line(draw: st.DrawFn) -> str:
    return draw(st.one_of(_URLS, st.just("# comment"), st.text(max_size=30)))


@dataclass(frozen=True)
class FuzzManifest:
    key: str
    data: bytes  # as uploaded (gzipped when the key ends in .gz)
    plain: bytes  # the decompressed text
    chunk_size: int


@st.composite
def manifests(draw: st.DrawFn) -> FuzzManifest:
    fmt = draw(st.sampled_from(["txt", "jsonl", "csv"]))
    if fmt == "csv":
        header = draw(_HEADERS)
        columns = header.count(",") + 1
        body = [header, *draw(st.lists(_csv_line(columns), max_size=12))]
    else:
        body = draw(st.lists(_jsonl_line() if fmt == "jsonl" else _txt_line(), max_size=12))
    lines = [line.encode("utf-8", "surrogatepass") for line in body]
    # Raw bytes anywhere: invalid UTF-8, NUL, lone CR, whitespace, an overlong line.
    for _ in range(draw(st.integers(0, 3))):
        junk = draw(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from([b"", b"   ", b"\r", b"\x00", b"\xff\xfe", b"#" + b"x" * 9000, b"y" * 9000]),
            )
        )
        lines.insert(draw(st.integers(0, len(lines))), junk)
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    plain = ending.join(lines) + draw(st.sampled_from([b"", ending]))
    if draw(st.booleans()):
        plain = _BOM + plain
    gzipped = draw(st.booleans())
    data = gzip.compress(plain) if gzipped else plain
    if gzipped and draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(1, len(data) - 1))]  # truncated: the manifest is unreadable
    key = f"manifests/fuzz.{fmt}" + (".gz" if gzipped else "")
    return FuzzManifest(key, data, plain, draw(st.integers(1, 25)))


# --- the oracle ------------------------------------------------------------------------------


def expected_items(manifest: FuzzManifest) -> int:
    """How many items the manifest contract promises: one per physical line that is not blank, a
    ``#`` comment of a .txt, or a CSV's header row (the first non-blank line)."""
    plain = manifest.plain.removeprefix(_BOM)
    physical = plain.split(b"\n")
    if physical and physical[-1] == b"":
        physical.pop()  # the text ends with a line ending
    fmt = manifest.key.split(".")[1]
    header_seen = fmt != "csv"
    count = 0
    for raw in physical:
        line = raw.removesuffix(b"\r")
        if len(line) > MAX_LINE_BYTES:
            if fmt == "txt" and line.lstrip().startswith(b"#"):
                continue
            if not header_seen:
                return -1  # an overlong header row: the manifest is refused
            count += 1
            continue
        if not header_seen:
            header_seen = bool(line.strip())
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            count += 1
            continue
        if not text.strip() or (fmt == "txt" and text.strip().startswith("#")):
            continue
        count += 1
    return count


# --- the property ----------------------------------------------------------------------------


def _row_ok(job_id: str, item_record: ResultRecord) -> None:
    """What predict's writer does with a line's record: the part line and the IMG# row."""
    record = storable(item_record)
    json.dumps(record.to_json(), ensure_ascii=False).encode("utf-8")
    to_dynamo(record.to_item() | {"expires_at": 2**40})


def _records(job_id: str, chunk: Chunk) -> list[ResultRecord]:
    prediction = (Prediction(1, 0, "n01440764", "tench", 0.5),)
    records = []
    for item in chunk.items:
        if item.error is not None:
            error = ResultError(item.error["code"], item.error["message"])
            records.append(ResultRecord.for_item(job_id, item, model="m", error=error))
        else:
            assert item.url is not None and check_url(item.url) is None, item
            info = ImageInfo(1, 1, 1, "0" * 64, "png")
            records.append(ResultRecord.for_item(job_id, item, model="m", predictions=prediction, image=info))
    return records


def check(manifest: FuzzManifest) -> str:
    """Split ``manifest`` and assert the property; returns the outcome ("split" or "failed")."""
    stack = Stack(manifest.chunk_size, payload_limit=SQS_MAX_BATCH_BYTES)
    stack.s3.add(IN, manifest.key, manifest.data)
    (outcome,) = stack.handle(s3_event(manifest.key))  # anything raised here escaped split
    job_id = job_of(manifest.key)
    job = stack.jobs.jobs[job_id]
    if outcome.action == "failed":
        assert job.status == JobStatus.FAILED and job.error, job
        assert json.loads(stack.s3.objects[OUT][summary_key(job_id)])["error"] == job.error
        return "failed"
    assert outcome.action == "split", outcome
    bodies = stack.sqs.delivered[WORK_URL]
    for body in bodies:
        assert len(body.encode("utf-8")) <= SQS_MAX_MESSAGE_BYTES
    chunks = sorted((Chunk.parse(body) for body in bodies), key=lambda c: c.chunk)
    indexes = [item.index for chunk in chunks for item in chunk.items]
    assert indexes == list(range(job.total)), indexes
    assert job.total == expected_items(manifest), (job.total, expected_items(manifest))
    assert job.chunks_total == len(chunks)
    for chunk in chunks:
        assert len(chunk.items) <= manifest.chunk_size
        for record in _records(job_id, chunk):
            _row_ok(job_id, record)
    return "split"
