"""Loading a bundle from an s3:// prefix: into a private cache, each file's size checked before
its body is read, verified in a staging folder and only then moved into place whole."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from batchpredict.bundle import STAGING_PREFIX, cache_dir_for, resolve_bundle
from batchpredict.errors import BundleError
from tests.fake_int8 import bundle_file_count

URI = "s3://models/lite0/v1"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="models")
        yield client


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _upload(
    s3: Any, bundle_dir: Path, prefix: str, change: Callable[[dict[str, Any]], None] | None = None
) -> None:
    """The bundle under ``prefix``, its model.json changed by ``change`` first."""
    for path in bundle_dir.iterdir():
        if path.name != "model.json":
            s3.upload_file(str(path), "models", f"{prefix}/{path.name}")
    doc = json.loads((bundle_dir / "model.json").read_text())
    if change:
        change(doc)
    s3.put_object(Bucket="models", Key=f"{prefix}/model.json", Body=json.dumps(doc).encode())


class Body:
    """A get_object body that records how many bytes were read from it."""

    def __init__(self, body: Any) -> None:
        self.body, self.read_bytes = body, 0

    def read(self, amount: int | None = None) -> bytes:
        data: bytes = self.body.read(amount)
        self.read_bytes += len(data)
        return data

    def close(self) -> None:
        self.body.close()


class Spy:
    """An S3 client whose object reads are recorded (and may run a hook first)."""

    def __init__(self, client: Any, hook: Callable[[str], None] | None = None) -> None:
        self.client, self.hook = client, hook
        self.bodies: dict[str, Body] = {}

    def _before(self, key: str) -> None:
        if self.hook:
            self.hook(key)

    def get_object(self, **kwargs: Any) -> Any:
        self._before(kwargs["Key"])
        response = self.client.get_object(**kwargs)
        response["Body"] = self.bodies[kwargs["Key"]] = Body(response["Body"])
        return response

    def download_file(self, bucket: str, key: str, filename: str, **kwargs: Any) -> None:
        self._before(key)  # how the loader read objects before it streamed them itself
        self.client.download_file(bucket, key, filename, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def _outside(tmp_path: Path, cache: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(cache)]


def _leftovers(cache: Path) -> list[Path]:
    """Files and staging folders in the cache."""
    return [p for p in cache.rglob("*") if p.is_file() or p.name.startswith(STAGING_PREFIX)]


def test_bundle_from_s3_is_cached_and_verified(s3: Any, bundle_dir: Path, cache: Path) -> None:
    _upload(s3, bundle_dir, "lite0/v1")
    spy = Spy(s3)
    spec = resolve_bundle(URI, lambda: spy, cache_root=cache)
    assert spec.model_id == "efficientnet-lite0:1"
    assert spec.root.parent == cache_dir_for(URI, cache) and len(spy.bodies) == bundle_file_count(bundle_dir)
    params = spec.params_file.stat().st_ino
    # A second cold start finds the bundle in the cache and reads only model.json.
    again = Spy(s3)
    assert resolve_bundle(URI, lambda: again, cache_root=cache).root == spec.root
    assert list(again.bodies) == ["lite0/v1/model.json"]
    assert spec.params_file.stat().st_ino == params


def test_cache_is_private_and_a_bundle_appears_only_whole(s3: Any, bundle_dir: Path, cache: Path) -> None:
    _upload(s3, bundle_dir, "lite0/v1")
    seen: list[list[str]] = []

    def look(key: str) -> None:  # what another loader would find in the cache meanwhile
        found = [p for p in cache.rglob("*") if p.is_file() and STAGING_PREFIX not in str(p)]
        seen.append(sorted(str(p.relative_to(cache)) for p in found))

    spec = resolve_bundle(URI, lambda: Spy(s3, look), cache_root=cache)
    assert len(seen) == bundle_file_count(bundle_dir) and all(names == [] for names in seen)
    assert [p.name for p in spec.root.parent.iterdir()] == [spec.root.name]  # no staging folder left
    for folder in (cache, spec.root.parent, spec.root):
        info = folder.stat()
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()


def test_a_loader_finishing_second_leaves_the_first_ones_files_alone(
    s3: Any, bundle_dir: Path, cache: Path
) -> None:
    _upload(s3, bundle_dir, "lite0/v1")
    other: list[Any] = []
    inodes: list[int] = []

    def files(spec: Any) -> list[Path]:
        return [spec.symbol_file, spec.params_file, spec.root / "synset.txt", spec.root / "model.json"]

    def second_loader(key: str) -> None:  # starts and finishes while the first downloads its last file
        if key.endswith("-symbol.json") and not other:
            other.append(resolve_bundle(URI, lambda: s3, cache_root=cache))
            inodes.extend(p.stat().st_ino for p in files(other[0]))

    first = resolve_bundle(URI, lambda: Spy(s3, second_loader), cache_root=cache)
    (second,) = other
    assert first.root == second.root
    # The files the second loader verified (and its engine would read) were not replaced.
    assert [p.stat().st_ino for p in files(second)] == inodes
    assert [p.name for p in first.root.parent.iterdir()] == [first.root.name]


def test_a_shared_cache_folder_is_refused_and_the_default_one_replaced(
    s3: Any, bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _upload(s3, bundle_dir, "lite0/v1")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(BundleError, match="not a private model cache"):
        resolve_bundle(URI, lambda: s3, cache_root=shared)
    assert list(shared.iterdir()) == []
    # The default cache: batchpredict-models-UID in the temp folder; planted by someone else
    # (here: writable by all), a fresh private folder is used instead.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"batchpredict-models-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    spec = resolve_bundle(URI, lambda: s3)
    assert not spec.root.is_relative_to(planted) and list(planted.iterdir()) == []
    fresh = spec.root.parents[1]
    assert fresh.parent == tmp_path and fresh.name.startswith(f"batchpredict-models-{os.getuid()}-")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_tampered_file_in_s3_is_refused(s3: Any, bundle_dir: Path, cache: Path) -> None:
    _upload(s3, bundle_dir, "lite0")
    size = (bundle_dir / "synset.txt").stat().st_size
    s3.put_object(Bucket="models", Key="lite0/synset.txt", Body=b"n00000001 tampered".ljust(size, b"!"))
    with pytest.raises(BundleError, match=r"synset\.txt: sha256 mismatch"):
        resolve_bundle("s3://models/lite0/", lambda: s3, cache_root=cache)
    assert _leftovers(cache) == []  # nothing half-done kept


def test_size_mismatch_is_refused_before_the_body_is_read(s3: Any, bundle_dir: Path, cache: Path) -> None:
    def bigger(doc: dict[str, Any]) -> None:
        doc["files"]["params"]["bytes"] += 1

    _upload(s3, bundle_dir, "lite0", bigger)
    spy = Spy(s3)
    with pytest.raises(
        BundleError,
        match=r"efficientnet-lite0-0000\.params: sha256 mismatch: "
        r"s3://models/lite0/efficientnet-lite0-0000\.params is 18,841,597 bytes, "
        r"model\.json files\.params says 18,841,598 \(refused before its download\)",
    ):
        resolve_bundle("s3://models/lite0", lambda: spy, cache_root=cache)
    assert spy.bodies["lite0/efficientnet-lite0-0000.params"].read_bytes == 0
    assert _leftovers(cache) == []


def test_an_s3_bundle_must_give_every_size(s3: Any, bundle_dir: Path, cache: Path) -> None:
    def unsized(doc: dict[str, Any]) -> None:
        del doc["files"]["params"]["bytes"]

    _upload(s3, bundle_dir, "lite0", unsized)
    spy = Spy(s3)
    with pytest.raises(
        BundleError, match=r"files\.params \(efficientnet-lite0-0000\.params\) gives no 'bytes'"
    ):
        resolve_bundle("s3://models/lite0", lambda: spy, cache_root=cache)
    assert list(spy.bodies) == ["lite0/model.json"]


def test_an_oversized_model_json_is_not_read(s3: Any, cache: Path) -> None:
    s3.put_object(Bucket="models", Key="big/model.json", Body=b" " * (2 << 20) + b"{}")
    spy = Spy(s3)
    with pytest.raises(BundleError, match=r"model\.json is 2,097,154 bytes, more than the 1,048,576 allowed"):
        resolve_bundle("s3://models/big", lambda: spy, cache_root=cache)
    assert spy.bodies["big/model.json"].read_bytes == 0


def _hostile(s3: Any, bundle_dir: Path, path: str) -> None:
    """The bundle with files.labels at ``path``: the real labels, stored under that key."""
    labels = (bundle_dir / "synset.txt").read_bytes()
    s3.put_object(Bucket="models", Key=f"lite0/{path}", Body=labels)

    def relabel(doc: dict[str, Any]) -> None:
        doc["files"]["labels"]["path"] = path

    _upload(s3, bundle_dir, "lite0", relabel)


def test_a_traversing_entry_writes_nothing_outside_the_cache(
    s3: Any, bundle_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "a" / "b" / "cache"
    _hostile(s3, bundle_dir, "../../escaped.sh")  # from cache/<bundle>/ to tmp_path/a/escaped.sh
    with pytest.raises(
        BundleError, match=r"files\.labels\.path '\.\./\.\./escaped\.sh' is not a plain file name"
    ):
        resolve_bundle("s3://models/lite0", lambda: s3, cache_root=cache)
    assert _outside(tmp_path, cache) == [] and _leftovers(cache) == []


def test_an_absolute_path_entry_is_refused(s3: Any, bundle_dir: Path, tmp_path: Path, cache: Path) -> None:
    target = tmp_path / "elsewhere" / "escaped.sh"
    target.parent.mkdir()
    _hostile(s3, bundle_dir, str(target))
    with pytest.raises(BundleError, match=r"files\.labels\.path '/.*escaped\.sh' is not a plain file name"):
        resolve_bundle("s3://models/lite0", lambda: s3, cache_root=cache)
    assert not target.exists() and _outside(tmp_path, cache) == []


class EndlessBody:
    """A body that never ends: more bytes than its ContentLength said."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def read(self, amount: int | None = None) -> bytes:
        amount = amount or 1 << 20
        self.read_bytes += amount
        return b"x" * amount

    def close(self) -> None:
        pass


def test_a_download_stops_at_the_size_model_json_gives(s3: Any, bundle_dir: Path, cache: Path) -> None:
    _upload(s3, bundle_dir, "lite0")
    size = (bundle_dir / "synset.txt").stat().st_size
    endless = EndlessBody()

    class Lying(Spy):
        def get_object(self, **kwargs: Any) -> Any:
            if not kwargs["Key"].endswith("synset.txt"):
                return super().get_object(**kwargs)
            return {"ContentLength": size, "Body": endless}

    with pytest.raises(BundleError, match=r"synset\.txt: sha256 mismatch"):
        resolve_bundle("s3://models/lite0", lambda: Lying(s3), cache_root=cache)
    assert endless.read_bytes == size


def test_missing_object_names_the_key(s3: Any, cache: Path) -> None:
    with pytest.raises(BundleError, match=r"cannot download s3://models/absent/model\.json"):
        resolve_bundle("s3://models/absent", lambda: s3, cache_root=cache)


def test_the_cache_folder_follows_model_json(s3: Any, bundle_dir: Path, cache: Path) -> None:
    """A new model.json under the same URI is a new folder; the old one is left whole."""
    _upload(s3, bundle_dir, "lite0/v1")
    old = resolve_bundle(URI, lambda: s3, cache_root=cache)

    def renamed(doc: dict[str, Any]) -> None:
        doc["version"] = "2"

    _upload(s3, bundle_dir, "lite0/v1", renamed)
    new = resolve_bundle(URI, lambda: s3, cache_root=cache)
    assert (old.model_id, new.model_id) == ("efficientnet-lite0:1", "efficientnet-lite0:2")
    assert new.root != old.root and old.params_file.is_file()
    digest = hashlib.sha256((new.root / "model.json").read_bytes()).hexdigest()
    assert new.root.name == digest[:16] and new.root.parent == old.root.parent
