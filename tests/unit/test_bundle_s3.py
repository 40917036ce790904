"""Loading a bundle from an s3:// prefix: downloaded once into a cache, hashes verified."""

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from batchpredict.bundle import cache_dir_for, resolve_bundle
from batchpredict.errors import BundleError


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="models")
        yield client


def _upload(s3, bundle_dir: Path, prefix: str) -> None:
    for path in bundle_dir.iterdir():
        s3.upload_file(str(path), "models", f"{prefix}/{path.name}")


def test_bundle_from_s3_is_cached_and_verified(s3, bundle_dir: Path, tmp_path: Path) -> None:
    _upload(s3, bundle_dir, "lite0/v1")
    calls = []

    def factory():
        calls.append(1)
        return s3

    spec = resolve_bundle("s3://models/lite0/v1", factory, cache_root=tmp_path)
    assert spec.model_id == "efficientnet-lite0:1"
    assert spec.root == cache_dir_for("s3://models/lite0/v1", tmp_path)
    params = spec.params_file.stat().st_mtime_ns
    # A second cold start finds the files in the cache and downloads only model.json.
    resolve_bundle("s3://models/lite0/v1", factory, cache_root=tmp_path)
    assert spec.params_file.stat().st_mtime_ns == params
    assert len(calls) == 2


def test_tampered_file_in_s3_is_refused(s3, bundle_dir: Path, tmp_path: Path) -> None:
    _upload(s3, bundle_dir, "lite0")
    s3.put_object(Bucket="models", Key="lite0/synset.txt", Body=b"n00000001 tampered\n")
    with pytest.raises(BundleError, match=r"synset\.txt: sha256 mismatch"):
        resolve_bundle("s3://models/lite0/", lambda: s3, cache_root=tmp_path)


def test_missing_object_names_the_key(s3, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"cannot download s3://models/absent/model\.json"):
        resolve_bundle("s3://models/absent", lambda: s3, cache_root=tmp_path)
