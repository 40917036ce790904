"""`local run --serve` fills ${SAMPLES_URL}/${SAMPLES_S3} in every manifest format, gzipped or not."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from batchpredict.local.placeholders import expand, uses_placeholders
from batchpredict.manifest import detect_format

ROOT = Path(__file__).resolve().parents[2]
VALUES = {"${SAMPLES_URL}": "http://127.0.0.1:8765", "${SAMPLES_S3}": "s3://samples"}
SAMPLES = ["example.jsonl", "example.csv", "example.txt"]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


@pytest.mark.parametrize("sample", SAMPLES)
@pytest.mark.parametrize("gz", ["", ".gz"])
def test_every_format_is_filled_and_keeps_its_compression(sample: str, gz: str, tmp_path: Path) -> None:
    original = (ROOT / "sample_manifests" / sample).read_bytes()
    manifest = _write(tmp_path / f"{sample}{gz}", original)
    out = tmp_path / "out"
    out.mkdir()
    expanded = expand(manifest, VALUES, out)
    assert expanded == out / manifest.name and detect_format(expanded.name) == detect_format(manifest.name)
    expected = original
    for placeholder, value in VALUES.items():
        expected = expected.replace(placeholder.encode(), value.encode())
    assert _read(expanded) == expected and b"${SAMPLES" not in expected
    assert uses_placeholders(manifest) and not uses_placeholders(expanded)


def test_bytes_that_are_not_utf8_pass_through(tmp_path: Path) -> None:
    # The crash this fixes: the manifest was read as UTF-8 text. Latin-1 and gzip both broke it.
    data = "${SAMPLES_URL}/caf\xe9.jpg\n".encode("latin-1") + b"\xff\xfe\n"
    manifest = _write(tmp_path / "odd.txt.gz", data)
    out = tmp_path / "out"
    out.mkdir()
    assert _read(expand(manifest, VALUES, out)) == b"http://127.0.0.1:8765/caf\xe9.jpg\n\xff\xfe\n"


def test_nothing_to_fill_or_unreadable_returns_the_manifest_itself(tmp_path: Path) -> None:
    plain = _write(tmp_path / "urls.txt.gz", b"https://example.com/a.jpg\n")
    assert expand(plain, VALUES, tmp_path) == plain and not uses_placeholders(plain)
    with_placeholders = _write(tmp_path / "p.csv", b"url\n${SAMPLES_S3}/a.jpg\n")
    assert expand(with_placeholders, {}, tmp_path) == with_placeholders
    corrupt = tmp_path / "broken.jsonl.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    assert not uses_placeholders(corrupt) and expand(corrupt, VALUES, tmp_path) == corrupt
