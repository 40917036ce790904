"""``${SAMPLES_URL}`` / ``${SAMPLES_S3}`` in a manifest, filled in by ``local run --serve``.

The manifest is handled as bytes, line by line, and a ``.gz`` one stays gzipped: any
format the splitter reads (``.jsonl``, ``.csv``, ``.txt``, each optionally ``.gz``, in any
encoding) passes through unchanged but for the placeholders, and is never held whole.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

PLACEHOLDERS = ("${SAMPLES_URL}", "${SAMPLES_S3}")


@contextmanager
def _open(path: Path, mode: str) -> Iterator[IO[bytes]]:
    with gzip.open(path, mode) if path.name.endswith(".gz") else path.open(mode) as fh:
        yield fh  # type: ignore[misc]


def uses_placeholders(manifest: Path) -> bool:
    """Whether any line holds a placeholder. An unreadable ``.gz`` holds none that can be
    filled: the pipeline itself reports it (the job fails naming the manifest)."""
    needles = [p.encode() for p in PLACEHOLDERS]
    try:
        with _open(manifest, "rb") as src:
            return any(needle in line for line in src for needle in needles)
    except (OSError, EOFError, zlib.error):
        return False


def expand(manifest: Path, values: dict[str, str], workdir: Path) -> Path:
    """MANIFEST with its placeholders replaced by VALUES (a copy in WORKDIR, same name), or
    MANIFEST itself when there is nothing to replace."""
    if not values or not uses_placeholders(manifest):
        return manifest
    replacements = [(k.encode(), v.encode()) for k, v in values.items()]
    expanded = workdir / manifest.name
    with _open(manifest, "rb") as src, _open(expanded, "wb") as dst:
        for line in src:
            filled = line
            for placeholder, value in replacements:
                filled = filled.replace(placeholder, value)
            dst.write(filled)
    return expanded
