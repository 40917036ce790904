"""Shared fixtures: the built model bundle and sample photos (``make test`` builds both first), and
each test's tier marker, taken from its folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
# A test's tier is its folder under tests/, as a marker (`pytest -m e2e`; `make test-e2e`).
TIERS = {
    "unit": "fakes in place of AWS, no network beyond loopback",
    "integration": "boto3 against a moto server (and DynamoDB Local) on loopback",
    "infra": "the SAM template linted, translated and deployed into a moto server; packaging",
    "e2e": "the CLI against the embedded local stack's worker processes",
}


def pytest_configure(config: pytest.Config) -> None:
    for tier, what in TIERS.items():
        config.addinivalue_line("markers", f"{tier}: tests/{tier}, {what}")


# First: pytest's own hook deselects by -m in this same call, so the markers must be on by then.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in one of tests/{{{','.join(TIERS)}}}/")
        item.add_marker(tier)


def _built(env_name: str, default: str, what: str) -> Path:
    path = Path(os.environ.get(env_name, ROOT / default))
    if not path.exists():
        pytest.fail(f"{path} is missing: {what} (run the tests with `make test`, which builds it)")
    return path


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    return _built("BATCHPREDICT_TEST_BUNDLE", "build/model/efficientnet-lite0", "the default model bundle")


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return _built("BATCHPREDICT_TEST_SAMPLES", "build/samples", "the sample photos")


@pytest.fixture(scope="session")
def wheels_dir() -> Path:
    return _built("BATCHPREDICT_TEST_WHEELS", "build/wheels", "the downloaded wheels")


def export_model_zoo_resnet18(folder: Path) -> None:
    """A randomly initialised Gluon ResNet-18, saved as resnet-18-symbol.json + resnet-18-0000.params
    with arg:/aux: keys and a SoftmaxOutput named softmax, exactly like the model zoo's files, and a
    synset.txt of made-up labels ("n00000042 class 42")."""
    import mxnet as mx
    from mxnet.gluon.model_zoo import vision

    net = vision.resnet18_v1(pretrained=False, classes=1000)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    net.hybridize()
    net(mx.nd.zeros((1, 3, 224, 224)))
    net.export(str(folder / "gluon"), epoch=0)
    sym, args, aux = mx.model.load_checkpoint(str(folder / "gluon"), 0)
    sym = mx.sym.SoftmaxOutput(sym, name="softmax")
    mx.model.save_checkpoint(str(folder / "resnet-18"), 0, sym, args, aux)
    (folder / "synset.txt").write_text("".join(f"n{i:08d} class {i}\n" for i in range(1000)))


@pytest.fixture(scope="session")
def resnet18_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model-zoo ResNet-18 files (no model.json), made once per session."""
    folder = tmp_path_factory.mktemp("resnet-18")
    export_model_zoo_resnet18(folder)
    return folder
