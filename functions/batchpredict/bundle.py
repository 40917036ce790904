"""Model bundles: a folder (or S3 prefix) holding ``model.json`` and the files it lists.

``model.json`` describes everything the engine needs to run a checkpoint without
code changes: the files and their sha256, the input (shape, colour order,
preprocessing), the output (name, logits or probabilities) and the labels file.
This module does not import mxnet; ``model.py`` turns a verified bundle into an engine.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpredict.errors import BundleError
from batchpredict.images import Preprocess

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MANIFEST_NAME = "model.json"
SCHEMA_VERSION = 1
OUTPUT_KINDS = ("logits", "probabilities")


@dataclass(frozen=True)
class Label:
    wnid: str
    text: str


@dataclass(frozen=True)
class BundleSpec:
    """A verified bundle on local disk."""

    root: Path
    name: str
    version: str
    symbol_file: Path
    params_file: Path
    labels: tuple[Label, ...]
    input_name: str
    input_shape: tuple[int, int, int]
    preprocess: Preprocess
    output_name: str | None
    output_kind: str
    raw: dict[str, Any]

    @property
    def model_id(self) -> str:
        return f"{self.name}:{self.version}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _require(doc: dict[str, Any], key: str, where: str = MANIFEST_NAME) -> Any:
    if key not in doc:
        raise BundleError(f"{where}: missing required field {key!r}")
    return doc[key]


def _read_labels(path: Path, expected: int | None) -> tuple[Label, ...]:
    labels = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        wnid, _, text = line.strip().partition(" ")
        if not wnid or not text:
            raise BundleError(f"{path.name}:{number}: expected 'WNID label text', got {line!r}")
        labels.append(Label(wnid, text))
    if expected is not None and len(labels) != expected:
        raise BundleError(f"{path.name}: {len(labels)} labels, model.json says {expected}")
    return tuple(labels)


def verify_bundle(root: Path) -> BundleSpec:
    """Parse ``root/model.json``, check every listed file's sha256, read the labels."""
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: model.json not found")
    try:
        doc = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if doc.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise BundleError(f"{manifest_path}: unsupported schema_version {doc.get('schema_version')!r}")

    files: dict[str, Any] = _require(doc, "files")
    for role in ("symbol", "params", "labels"):
        name = _require(files, role, "model.json files")
        _require(name, "path", f"model.json files.{role}")
        _require(name, "sha256", f"model.json files.{role}")
    for role, entry in files.items():
        path = root / entry["path"]
        if not path.is_file():
            raise BundleError(f"{path.name}: listed as files.{role} in model.json but missing")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise BundleError(f"{path.name}: sha256 mismatch (expected {entry['sha256']}, got {actual})")

    inp = _require(doc, "input")
    pre = _require(doc, "preprocess")
    out = _require(doc, "output")
    kind = _require(out, "kind", "model.json output")
    if kind not in OUTPUT_KINDS:
        raise BundleError(f"model.json output.kind must be one of {OUTPUT_KINDS}, got {kind!r}")
    shape = tuple(int(v) for v in _require(inp, "shape", "model.json input"))
    if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2]:
        raise BundleError(f"model.json input.shape must be [3, N, N], got {list(shape)}")
    preprocess = Preprocess(
        resize_shorter=int(_require(pre, "resize_shorter", "model.json preprocess")),
        crop=shape[1],
        interpolation=str(pre.get("interpolation", "bicubic")),
        mean=_triple(pre.get("mean", (0.0, 0.0, 0.0)), "mean"),
        std=_triple(pre.get("std", (1.0, 1.0, 1.0)), "std"),
        color=str(inp.get("color", "RGB")),
    )
    return BundleSpec(
        root=root,
        name=str(_require(doc, "name")),
        version=str(_require(doc, "version")),
        symbol_file=root / files["symbol"]["path"],
        params_file=root / files["params"]["path"],
        labels=_read_labels(root / files["labels"]["path"], out.get("classes")),
        input_name=str(inp.get("name", "data")),
        input_shape=(shape[0], shape[1], shape[2]),
        preprocess=preprocess,
        output_name=out.get("name"),
        output_kind=kind,
        raw=doc,
    )


def _triple(values: Any, field: str) -> tuple[float, float, float]:
    if len(values) != 3:
        raise BundleError(f"model.json preprocess.{field} must have 3 values, got {values!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise BundleError(f"not an s3:// URI: {uri!r}")
    return bucket, key


def cache_dir_for(uri: str, cache_root: Path | None = None) -> Path:
    root = cache_root or Path(tempfile.gettempdir()) / "batchpredict-models"
    return root / hashlib.sha256(uri.encode()).hexdigest()[:16]


def fetch_bundle(uri: str, s3_client_factory: Callable[[], S3Client], cache_root: Path | None = None) -> Path:
    """Download an ``s3://bucket/prefix`` bundle into a local cache folder (files already
    there with the right hash are kept), returning the folder to verify."""
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    target = cache_dir_for(uri, cache_root)
    target.mkdir(parents=True, exist_ok=True)
    client = s3_client_factory()
    manifest = target / MANIFEST_NAME
    _download(client, bucket, prefix + MANIFEST_NAME, manifest, uri)
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError) as exc:
        raise BundleError(f"{uri}/model.json: unreadable ({exc})") from exc
    for entry in files.values():
        local = target / entry["path"]
        if local.is_file() and sha256_file(local) == entry.get("sha256"):
            continue
        _download(client, bucket, prefix + entry["path"], local, uri)
    return target


def _download(client: S3Client, bucket: str, key: str, dest: Path, uri: str) -> None:
    from botocore.exceptions import ClientError

    partial = dest.with_suffix(dest.suffix + ".part")
    try:
        client.download_file(bucket, key, str(partial))
    except ClientError as exc:
        raise BundleError(f"{uri}: cannot download s3://{bucket}/{key} ({exc})") from exc
    partial.replace(dest)


def resolve_bundle(
    uri: str, s3_client_factory: Callable[[], S3Client] | None = None, cache_root: Path | None = None
) -> BundleSpec:
    """Verified bundle from a local folder or an ``s3://`` prefix."""
    if uri.startswith("s3://"):
        if s3_client_factory is None:
            raise BundleError(f"{uri}: an S3 client is needed to load a bundle from S3")
        return verify_bundle(fetch_bundle(uri, s3_client_factory, cache_root))
    root = Path(uri.removeprefix("file://"))
    if not root.is_dir():
        raise BundleError(f"{root}: model bundle folder not found")
    return verify_bundle(root)
