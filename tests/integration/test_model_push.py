"""`batchpredict model push` into a moto server, then `predict --model s3://…` loads it from there."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner

from batchpredict.cli import main
from tests.fake_int8 import bundle_file_count


def test_push_then_predict_from_s3(
    moto_env: str, bundle_dir: Path, samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the bundle cache of predict --model s3://
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="pushed-models")

    pushed = CliRunner().invoke(main, ["model", "push", str(bundle_dir), "s3://pushed-models/lite0/1/"])
    assert pushed.exit_code == 0, pushed.output
    keys = [line.removeprefix("s3://pushed-models/") for line in pushed.stdout.splitlines()]
    assert keys[-1] == "lite0/1/model.json" and len(keys) == bundle_file_count(bundle_dir)
    listed = s3.list_objects_v2(Bucket="pushed-models", Prefix="lite0/1/")["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(keys)

    shown = CliRunner().invoke(
        main,
        [
            "predict",
            "--output",
            "json",
            "--model",
            "s3://pushed-models/lite0/1",
            str(samples_dir / "coffee.png"),
        ],
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["predictions"][0]["label"] == "espresso"
    # Downloaded into the user's private cache: the URI's folder, one whole bundle in it.
    cache = tmp_path / f"batchpredict-models-{os.getuid()}"
    (uri_folder,) = cache.iterdir()
    (bundle,) = uri_folder.iterdir()
    assert sorted(p.name for p in bundle.iterdir()) == sorted(p.name for p in bundle_dir.iterdir())
    for folder in (cache, uri_folder, bundle):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()

    broken = tmp_path / "broken"
    broken.mkdir()
    for item in bundle_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "synset.txt").write_text("n00000000 changed\n")
    refused = CliRunner().invoke(main, ["model", "push", str(broken), "s3://pushed-models/broken/"])
    assert refused.exit_code == 1 and "sha256 mismatch" in refused.output
    assert "Contents" not in s3.list_objects_v2(Bucket="pushed-models", Prefix="broken/")
