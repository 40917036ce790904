"""`batchpredict model import`: a model-zoo checkpoint into a verified bundle, then `predict --model`."""

from __future__ import annotations

import json
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from click.testing import CliRunner, Result

from batchpredict.bundle import sha256_file, verify_bundle
from batchpredict.cli import main
from batchpredict.errors import BundleError
from batchpredict.images import decode_image
from batchpredict.model import inspect_checkpoint


def _import(checkpoint: Path, name: str, out: Path, *options: str, prefix: str | None = None) -> Result:
    stem = checkpoint / (prefix or name)
    files = [f"{stem}-symbol.json", f"{stem}-0000.params", str(checkpoint / "synset.txt")]
    return CliRunner().invoke(main, ["model", "import", *files, "--name", name, *options, "-o", str(out)])


def _predict_json(bundle: Path, photo: Path) -> list[dict[str, object]]:
    shown = CliRunner().invoke(main, ["predict", "--output", "json", "--model", str(bundle), str(photo)])
    assert shown.exit_code == 0, shown.output
    return json.loads(shown.stdout)["predictions"]  # type: ignore[no-any-return]


def test_import_the_gluon_resnet18_then_predict(
    resnet18_checkpoint: Path, samples_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bundles" / "resnet-18"
    imported = _import(resnet18_checkpoint, "resnet-18", out, "--version", "7")
    assert imported.exit_code == 0, imported.output
    assert "resnet-18:7 -> " in imported.output and "check        coffee.png:" in imported.output
    doc = json.loads((out / "model.json").read_text())
    assert doc["input"] == {
        "name": "data",
        "shape": [3, 224, 224],
        "layout": "NCHW",
        "dtype": "float32",
        "color": "RGB",
    }
    assert doc["output"] == {"name": "softmax_output", "kind": "probabilities", "classes": 1000}
    assert doc["preprocess"]["resize_shorter"] == 256 and doc["preprocess"]["crop"] == 224
    for entry in doc["files"].values():
        assert entry["sha256"] == sha256_file(out / entry["path"])
        assert entry["bytes"] == (out / entry["path"]).stat().st_size
    verify_bundle(out, sizes=True)  # as `model push` checks it, and the predictor loads it from S3
    assert sorted(p.name for p in out.parent.iterdir()) == ["resnet-18"]  # no staging left behind

    photo = samples_dir / "chelsea.png"
    predictions = _predict_json(out, photo)
    # The same photo through the checkpoint by hand: MXNet's own loader, one forward.
    sym, args, aux = mx.model.load_checkpoint(str(resnet18_checkpoint / "resnet-18"), 0)
    tensor = decode_image(photo.read_bytes(), verify_bundle(out).preprocess).tensor[None]
    exe = sym.simple_bind(mx.cpu(), data=tensor.shape, grad_req="null")
    exe.copy_params_from(args, aux)
    expected = exe.forward(is_train=False, data=mx.nd.array(tensor))[0].asnumpy()[0]
    assert [p["rank"] for p in predictions] == [1, 2, 3, 4, 5]
    for p in predictions:
        assert p["label"] == f"class {p['class_index']}"
        assert p["probability"] == pytest.approx(float(expected[p["class_index"]]), abs=1e-5)
    assert predictions[0]["class_index"] == int(np.argmax(expected))


def test_reimporting_the_built_bundle_predicts_exactly_as_it(
    bundle_dir: Path, samples_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    imported = _import(
        bundle_dir, "lite0", out, "--mean", "127,127,127", "--std", "128,128,128", prefix="efficientnet-lite0"
    )
    assert imported.exit_code == 0, imported.output
    doc = json.loads((out / "model.json").read_text())
    assert doc["output"] == {"name": "fc_output", "kind": "logits", "classes": 1000}  # FullyConnected head
    for photo in ("coffee.png", "rocket.jpg"):
        assert _predict_json(out, samples_dir / photo) == _predict_json(bundle_dir, samples_dir / photo)


def test_what_is_wrong_is_one_line_and_nothing_is_left(bundle_dir: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    for name in ("efficientnet-lite0-symbol.json", "efficientnet-lite0-0000.params"):
        (checkpoint / name).symlink_to((bundle_dir / name).resolve())
    labels = (bundle_dir / "synset.txt").read_text().splitlines()
    (checkpoint / "synset.txt").write_text("\n".join(labels[:999]) + "\n")
    out = tmp_path / "out"

    def refused(*options: str) -> str:
        result = _import(checkpoint, "lite0", out, *options, prefix="efficientnet-lite0")
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["ckpt"]
        return result.output

    assert "synset.txt: 999 labels, model.json says 1000" in refused()
    (checkpoint / "synset.txt").write_text("\n".join(labels) + "\n")
    assert "does not look like probabilities" in refused("--output-kind", "probabilities")
    assert "takes no (3, N, N) input with N in 7" in refused("--input-shape", "3,7,7")
    assert "no input 'pixels'" in refused("--input-name", "pixels")
    assert "--input-shape must be 3,N,N" in refused("--input-shape", "3,224,225")
    assert "need 0 < crop <= resize_shorter" in refused("--resize", "200")
    assert "--name" in refused("--name", "../escape")
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _import(checkpoint, "lite0", out, prefix="efficientnet-lite0")
    assert result.exit_code == 1 and "not an empty folder" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def _fixed_size_net(folder: Path, size: int) -> tuple[Path, Path]:
    """conv -> 32x32 pooling -> flatten -> dense: only inputs of SIZE give the dense layer's width."""
    data = mx.sym.Variable("pixels")
    net = mx.sym.Convolution(data, num_filter=4, kernel=(3, 3), pad=(1, 1), name="conv")
    net = mx.sym.Pooling(net, kernel=(32, 32), stride=(32, 32), pool_type="avg")
    net = mx.sym.FullyConnected(mx.sym.flatten(net), num_hidden=10, name="fc")
    args = {
        "conv_weight": mx.nd.ones((4, 3, 3, 3)),
        "conv_bias": mx.nd.zeros(4),
        "fc_weight": mx.nd.ones((10, 4 * ((size - 32) // 32 + 1) ** 2)),
        "fc_bias": mx.nd.zeros(10),
    }
    mx.model.save_checkpoint(str(folder / "tiny"), 0, net, args, {})
    return folder / "tiny-symbol.json", folder / "tiny-0000.params"


def test_inspect_finds_the_size_a_fixed_network_takes(tmp_path: Path) -> None:
    symbol, params = _fixed_size_net(tmp_path, 299)
    facts = inspect_checkpoint(symbol, params)
    assert (facts.input_name, facts.image_size, facts.size_from_symbol) == ("pixels", 299, False)
    assert (facts.output_name, facts.output_kind, facts.classes) == ("fc_output", "logits", 10)
    with pytest.raises(BundleError, match="no \\(3, N, N\\) input with N in 224"):
        inspect_checkpoint(symbol, params, image_size=224)


def test_inspect_reads_the_size_the_symbol_fixes(tmp_path: Path) -> None:
    symbol, params = _fixed_size_net(tmp_path, 331)
    doc = json.loads(symbol.read_text())
    doc["nodes"][0].setdefault("attrs", {})["__shape__"] = "(1, 3, 331, 331)"
    symbol.write_text(json.dumps(doc))
    facts = inspect_checkpoint(symbol, params)
    assert (facts.image_size, facts.size_from_symbol) == (331, True)
