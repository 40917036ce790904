"""``batchpredict model import`` / ``model push``: a classic MXNet checkpoint (``NAME-symbol.json``,
``NAME-0000.params``, ``synset.txt``) into a verified bundle (see bundle.py), and a bundle to S3.

What the symbol and the parameters say (input name and size, output name, kind and class
count) is taken from them (``model.inspect_checkpoint``); what they cannot say (mean, std,
resize, colour order) comes from the options, with the model zoo's defaults: raw 0-255 RGB,
shorter side to 256/224 of the input size, centre crop. The bundle is written to a staging
folder, verified, run once on a sample photo, and only then moved into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpredict.bundle import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    BundleSpec,
    bundle_path,
    sha256_file,
    split_s3_uri,
    verify_bundle,
)
from batchpredict.errors import BundleError
from batchpredict.images import Preprocess, decode_image

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LABELS_FILE = "synset.txt"
Triple = tuple[float, float, float]


@dataclass(frozen=True)
class ImportOptions:
    name: str
    version: str = "1"
    input_name: str | None = None
    input_size: int | None = None  # N of --input-shape 3,N,N
    mean: Triple = (0.0, 0.0, 0.0)
    std: Triple = (1.0, 1.0, 1.0)
    resize: int | None = None  # default: round(N * 256 / 224)
    colour: str = "RGB"
    interpolation: str = "bicubic"
    output_kind: str | None = None  # default: from the symbol's last operator
    license: str = "unspecified"


@dataclass(frozen=True)
class Imported:
    spec: BundleSpec
    sources: dict[str, str]  # "input"/"output" -> where model.json's values came from
    check: list[Any]  # the sample photo's top-5 (model.Prediction)


def _resize(options: ImportOptions, size: int) -> int:
    return options.resize or round(size * 256 / 224)


def _free_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} already exists and is not an empty folder")


def _description(
    options: ImportOptions, facts: Any, files: dict[str, Path], sources: dict[str, Path]
) -> dict[str, Any]:
    size = facts.image_size
    return {
        "schema_version": SCHEMA_VERSION,
        "name": options.name,
        "version": options.version,
        "framework": "mxnet",
        "files": {
            role: {"path": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
            for role, path in files.items()
        },
        "input": {
            "name": facts.input_name,
            "shape": [3, size, size],
            "layout": "NCHW",
            "dtype": "float32",
            "color": options.colour,
        },
        "preprocess": {
            "resize_shorter": _resize(options, size),
            "interpolation": options.interpolation,
            "crop": size,
            "mean": list(options.mean),
            "std": list(options.std),
        },
        "output": {
            "name": facts.output_name,
            "kind": options.output_kind or facts.output_kind,
            "classes": facts.classes,
        },
        "provenance": {
            "imported_from": {role: path.name for role, path in sources.items()},
            "imported_by": "batchpredict model import",
        },
        "license": options.license,
    }


def _sources(options: ImportOptions, facts: Any) -> dict[str, str]:
    """Where each part of model.json came from, for the user to check."""
    size = (
        "given"
        if options.input_size
        else "from the symbol"
        if facts.size_from_symbol
        else "the first common size the network takes"
    )
    kind = "given" if options.output_kind else f"from the symbol's {facts.output_op}"
    return {
        "input": f"name {'given' if options.input_name else 'from the symbol'}; size {size}",
        "output": f"name from the symbol; kind {kind}; classes from the parameters",
    }


def _check(spec: BundleSpec, sample: bytes) -> list[Any]:
    """One forward pass on the sample photo, as the predictor runs it."""
    from batchpredict.model import load_model

    engine = load_model(spec, max_batch=1)
    tensor = decode_image(sample, spec.preprocess).tensor[None]
    probabilities = engine.probabilities(tensor)  # the output as it is, unless the kind is logits
    total, least = float(probabilities.sum()), float(probabilities.min())
    if not (abs(total - 1) <= 0.01 and least >= 0):
        raise BundleError(
            f"output {spec.output_name!r} does not look like probabilities on the sample "
            f"(sum {total:.3g}, min {least:.3g}): pass --output-kind logits"
        )
    return engine.top_k(probabilities)[0]


def import_checkpoint(
    symbol: Path, params: Path, labels: Path, out: Path, options: ImportOptions, sample: bytes
) -> Imported:
    """Write the bundle for SYMBOL/PARAMS/LABELS into OUT (absent or empty), verified and
    checked on SAMPLE (encoded image bytes); raises BundleError naming what is wrong."""
    from batchpredict.model import inspect_checkpoint

    if not NAME_PATTERN.fullmatch(options.name):
        raise BundleError(f"--name {options.name!r}: use letters, digits, '.', '_' and '-' (up to 64)")
    _free_target(out)
    facts = inspect_checkpoint(symbol, params, options.input_name, options.input_size)
    try:  # the options' own checks (colour, interpolation, std, crop <= resize) before any copy
        Preprocess(
            resize_shorter=_resize(options, facts.image_size),
            crop=facts.image_size,
            interpolation=options.interpolation,
            mean=options.mean,
            std=options.std,
            color=options.colour,
        )
    except ValueError as exc:
        raise BundleError(f"preprocessing options: {exc}") from exc
    staging = out.with_name(f".{out.name}.import-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        files = {
            "symbol": staging / f"{options.name}-symbol.json",
            "params": staging / f"{options.name}-0000.params",
            "labels": staging / LABELS_FILE,
        }
        sources = {"symbol": symbol, "params": params, "labels": labels}
        for role, target in files.items():
            shutil.copyfile(sources[role], target)
        description = _description(options, facts, files, sources)
        (staging / MANIFEST_NAME).write_text(
            json.dumps(description, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        check = _check(verify_bundle(staging), sample)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Imported(verify_bundle(out), _sources(options, facts), check)


def push_bundle(folder: Path, uri: str, s3: S3Client) -> list[str]:
    """Upload a verified bundle under ``s3://bucket/prefix``: its files first, ``model.json``
    last, so a predictor never finds a ``model.json`` whose files are not there yet. Returns
    the keys written. Only what the predictor can load from S3 is pushed: plain file names in
    the folder (as ``verify_bundle`` checks them) and every file's size in ``model.json``."""
    spec = verify_bundle(folder, sizes=True)
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    paths = [bundle_path(folder, file) for file in spec.files] + [folder / MANIFEST_NAME]
    for path in paths:
        s3.upload_file(str(path), bucket, prefix + path.name)
    return [prefix + path.name for path in paths]
