import json
from pathlib import Path

from click.testing import CliRunner

from batchpredict.cli import main


def test_predict_json_lines_and_exit_status(bundle_dir: Path, samples_dir: Path, tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    sources = [str(samples_dir / "coffee.png"), str(junk), str(tmp_path / "missing.jpg"), "ftp://host/x.jpg"]
    result = CliRunner().invoke(
        main, ["predict", "--json", "--top-k", "3", "--model", str(bundle_dir), *sources]
    )
    assert result.exit_code == 1  # some images failed
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["source"] for line in lines] == sources
    coffee = lines[0]["predictions"]
    assert len(coffee) == 3 and coffee[0]["label"] == "espresso" and coffee[0]["rank"] == 1
    assert set(coffee[0]) == {"rank", "class_index", "wnid", "label", "probability"}
    assert [line["error"]["code"] for line in lines[1:]] == [
        "not_an_image",
        "file_not_found",
        "unsupported_scheme",
    ]


def test_predict_text_output_and_success(bundle_dir: Path, samples_dir: Path) -> None:
    result = CliRunner().invoke(
        main, ["predict", "--model", str(bundle_dir), str(samples_dir / "flower.jpg")]
    )
    assert result.exit_code == 0, result.output
    assert "1. daisy" in result.stdout


def test_missing_bundle_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["predict", "--model", str(tmp_path / "nope"), "x.jpg"])
    assert result.exit_code == 1
    assert "model bundle folder not found" in result.output
    assert "Traceback" not in result.output
