"""Hostile bundles: what model.json may name and say, checked once (``bundle.describe`` and
``bundle.bundle_path``) for a folder, an S3 prefix (test_bundle_s3.py) and ``model push``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from batchpredict.bundle import verify_bundle
from batchpredict.cli.modelimport import push_bundle
from batchpredict.errors import BundleError

FILES = {"symbol": "net-symbol.json", "params": "net-0000.params", "labels": "synset.txt"}
CONTENT = {"symbol": b'{"nodes": []}', "params": b"\x00" * 64, "labels": b"n00000001 one\nn00000002 two\n"}


def _entry(data: bytes, name: str) -> dict[str, Any]:
    return {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _doc() -> dict[str, Any]:
    return {
        "name": "net",
        "version": "1",
        "files": {role: _entry(CONTENT[role], name) for role, name in FILES.items()},
        "input": {"name": "data", "shape": [3, 8, 8], "color": "RGB"},
        "preprocess": {"resize_shorter": 8, "mean": [0, 0, 0], "std": [1, 1, 1]},
        "output": {"name": "out", "kind": "logits", "classes": 2},
    }


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A small well-formed bundle (verify_bundle does not parse the symbol or params)."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    for role, name in FILES.items():
        (folder / name).write_bytes(CONTENT[role])
    _write(folder, _doc())
    return folder


def _write(folder: Path, doc: Any) -> None:
    (folder / "model.json").write_text(json.dumps(doc))


def test_the_small_bundle_is_valid(bundle: Path) -> None:
    spec = verify_bundle(bundle)
    assert [f.name for f in spec.files] == list(FILES.values())
    assert [(f.role, f.size) for f in spec.files] == [(r, len(CONTENT[r])) for r in FILES]


@pytest.mark.parametrize("role", list(FILES))
@pytest.mark.parametrize(
    "name",
    [
        "../escaped.txt",
        "../../../../x/escaped.sh",
        "/etc/passwd",
        "sub/synset.txt",
        "sub\\synset.txt",
        "..\\synset.txt",
        "",
        ".",
        "..",
        ".hidden",
        "synset.txt\x00.png",
        " synset.txt",
        "syn set.txt",
        "model.json",
        "C:synset.txt",
        "x" * 256,
        7,
        None,
        True,
        ["synset.txt"],
        {"path": "synset.txt"},
    ],
)
def test_only_plain_file_names_may_be_listed(bundle: Path, role: str, name: object) -> None:
    doc = _doc()
    doc["files"][role]["path"] = name
    _write(bundle, doc)
    with pytest.raises(BundleError, match=rf"files\.{role}\.path .* is not a plain file name"):
        verify_bundle(bundle)


def test_an_extra_entry_is_checked_like_the_three_roles(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("outside")
    doc = _doc()
    doc["files"]["notes"] = _entry(b"outside", "../notes.txt")
    _write(bundle, doc)
    with pytest.raises(BundleError, match=r"files\.notes\.path '\.\./notes\.txt' is not a plain file name"):
        verify_bundle(bundle)


def test_a_symlink_out_of_the_folder_is_refused(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(CONTENT["labels"])  # the right content, even
    (bundle / "synset.txt").unlink()
    (bundle / "synset.txt").symlink_to(outside)
    with pytest.raises(BundleError, match=r"synset\.txt: files\.labels resolves outside the bundle folder"):
        verify_bundle(bundle)


def test_two_roles_may_not_name_one_file(bundle: Path) -> None:
    doc = _doc()
    doc["files"]["labels"] = _entry(CONTENT["params"], "NET-0000.params")
    _write(bundle, doc)
    with pytest.raises(BundleError, match=r"files\.params and files\.labels both name 'NET-0000\.params'"):
        verify_bundle(bundle)


def test_duplicate_keys_are_refused(bundle: Path) -> None:
    text = json.dumps(_doc())
    doubled = text.replace('"files": {', '"files": {"labels": {"path": "../x", "sha256": "0"}, ', 1)
    (bundle / "model.json").write_text(doubled)
    with pytest.raises(BundleError, match="duplicate key 'labels'"):
        verify_bundle(bundle)


def test_push_refuses_a_size_that_differs(bundle: Path) -> None:
    doc = _doc()
    doc["files"]["params"]["bytes"] = 65
    _write(bundle, doc)
    verify_bundle(bundle)  # in a folder the sha256 decides; the predictor in S3 would refuse it
    s3 = Uploads()
    with pytest.raises(
        BundleError, match=r"net-0000\.params: 64 bytes, model\.json files\.params\.bytes says 65"
    ):
        push_bundle(bundle, "s3://models/net/1/", s3)  # type: ignore[arg-type]
    assert s3.keys == []


def test_a_folder_bundle_without_sizes_still_loads(bundle: Path) -> None:
    doc = _doc()
    for entry in doc["files"].values():
        del entry["bytes"]
    _write(bundle, doc)
    assert [f.size for f in verify_bundle(bundle).files] == [None, None, None]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["files"].update(labels="synset.txt"), r"files\.labels must be a JSON object, got str"),
        (lambda d: d.update(files=[]), "files must be a JSON object, got list"),
        (lambda d: d["files"]["params"].update(sha256="abc"), r"files\.params\.sha256 must be 64 hex digits"),
        (lambda d: d["files"]["params"].update(bytes="64"), r"files\.params\.bytes must be an integer"),
        (lambda d: d["files"]["params"].update(bytes=-1), r"files\.params\.bytes must be an integer"),
        (lambda d: d["files"]["params"].update(bytes=True), r"files\.params\.bytes must be an integer"),
        (lambda d: d["files"]["params"].update(bytes=1 << 40), r"files\.params\.bytes must be an integer"),
        (lambda d: d.update(input=[3, 8, 8]), "model.json input must be a JSON object, got list"),
        (lambda d: d["input"].update(shape=[3, "8", "8"]), r"input\.shape must be \[3, N, N\]"),
        (lambda d: d["input"].update(shape=[3, 1 << 20, 1 << 20]), r"input\.shape's N must be an integer"),
        (lambda d: d["preprocess"].update(mean="000"), r"preprocess\.mean must have 3 numbers"),
        (lambda d: d["preprocess"].update(std=[1, 0, 1]), "std must not contain 0"),
        (lambda d: d["preprocess"].update(resize_shorter=4), r"need 0 < crop <= resize_shorter"),
        (lambda d: d["input"].update(color=["RGB"]), r"input\.color must be a string"),
        (lambda d: d["output"].update(classes="2"), r"output\.classes must be an integer"),
        (lambda d: d["output"].update(name=5), r"output\.name must be a string"),
    ],
)
def test_wrong_types_and_missing_fields_are_bundle_errors(bundle: Path, change: Any, message: str) -> None:
    doc = _doc()
    change(doc)
    _write(bundle, doc)
    with pytest.raises(BundleError, match=message):
        verify_bundle(bundle)


@pytest.mark.parametrize("text", ["[]", '"model"', "null", "3"])
def test_a_model_json_that_is_not_an_object_is_a_bundle_error(bundle: Path, text: str) -> None:
    (bundle / "model.json").write_text(text)
    with pytest.raises(BundleError, match=r"model\.json must be a JSON object"):
        verify_bundle(bundle)


def test_nan_is_refused(bundle: Path) -> None:
    (bundle / "model.json").write_text(json.dumps(_doc()).replace('"mean": [0, 0, 0]', '"mean": [NaN, 0, 0]'))
    with pytest.raises(BundleError, match="NaN is not a number JSON allows"):
        verify_bundle(bundle)


class Uploads:
    """An S3 client that records uploads."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        self.keys.append(key)


def test_push_refuses_a_symlink_out_of_the_folder(bundle: Path, tmp_path: Path) -> None:
    s3 = Uploads()
    keys = push_bundle(bundle, "s3://models/net/1/", s3)  # type: ignore[arg-type]
    assert keys == s3.keys == [f"net/1/{name}" for name in [*FILES.values(), "model.json"]]
    secret = tmp_path / "secret.txt"
    secret.write_bytes(CONTENT["labels"])
    (bundle / "synset.txt").unlink()
    (bundle / "synset.txt").symlink_to(secret)
    s3 = Uploads()
    with pytest.raises(BundleError, match="resolves outside the bundle folder"):
        push_bundle(bundle, "s3://models/net/1/", s3)  # type: ignore[arg-type]
    assert s3.keys == []


def test_push_refuses_a_traversing_entry(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_bytes(CONTENT["labels"])
    doc = _doc()
    doc["files"]["labels"]["path"] = "../secret.txt"
    _write(bundle, doc)
    s3 = Uploads()
    with pytest.raises(BundleError, match="is not a plain file name"):
        push_bundle(bundle, "s3://models/net/1/", s3)  # type: ignore[arg-type]
    assert s3.keys == []


def test_push_refuses_a_bundle_the_predictor_could_not_load_from_s3(bundle: Path) -> None:
    doc = _doc()
    del doc["files"]["symbol"]["bytes"]
    _write(bundle, doc)
    s3 = Uploads()
    with pytest.raises(BundleError, match=r"files\.symbol \(net-symbol\.json\) gives no 'bytes'"):
        push_bundle(bundle, "s3://models/net/1/", s3)  # type: ignore[arg-type]
    assert s3.keys == []
