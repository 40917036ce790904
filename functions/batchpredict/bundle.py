"""Model bundles: a folder (or S3 prefix) holding ``model.json`` and the files it lists.

``model.json`` describes everything the engine needs to run a checkpoint without
code changes: the files with their sha256 and size, the input (shape, colour order,
preprocessing), the output (name, logits or probabilities) and the labels file.
This module does not import mxnet; ``model.py`` turns a verified bundle into an engine.

Every file ``model.json`` lists is a plain file name in the bundle's own folder (or under
its S3 prefix): ``describe`` refuses anything else (folders, ``..``, absolute paths,
backslashes, hidden names, ``model.json`` itself, duplicates) and ``bundle_path`` checks
that the resolved path stays in the folder; loading, verifying and pushing a bundle all go
through these two.

An ``s3://`` bundle is downloaded into a private cache (``model_cache``: a folder of the
current user's, mode 0700): ``model.json`` first, then each file, its size checked against
``model.json`` before its body is read and the download capped at that size, into a
private staging folder that is verified (size and sha256) and only then renamed into place
under a name of the URI and ``model.json``'s hash. A loader never sees a half-written
bundle, and two loaders at once each download and the second uses the first's folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from batchpredict.errors import BundleError
from batchpredict.images import Preprocess

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MANIFEST_NAME = "model.json"
SCHEMA_VERSION = 1
OUTPUT_KINDS = ("logits", "probabilities")
ROLES = ("symbol", "params", "labels")
# A plain file name: no folder, no leading dot (nor "." / ".."), no separator, NUL or space.
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
MAX_MANIFEST_BYTES = 1 << 20  # model.json read from S3
MAX_FILE_BYTES = 10 << 30  # a bundle file: Lambda's /tmp at its largest
MAX_INPUT_SIZE = 4096  # N of input.shape [3, N, N]
CACHE_PREFIX = "batchpredict-models"
STAGING_PREFIX = ".staging-"
READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class Label:
    wnid: str
    text: str


@dataclass(frozen=True)
class BundleFile:
    """One entry of model.json's ``files``: a plain file name in the bundle's folder."""

    role: str
    name: str
    sha256: str
    size: int | None  # "bytes"; optional in a local folder, required in S3


@dataclass(frozen=True)
class Description:
    """``model.json``, checked: everything it says, before any file is read."""

    name: str
    version: str
    files: tuple[BundleFile, ...]
    input_name: str
    input_shape: tuple[int, int, int]
    preprocess: Preprocess
    output_name: str | None
    output_kind: str
    classes: int | None
    raw: dict[str, Any]

    def file(self, role: str) -> BundleFile:
        return next(f for f in self.files if f.role == role)


@dataclass(frozen=True)
class BundleSpec(Description):
    """A verified bundle on local disk: its description, where its files are, its labels."""

    root: Path
    symbol_file: Path
    params_file: Path
    labels: tuple[Label, ...]

    @property
    def model_id(self) -> str:
        return f"{self.name}:{self.version}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(READ_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


# --- model.json ------------------------------------------------------------------------------


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _require(doc: dict[str, Any], key: str, where: str = MANIFEST_NAME) -> Any:
    if key not in doc:
        raise BundleError(f"{where}: missing required field {key!r}")
    return doc[key]


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BundleError(f"{where} must be an integer from {low} to {high:,}, got {value!r}")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _triple(values: Any, field: str) -> tuple[float, float, float]:
    if not isinstance(values, list | tuple) or len(values) != 3 or not all(map(_number, values)):
        raise BundleError(f"model.json preprocess.{field} must have 3 numbers, got {values!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BundleError(f"{where} must be a string, got {value!r}")
    return value


def _file_entry(role: str, entry: Any, where: str) -> BundleFile:
    where = f"{where} files.{role}"
    entry = _object(entry, where)
    name = _require(entry, "path", where)
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name) or name == MANIFEST_NAME:
        raise BundleError(
            f"{where}.path {name!r} is not a plain file name in the bundle's folder "
            "(letters, digits, '.', '_', '+', '-'; no folders, no leading '.')"
        )
    digest = _require(entry, "sha256", where)
    if not isinstance(digest, str) or not SHA256.fullmatch(digest):
        raise BundleError(f"{where}.sha256 must be 64 hex digits, got {digest!r}")
    size = entry.get("bytes")
    if size is not None:
        size = _integer(size, f"{where}.bytes", 0, MAX_FILE_BYTES)
    return BundleFile(role, name, digest.lower(), size)


def _files(doc: dict[str, Any], where: str) -> tuple[BundleFile, ...]:
    listed = _object(_require(doc, "files", where), f"{where} files")
    for role in ROLES:
        _require(listed, role, f"{where} files")
    files = tuple(_file_entry(role, entry, where) for role, entry in listed.items())
    seen: dict[str, str] = {}
    for f in files:
        other = seen.setdefault(f.name.lower(), f.role)
        if other != f.role:
            raise BundleError(f"{where}: files.{other} and files.{f.role} both name {f.name!r}")
    return files


def describe(doc: Any, where: str = MANIFEST_NAME, sizes: bool = False) -> Description:
    """Check a parsed ``model.json`` (types, file names, sizes, input, preprocess, output);
    with ``sizes``, every file must give its size (``bytes``), as a bundle in S3 must."""
    doc = _object(doc, where)
    if doc.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise BundleError(f"{where}: unsupported schema_version {doc.get('schema_version')!r}")
    files = _files(doc, where)
    for f in files:
        if sizes and f.size is None:
            raise BundleError(
                f"{where} files.{f.role} ({f.name}) gives no 'bytes': a bundle in S3 needs every "
                "file's size (`batchpredict model import` writes it)"
            )
    inp = _object(_require(doc, "input", where), "model.json input")
    pre = _object(_require(doc, "preprocess", where), "model.json preprocess")
    out = _object(_require(doc, "output", where), "model.json output")
    kind = _require(out, "kind", "model.json output")
    if kind not in OUTPUT_KINDS:
        raise BundleError(f"model.json output.kind must be one of {OUTPUT_KINDS}, got {kind!r}")
    shape = _require(inp, "shape", "model.json input")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or shape[0] != 3
        or shape[1] != shape[2]
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
    ):
        raise BundleError(f"model.json input.shape must be [3, N, N], got {shape!r}")
    size = _integer(shape[1], "model.json input.shape's N", 1, MAX_INPUT_SIZE)
    resize = _integer(
        _require(pre, "resize_shorter", "model.json preprocess"),
        "model.json preprocess.resize_shorter",
        1,
        1 << 16,
    )
    try:
        preprocess = Preprocess(
            resize_shorter=resize,
            crop=size,
            interpolation=_text(pre.get("interpolation", "bicubic"), "model.json preprocess.interpolation"),
            mean=_triple(pre.get("mean", (0.0, 0.0, 0.0)), "mean"),
            std=_triple(pre.get("std", (1.0, 1.0, 1.0)), "std"),
            color=_text(inp.get("color", "RGB"), "model.json input.color"),
        )
    except ValueError as exc:
        raise BundleError(f"model.json preprocess: {exc}") from exc
    output_name = out.get("name")
    classes = out.get("classes")
    return Description(
        name=_text(_require(doc, "name", where), "model.json name"),
        version=str(_require(doc, "version", where)),
        files=files,
        input_name=_text(inp.get("name", "data"), "model.json input.name"),
        input_shape=(3, size, size),
        preprocess=preprocess,
        output_name=None if output_name is None else _text(output_name, "model.json output.name"),
        output_kind=kind,
        classes=None if classes is None else _integer(classes, "model.json output.classes", 1, 1 << 24),
        raw=doc,
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate key {key!r}")
        doc[key] = value
    return doc


def parse_manifest(data: bytes, where: str) -> Any:
    """``model.json``'s JSON (no duplicate keys, no NaN or Infinity), not yet checked."""
    try:
        return json.loads(data, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc})") from exc


def read_description(root: Path, sizes: bool = False) -> Description:
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: model.json not found")
    return describe(parse_manifest(manifest_path.read_bytes(), str(manifest_path)), str(manifest_path), sizes)


# --- the files -------------------------------------------------------------------------------


def bundle_path(root: Path, file: BundleFile) -> Path:
    """Where ``file`` lives in the bundle folder ``root``; refused if that resolves elsewhere
    (a symlink out of the folder, say)."""
    path = root / file.name
    folder = root.resolve()
    if path.resolve().parent != folder:
        raise BundleError(f"{file.name}: files.{file.role} resolves outside the bundle folder {folder}")
    return path


def check_files(root: Path, files: tuple[BundleFile, ...], sizes: bool = False) -> None:
    """Every listed file present in ``root`` with its sha256 and, with ``sizes``, of the size
    model.json gives (which must be there). The sha256 alone decides whether a folder's file is
    the one listed; the sizes are what an S3 download is checked and capped against, so a
    bundle is pushed only with every size right."""
    for file in files:
        path = bundle_path(root, file)
        if not path.is_file():
            raise BundleError(f"{file.name}: listed as files.{file.role} in model.json but missing")
        actual = sha256_file(path)
        if actual != file.sha256:
            raise BundleError(f"{file.name}: sha256 mismatch (expected {file.sha256}, got {actual})")
        size = path.stat().st_size
        if sizes and size != file.size:
            raise BundleError(
                f"{file.name}: {size:,} bytes, model.json files.{file.role}.bytes says {file.size}"
            )


def _read_labels(path: Path, expected: int | None) -> tuple[Label, ...]:
    labels = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path.name}: not UTF-8 text ({exc})") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        wnid, _, label = line.strip().partition(" ")
        if not wnid or not label:
            raise BundleError(f"{path.name}:{number}: expected 'WNID label text', got {line!r}")
        labels.append(Label(wnid, label))
    if expected is not None and len(labels) != expected:
        raise BundleError(f"{path.name}: {len(labels)} labels, model.json says {expected}")
    return tuple(labels)


def _spec(root: Path, description: Description) -> BundleSpec:
    """The spec of a bundle whose files are checked."""
    d = description
    return BundleSpec(
        **{f.name: getattr(d, f.name) for f in fields(Description)},
        root=root,
        symbol_file=bundle_path(root, d.file("symbol")),
        params_file=bundle_path(root, d.file("params")),
        labels=_read_labels(bundle_path(root, d.file("labels")), d.classes),
    )


def verify_bundle(root: Path, sizes: bool = False) -> BundleSpec:
    """Check ``root/model.json`` and every listed file's sha256, read the labels; with
    ``sizes``, as a bundle in S3 must be: every file's size given and right."""
    description = read_description(root, sizes)
    check_files(root, description.files, sizes)
    return _spec(root, description)


# --- S3 bundles and their cache --------------------------------------------------------------


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise BundleError(f"not an s3:// URI: {uri!r}")
    return bucket, key


def _private_folder(path: Path) -> Path:
    """``path``, created with mode 0700 if absent; refused unless it is a folder (not a
    symlink) of the current user's that neither group nor others can write to."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise BundleError(
            f"{path}: not a private model cache (a folder of uid {os.getuid()}'s that only it may write to)"
        )
    return path


def model_cache(cache_root: Path | None = None) -> Path:
    """The folder ``s3://`` bundles are cached in: ``cache_root`` if given (refused unless
    private), else ``batchpredict-models-UID`` in the system temp folder, or a fresh private
    folder there if that one is not the user's alone."""
    if cache_root is not None:
        return _private_folder(cache_root)
    tmp = Path(tempfile.gettempdir())
    try:
        return _private_folder(tmp / f"{CACHE_PREFIX}-{os.getuid()}")
    except (BundleError, OSError):
        return Path(tempfile.mkdtemp(prefix=f"{CACHE_PREFIX}-{os.getuid()}-", dir=tmp))


def _download(
    client: S3Client, bucket: str, key: str, out: IO[bytes], limit: int, file: BundleFile | None = None
) -> None:
    """``s3://bucket/key`` into ``out``: its length checked (the size model.json gives
    ``file``, at most ``limit``) before its body is read, and never more than that read."""
    from botocore.exceptions import ClientError

    where = f"s3://{bucket}/{key}"
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        raise BundleError(f"cannot download {where} ({exc})") from exc
    body = response["Body"]
    try:
        length = response["ContentLength"]
        if file is not None and length != file.size:
            raise BundleError(
                f"{file.name}: sha256 mismatch: {where} is {length:,} bytes, model.json files.{file.role} "
                f"says {file.size:,} (refused before its download)"
            )
        if length > limit:
            raise BundleError(f"{where} is {length:,} bytes, more than the {limit:,} allowed")
        done = 0
        while done < length:
            block = body.read(min(READ_BLOCK, length - done))
            if not block:
                raise BundleError(f"{where}: the download ended at {done:,} of {length:,} bytes")
            out.write(block)
            done += len(block)
    finally:
        body.close()


def cache_dir_for(uri: str, cache_root: Path | None = None) -> Path:
    """The private folder (created if absent) that bundles downloaded from ``uri`` are kept
    in, one subfolder per ``model.json`` (named by its sha256), in ``model_cache(cache_root)``."""
    return _private_folder(model_cache(cache_root) / hashlib.sha256(uri.encode()).hexdigest()[:16])


def fetch_bundle(
    uri: str, s3_client_factory: Callable[[], S3Client], cache_root: Path | None = None
) -> BundleSpec:
    """The verified bundle under an ``s3://bucket/prefix``: from the cache if it holds the
    bundle of this ``model.json``, else downloaded, verified and moved in (``_install``)."""
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    folder = cache_dir_for(uri, cache_root)
    client = s3_client_factory()
    buffer = io.BytesIO()
    _download(client, bucket, prefix + MANIFEST_NAME, buffer, MAX_MANIFEST_BYTES)
    manifest = buffer.getvalue()
    where = f"s3://{bucket}/{prefix}{MANIFEST_NAME}"
    description = describe(parse_manifest(manifest, where), where, sizes=True)
    final = folder / hashlib.sha256(manifest).hexdigest()[:16]
    if final.is_dir():
        try:
            return verify_bundle(final)
        except BundleError:
            _discard(final)  # damaged since: downloaded again
    needed = sum(f.size or 0 for f in description.files)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise BundleError(f"{uri}: the bundle needs {needed:,} bytes, {folder} has {free:,} free")

    def download(staging: Path) -> None:
        (staging / MANIFEST_NAME).write_bytes(manifest)
        for file in description.files:
            with bundle_path(staging, file).open("xb") as out:
                _download(client, bucket, prefix + file.name, out, MAX_FILE_BYTES, file)
        check_files(staging, description.files, sizes=True)

    if not _install(final, download):
        return verify_bundle(final)  # another loader moved the same bundle in first
    return _spec(final, description)


def _install(final: Path, fill: Callable[[Path], None]) -> bool:
    """``fill`` a private staging folder beside ``final`` and rename it to ``final``: whole or
    not at all. False if another process's ``final`` was there first (then that one stays)."""
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=final.parent))
    try:
        fill(staging)
        try:
            staging.rename(final)
        except OSError:
            if not final.is_dir():
                raise
            return False
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _discard(folder: Path) -> None:
    """Move ``folder`` out of the way at once (a rename), then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder.parent))
    with contextlib.suppress(FileNotFoundError):  # another loader discarded it first
        folder.rename(trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)


def resolve_bundle(
    uri: str, s3_client_factory: Callable[[], S3Client] | None = None, cache_root: Path | None = None
) -> BundleSpec:
    """Verified bundle from a local folder or an ``s3://`` prefix."""
    if uri.startswith("s3://"):
        if s3_client_factory is None:
            raise BundleError(f"{uri}: an S3 client is needed to load a bundle from S3")
        return fetch_bundle(uri, s3_client_factory, cache_root)
    root = Path(uri.removeprefix("file://"))
    if not root.is_dir():
        raise BundleError(f"{root}: model bundle folder not found")
    return verify_bundle(root)
