"""The engine on the real converted model and on the classic model-zoo checkpoint format."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from click.testing import CliRunner

from batchpredict import wiring
from batchpredict.bundle import resolve_bundle, sha256_file, verify_bundle
from batchpredict.cli import main
from batchpredict.config import EngineConfig
from batchpredict.errors import BundleError
from batchpredict.images import decode_image
from batchpredict.model import (
    INT8,
    Agreement,
    Engine,
    bucket_sizes,
    cpu_info,
    forward_sizes,
    int8_variant,
    load_model,
    onednn_isa_cap,
)
from tests.conftest import export_model_zoo_resnet18
from tests.fake_int8 import add_fake_int8_variant, remove_int8_variant


@pytest.fixture(scope="module")
def engine(bundle_dir: Path) -> Engine:
    return load_model(resolve_bundle(str(bundle_dir)), max_batch=8)


def _top(engine: Engine, photo: Path, k: int = 5) -> list[str]:
    tensor = decode_image(photo.read_bytes(), engine.spec.preprocess).tensor
    return [p.label.split(",")[0] for p in engine.run_inference(tensor[None], k)[0]]


def test_coffee_is_espresso_with_high_confidence(engine: Engine, samples_dir: Path) -> None:
    tensor = decode_image((samples_dir / "coffee.png").read_bytes(), engine.spec.preprocess).tensor
    best = engine.run_inference(tensor[None])[0][0]
    assert (best.label, best.wnid, best.rank) == ("espresso", "n07920052", 1)
    assert best.probability >= 0.9


def test_chelsea_is_a_cat(engine: Engine, samples_dir: Path) -> None:
    assert set(_top(engine, samples_dir / "chelsea.png", 3)) == {"tiger cat", "Egyptian cat", "tabby"}


def test_flower_is_a_daisy(engine: Engine, samples_dir: Path) -> None:
    assert _top(engine, samples_dir / "flower.jpg")[0] == "daisy"


def test_batches_of_any_size_match_single_images(engine: Engine, samples_dir: Path) -> None:
    photos = sorted(samples_dir.glob("*.png")) + sorted(samples_dir.glob("*.jpg"))
    tensors = np.stack([decode_image(p.read_bytes(), engine.spec.preprocess).tensor for p in photos])
    batch = np.concatenate([tensors, tensors[:5]])  # 11 images: over max_batch 8, then passes of 2 and 1
    together = engine.probabilities(batch)
    alone = np.concatenate([engine.probabilities(t[None]) for t in tensors])
    np.testing.assert_allclose(together[: len(tensors)], alone, atol=1e-5)
    np.testing.assert_allclose(together.sum(axis=1), 1.0, rtol=1e-5)
    assert engine.buckets == (1, 2, 4, 8)
    # Each bucket is bound once and reused.
    executors = dict(engine._executors)
    engine.probabilities(batch[:3])
    assert engine._executors == executors


def test_top_k_is_ranked_and_sized(engine: Engine, samples_dir: Path) -> None:
    tensor = decode_image((samples_dir / "astronaut.png").read_bytes(), engine.spec.preprocess).tensor
    preds = engine.run_inference(tensor[None], k=7)[0]
    assert [p.rank for p in preds] == list(range(1, 8))
    probs = [p.probability for p in preds]
    assert probs == sorted(probs, reverse=True) and 0 < probs[-1] <= probs[0] <= 1
    assert set(preds[0].as_dict()) == {"rank", "class_index", "wnid", "label", "probability"}


def test_wrong_input_shape_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="batch must have shape"):
        engine.probabilities(np.zeros((1, 3, 100, 100), np.float32))


def test_bucket_sizes() -> None:
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(12) == (1, 2, 4, 8, 12)
    assert bucket_sizes(32) == (1, 2, 4, 8, 16, 32)


def test_forward_sizes_fill_buckets_largest_first_without_padding() -> None:
    assert forward_sizes(0, (1, 2, 4, 8)) == []
    assert forward_sizes(8, (1, 2, 4, 8)) == [8]
    assert forward_sizes(11, (1, 2, 4, 8)) == [8, 2, 1]
    assert forward_sizes(17, bucket_sizes(32)) == [16, 1]
    assert forward_sizes(40, (1, 2, 4, 8)) == [8, 8, 8, 8, 8]
    assert forward_sizes(23, bucket_sizes(12)) == [12, 8, 2, 1]


def test_a_batch_binds_only_the_buckets_its_passes_fill(bundle_dir: Path, samples_dir: Path) -> None:
    engine = load_model(resolve_bundle(str(bundle_dir)), max_batch=8)
    photos = sorted(samples_dir.glob("*.jpg")) + sorted(samples_dir.glob("*.png"))[:2]
    tensors = np.stack([decode_image(p.read_bytes(), engine.spec.preprocess).tensor for p in photos])
    assert len(tensors) == 5
    probs = engine.probabilities(tensors)
    assert sorted(engine._executors) == [1, 4]  # 4 + 1, not one pass of 8 with 3 zero images
    alone = np.concatenate([engine.probabilities(t[None]) for t in tensors])
    np.testing.assert_allclose(probs, alone, atol=1e-5)


CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
cpu family\t: {family}
model\t\t: 17
model name\t: Some CPU
flags\t\t: fpu avx2 avx512f

processor\t: 1
vendor_id\t: SomeoneElse
"""


def test_onednn_isa_cap_on_amd_family_19h_and_intel_avx512() -> None:
    zen4 = cpu_info(CPUINFO.format(vendor="AuthenticAMD", family=25))
    assert zen4["vendor_id"] == "AuthenticAMD" and zen4["model name"] == "Some CPU"  # first block only
    assert onednn_isa_cap(zen4) == "AVX2"
    assert onednn_isa_cap(zen4, precision=INT8) is None  # int8 needs the VNNI kernels
    assert onednn_isa_cap(cpu_info(CPUINFO.format(vendor="AuthenticAMD", family=26))) is None  # Zen 5
    intel = cpu_info(CPUINFO.format(vendor="GenuineIntel", family=6))
    assert onednn_isa_cap(intel) == "AVX2"  # issue 18's figures, not measured here
    assert onednn_isa_cap({**intel, "flags": "fpu avx2"}) is None  # no AVX-512: nothing to cap
    assert onednn_isa_cap(intel, precision=INT8) is None
    assert onednn_isa_cap({}) is None


def test_top5_on_the_samples_does_not_depend_on_the_onednn_isa(
    engine: Engine, bundle_dir: Path, samples_dir: Path, tmp_path: Path
) -> None:
    """The engine in a fresh process with oneDNN unrestricted (DNNL_MAX_CPU_ISA=ALL, the
    default before the AVX2 cap) ranks the sample photos' top 5 exactly as this one does."""
    photos = sorted(samples_dir.glob("*.png")) + sorted(samples_dir.glob("*.jpg"))
    tensors = np.stack([decode_image(p.read_bytes(), engine.spec.preprocess).tensor for p in photos])
    np.save(tmp_path / "in.npy", tensors)
    script = (
        "import sys, numpy as np\n"
        "from batchpredict.bundle import resolve_bundle\n"
        "from batchpredict.model import load_model\n"
        "engine = load_model(resolve_bundle(sys.argv[1]), max_batch=8)\n"
        "np.save(sys.argv[3], engine.probabilities(np.load(sys.argv[2])))\n"
    )
    env = {**os.environ, "DNNL_MAX_CPU_ISA": "ALL"}
    args = [str(bundle_dir), str(tmp_path / "in.npy"), str(tmp_path / "out.npy")]
    subprocess.run([sys.executable, "-c", script, *args], env=env, check=True, capture_output=True)
    unrestricted, here = np.load(tmp_path / "out.npy"), engine.probabilities(tensors)
    top5 = [np.argsort(-p, axis=1, kind="stable")[:, :5] for p in (unrestricted, here)]
    np.testing.assert_array_equal(top5[0], top5[1])
    np.testing.assert_allclose(unrestricted, here, atol=1e-5)


# --- bad bundles: a clear error naming the file ---------------------------------------------


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle_dir, target)
    return target


def _rewrite_manifest(root: Path, change: dict[str, object]) -> None:
    doc = json.loads((root / "model.json").read_text())
    doc.update(change)
    (root / "model.json").write_text(json.dumps(doc))


def test_hash_mismatch_names_the_file(bundle_copy: Path) -> None:
    with (bundle_copy / "synset.txt").open("a") as fh:
        fh.write("n00000000 extra\n")
    with pytest.raises(BundleError, match=r"synset\.txt: sha256 mismatch"):
        verify_bundle(bundle_copy)


def test_missing_synset_names_the_file(bundle_copy: Path) -> None:
    (bundle_copy / "synset.txt").unlink()
    with pytest.raises(BundleError, match=r"synset\.txt: listed as files\.labels in model\.json but missing"):
        verify_bundle(bundle_copy)


def test_missing_model_json_and_folder(bundle_copy: Path, tmp_path: Path) -> None:
    (bundle_copy / "model.json").unlink()
    with pytest.raises(BundleError, match=r"model\.json not found"):
        verify_bundle(bundle_copy)
    with pytest.raises(BundleError, match="bundle folder not found"):
        resolve_bundle(str(tmp_path / "nowhere"))


def test_wrong_parameter_shape_names_the_file_and_parameter(bundle_copy: Path) -> None:
    params = bundle_copy / "efficientnet-lite0-0000.params"
    saved = mx.nd.load(str(params))
    saved["arg:fc_weight"] = mx.nd.zeros((10, 1280))
    mx.nd.save(str(params), saved)
    doc = json.loads((bundle_copy / "model.json").read_text())
    doc["files"]["params"]["sha256"] = sha256_file(params)
    (bundle_copy / "model.json").write_text(json.dumps(doc))
    with pytest.raises(
        BundleError, match=r"efficientnet-lite0-0000\.params: parameter 'fc_weight' has shape"
    ):
        load_model(verify_bundle(bundle_copy))


def test_label_count_must_match_the_model(bundle_copy: Path) -> None:
    doc = json.loads((bundle_copy / "model.json").read_text())
    doc["output"]["classes"] = 999
    (bundle_copy / "model.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"synset\.txt: 1000 labels, model\.json says 999"):
        verify_bundle(bundle_copy)


def _labels_without_a_count(root: Path, count: int) -> None:
    """The bundle's synset.txt cut or padded to ``count`` lines, model.json matching it but
    without output.classes: verify_bundle has nothing to count the labels against."""
    labels = (root / "synset.txt").read_text().splitlines()
    labels = (labels + [f"n{i:08d} extra {i}" for i in range(count)])[:count]
    (root / "synset.txt").write_text("\n".join(labels) + "\n")
    doc = json.loads((root / "model.json").read_text())
    doc["files"]["labels"].update(
        sha256=sha256_file(root / "synset.txt"), bytes=(root / "synset.txt").stat().st_size
    )
    del doc["output"]["classes"]
    (root / "model.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("count", [999, 1001])
def test_label_count_is_checked_against_the_models_output_at_load(
    bundle_copy: Path, samples_dir: Path, count: int
) -> None:
    _labels_without_a_count(bundle_copy, count)
    spec = verify_bundle(bundle_copy)
    assert len(spec.labels) == count
    message = rf"synset\.txt: {count} labels, but the model's output 'fc_output' has 1000 classes"
    with pytest.raises(BundleError, match=message):
        load_model(spec)
    # The predictor Lambda's engine (wiring.engine, at cold start) and `batchpredict predict`.
    with pytest.raises(BundleError, match=message):
        wiring.engine(EngineConfig(model_uri=str(bundle_copy), max_batch=2))
    shown = CliRunner().invoke(
        main, ["predict", "--model", str(bundle_copy), str(samples_dir / "coffee.png")]
    )
    assert shown.exit_code == 1 and "Traceback" not in shown.output
    assert f"{count} labels, but the model's output 'fc_output' has 1000 classes" in shown.output


# --- the classic model-zoo format of the original post --------------------------------------


def _export_model_zoo_resnet18(folder: Path) -> None:
    """The model-zoo ResNet-18 (tests/conftest.py) with a hand-written model.json beside it."""
    export_model_zoo_resnet18(folder)
    files = {
        role: {"path": name, "sha256": sha256_file(folder / name)}
        for role, name in (
            ("symbol", "resnet-18-symbol.json"),
            ("params", "resnet-18-0000.params"),
            ("labels", "synset.txt"),
        )
    }
    (folder / "model.json").write_text(
        json.dumps(
            {
                "name": "resnet-18",
                "version": "0",
                "files": files,
                "input": {"name": "data", "shape": [3, 224, 224], "color": "RGB"},
                "preprocess": {"resize_shorter": 224, "mean": [0, 0, 0], "std": [1, 1, 1]},
                "output": {"name": "softmax_output", "kind": "probabilities", "classes": 1000},
            }
        )
    )


def test_classic_model_zoo_checkpoint_runs_through_the_engine(tmp_path: Path, samples_dir: Path) -> None:
    _export_model_zoo_resnet18(tmp_path)
    saved = mx.nd.load(str(tmp_path / "resnet-18-0000.params"))
    assert saved and all(k.startswith(("arg:", "aux:")) for k in saved)
    engine = load_model(verify_bundle(tmp_path), max_batch=4)
    assert engine.model_id == "resnet-18:0"
    photos = [samples_dir / "coffee.png", samples_dir / "chelsea.png", samples_dir / "rocket.jpg"]
    tensors = np.stack([decode_image(p.read_bytes(), engine.spec.preprocess).tensor for p in photos])
    assert tensors.max() > 200  # raw 0-255 input, as the original post fed it
    probs = engine.probabilities(tensors)
    assert probs.shape == (3, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)  # softmax_output, used as is
    preds = engine.run_inference(tensors)
    assert [len(p) for p in preds] == [5, 5, 5]
    assert preds[0][0].label == f"class {preds[0][0].class_index}"


# --- the int8 variant ---------------------------------------------------------------------------


def test_agreement_counts_equal_top1_and_shared_top5() -> None:
    reference = np.tile(np.arange(10, dtype=np.float32)[::-1], (4, 1))  # top-5: classes 0..4
    other = reference.copy()
    other[1, [0, 1]] = other[1, [1, 0]]  # top-1 moves, the top-5 set is kept
    other[2, 5] = 20.0  # class 5 enters first: top-1 moves and class 4 leaves the top 5
    other[3, [5, 6]] = 30.0, 31.0  # two new classes at the top: 3 shared
    agreement = Agreement.between(reference, other)
    assert (agreement.images, agreement.top1_equal) == (4, 0.25)
    assert agreement.top5_overlap == (0, 0, 0, 1, 1, 2)
    assert agreement.top5_share4 == 0.75 and not agreement.passes_gate
    assert Agreement.between(reference, reference).passes_gate
    assert Agreement.between(reference, reference).as_json()["top5_overlap"] == [0, 0, 0, 0, 0, 4]


def test_a_bundle_without_an_int8_variant_refuses_int8(bundle_copy: Path) -> None:
    remove_int8_variant(bundle_copy)
    spec = verify_bundle(bundle_copy)
    assert int8_variant(spec) is None
    with pytest.raises(BundleError, match="no int8 variant"):
        load_model(spec, max_batch=1, precision=INT8)
    with pytest.raises(ValueError, match="precision"):
        load_model(spec, max_batch=1, precision="fp16")


def test_the_int8_variant_named_in_model_json_is_the_graph_bound(
    bundle_copy: Path, samples_dir: Path
) -> None:
    """A variant is two more files in model.json plus variants.int8: here the fp32 graph under the
    int8 names, so the engine bound must give fp32's answers, and the gate is the recorded one."""
    agreement = Agreement(100, 0.99, (0, 0, 0, 0, 1, 99))
    add_fake_int8_variant(bundle_copy, agreement)
    spec = verify_bundle(bundle_copy, sizes=True)
    variant = int8_variant(spec)
    assert variant is not None and variant.passes_gate and variant.agreement == agreement
    int8 = load_model(spec, max_batch=2, precision=INT8)
    assert int8.symbol_file.name.startswith("int8-") and int8.params_file.name.startswith("int8-")
    tensor = decode_image((samples_dir / "coffee.png").read_bytes(), spec.preprocess).tensor[None]
    np.testing.assert_allclose(
        int8.probabilities(tensor), load_model(spec, 2).probabilities(tensor), atol=1e-5
    )

    add_fake_int8_variant(bundle_copy, Agreement(100, 0.97, (0, 0, 0, 0, 1, 99)))
    failing = int8_variant(verify_bundle(bundle_copy))
    assert failing is not None and not failing.passes_gate  # 97% top-1 is under the 98% gate
