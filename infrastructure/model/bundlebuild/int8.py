"""Add an int8 variant to a built bundle: MXNet 1.9's oneDNN post-training quantization.

Usage: python -m bundlebuild.int8 --bundle build/model/efficientnet-lite0 [--cache build/wheels]

Calibrated (``naive``: each tensor's min/max) on varied images made from the sample photos
(``bundlebuild.photos``), then checked against the fp32 graph on varied images of held-out
photos. The graph goes beside the fp32 one as ``files.symbol_int8`` (and the weights as
``files.params_int8`` only if they differ from fp32's: MXNet 1.9 keeps the fp32 weights and
quantizes them at bind, so today the variant costs 0.2 MB, not 19 MB). ``variants.int8`` in
model.json records how it was calibrated and its measured agreement with fp32, so a caller
can refuse a variant that misses the gate (``batchpredict.model.int8_variant``). Bundles
without it load as before.

What was tried on EfficientNet-Lite0 (AMD EPYC Zen 4 with AVX-512 VNNI; 400 varied images):
all layers, channel-wise weights, naive or entropy calibration: top-1 equal on 76%;
tensor-wise weights do not bind (the FC's type inference fails); without VNNI (the engine's
fp32 AVX2 cap) 58%; keeping the depthwise convolutions fp32 79%, keeping depthwise and
projection convolutions fp32 92% (and slower than fp32); calibrating on the held-out photos
themselves 76%. Every variant misses the gate (98% top-1), so ``fast`` must not use it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from batchpredict.bundle import MANIFEST_NAME, BundleSpec, sha256_file, verify_bundle
from batchpredict.images import decode_image
from batchpredict.model import (
    GATE_TOP1,
    GATE_TOP5_SHARE4,
    INT8,
    INT8_PARAMS_ROLE,
    INT8_SYMBOL_ROLE,
    Agreement,
    _mxnet,
    available_cpus,
    cpu_info,
    load_model,
)
from bundlebuild.build import write_manifest
from bundlebuild.photos import calibration_photos, check_photos, variants

CALIBRATION_IMAGES = 192
CALIBRATION_SEED = 1
CHECK_IMAGES = 320
CHECK_SEED = 99
CALIB_MODE = "naive"
GRANULARITY = "channel-wise"
BATCH = 32


def tensors(spec: BundleSpec, images: list[bytes]) -> npt.NDArray[np.float32]:
    return np.stack([decode_image(data, spec.preprocess).tensor for data in images])


def quantize(spec: BundleSpec, calibration: npt.NDArray[np.float32]) -> tuple[Any, dict[str, Any] | None]:
    """The quantized symbol, and its parameters (``arg:``/``aux:`` keys, as the fp32 file has) if
    they differ from the fp32 ones (MXNet 1.9 keeps them: the int8 graph quantizes them at bind)."""
    mx = _mxnet(available_cpus(), INT8)
    from mxnet.contrib.quantization import quantize_model_mkldnn

    symbol = mx.sym.load(str(spec.symbol_file))
    saved = mx.nd.load(str(spec.params_file))
    args = {k[4:]: v for k, v in saved.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in saved.items() if k.startswith("aux:")}
    qsym, qargs, qaux = quantize_model_mkldnn(
        symbol,
        args,
        aux,
        data_names=(spec.input_name,),
        label_names=(),
        ctx=mx.cpu(),
        calib_mode=CALIB_MODE,
        calib_data=mx.io.NDArrayIter(data={spec.input_name: calibration}, batch_size=BATCH),
        num_calib_examples=len(calibration),
        quantized_dtype="auto",
        quantize_mode="smart",
        quantize_granularity=GRANULARITY,
    )
    params = {f"arg:{k}": v for k, v in sorted(qargs.items())}
    params |= {f"aux:{k}": v for k, v in sorted(qaux.items())}
    same = params.keys() == saved.keys() and all(
        np.array_equal(v.asnumpy(), saved[k].asnumpy()) for k, v in params.items()
    )
    return qsym, None if same else params


def describe_cpu() -> str:
    info = cpu_info()
    vnni = "avx512_vnni" in info.get("flags", "").split() or "avx_vnni" in info.get("flags", "").split()
    return f"{info.get('model name') or platform.processor() or 'unknown'}, VNNI {'yes' if vnni else 'no'}"


def add_int8_variant(bundle: Path, cache: Path) -> Agreement:
    spec = verify_bundle(bundle)
    calibration = tensors(
        spec, list(variants(calibration_photos(cache), CALIBRATION_IMAGES, CALIBRATION_SEED))
    )
    qsym, params = quantize(spec, calibration)
    mx = _mxnet(available_cpus(), INT8)
    stem = spec.symbol_file.name.removesuffix("-symbol.json")
    names = {"symbol": f"{stem}-int8-symbol.json", "params": f"{stem}-int8-0000.params"}
    (bundle / names["symbol"]).write_text(qsym.tojson(), encoding="utf-8")
    roles = {INT8_SYMBOL_ROLE: names["symbol"]}
    if params is not None:
        mx.nd.save(str(bundle / names["params"]), params)
        roles[INT8_PARAMS_ROLE] = names["params"]

    doc = json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8"))
    for role in (INT8_SYMBOL_ROLE, INT8_PARAMS_ROLE):
        doc["files"].pop(role, None)  # a rebuild's, which may not write params again
    for role, name in roles.items():
        path = bundle / name
        doc["files"][role] = {"path": name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    checks = tensors(spec, list(variants(check_photos(cache), CHECK_IMAGES, CHECK_SEED)))
    # Loadable for the check, with no agreement yet (so no gate passed).
    doc.setdefault("variants", {})[INT8] = {"agreement": Agreement(0, 0.0, (0,) * 6).as_json()}
    write_manifest(bundle, doc)
    spec = verify_bundle(bundle)
    reference = load_model(spec, max_batch=BATCH).probabilities(checks)
    agreement = Agreement.between(reference, load_model(spec, BATCH, precision=INT8).probabilities(checks))
    doc["variants"][INT8] = {
        "method": "MXNet 1.9.1 quantize_model_mkldnn (oneDNN), post-training",
        "calibration": {
            "mode": CALIB_MODE,
            "weights": GRANULARITY,
            "images": CALIBRATION_IMAGES,
            "from": f"varied JPEGs of the sample photos (bundlebuild.photos, seed {CALIBRATION_SEED})",
        },
        "agreement": {
            **agreement.as_json(),
            "with": "fp32",
            "on": f"varied JPEGs of held-out and sample photos (bundlebuild.photos, seed {CHECK_SEED})",
        },
        "gate": {"top1_equal": GATE_TOP1, "top5_share4": GATE_TOP5_SHARE4},
        "measured_on": describe_cpu(),
    }
    write_manifest(bundle, doc)
    verify_bundle(bundle, sizes=True)
    return agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("build/wheels"))
    args = parser.parse_args()
    started = time.perf_counter()
    agreement = add_int8_variant(args.bundle, args.cache)
    print(
        f"int8 variant of {args.bundle} in {time.perf_counter() - started:.1f}s: top-1 equal to fp32 on "
        f"{agreement.top1_equal:.1%} of {agreement.images} images, top-5 sharing >= 4 on "
        f"{agreement.top5_share4:.1%} (gate {GATE_TOP1:.0%} / {GATE_TOP5_SHARE4:.0%}: "
        f"{'passes' if agreement.passes_gate else 'fails'})"
    )


if __name__ == "__main__":
    main()
