"""`batchpredict local up/down` and `local run` as a user runs them: real processes, real files."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from batchpredict import cli
from batchpredict.cli.targets import local_state

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "batchpredict.cli"]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, as a second terminal would run it."""
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False
    )


def test_local_run_the_demo_manifest(bundle_dir: Path, samples_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        cli.main,
        [
            "local",
            "run",
            str(ROOT / "sample_manifests" / "demo.jsonl"),
            "--serve",
            str(samples_dir),
            "-o",
            str(out),
            "--model",
            str(bundle_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 13 and [r["index"] for r in lines] == list(range(13))
    codes = [r["error"]["code"] for r in lines if r["error"]]
    assert codes == [
        "http_error",
        "not_an_image",
        "blocked_address",
        "unsupported_scheme",
        "invalid_manifest_line",
    ]
    assert lines[0]["predictions"][0]["label"] == "espresso"
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (13, 8, 5)
    assert (out / "report.html").read_text().count("data:image/jpeg;base64,") == 8
    assert "COMPLETED_WITH_ERRORS: 8 succeeded, 5 failed" in result.output


def test_local_up_serves_the_cli_the_api_and_stops_on_down(
    bundle_dir: Path, samples_dir: Path, tmp_path: Path
) -> None:
    from batchpredict.local.servers import FileServer

    photos = FileServer(samples_dir)
    url = photos.start()
    up = subprocess.Popen(
        [*COMMAND, "local", "up", "--model", str(bundle_dir), "--allow-network", url.removeprefix("http://")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    state = local_state()  # in the test's BATCHPREDICT_LOCAL_DIR (conftest.local_dir), as for `local up`
    try:
        deadline = time.monotonic() + 60
        while state.pid() is None and time.monotonic() < deadline:
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            time.sleep(0.2)
        assert state.pid() == up.pid and state.alive()
        api = state.load().api_url
        manifest = tmp_path / "one.txt"
        with urllib.request.urlopen(
            f"{api}?{urllib.parse.urlencode({'url': f'{url}/flower.jpg'})}", timeout=60
        ) as response:
            assert json.loads(response.read())["predictions"][0]["label"] == "daisy"
        manifest.write_text(f"{url}/coffee.png\n{url}/rocket.jpg\n")
        submit = _cli("submit", str(manifest), "--wait")
        assert submit.returncode == 0, submit.stderr
        job_id = submit.stdout.splitlines()[0]
        table = _cli("results", job_id, "--output", "table")
        assert "espresso" in table.stdout and "missile" in table.stdout
        down = _cli("local", "down")
        assert down.returncode == 0, down.stderr
        assert up.wait(30) == 0
        assert not state.path.exists() and not state.alive()
        after = _cli("status", job_id)
        assert after.returncode == 1 and "no local stack is running" in after.stderr
        assert "Traceback" not in after.stderr
    finally:
        photos.stop()
        if up.poll() is None:
            up.terminate()
            up.wait(30)


def test_local_run_a_gzipped_manifest_with_an_imported_model(
    bundle_dir: Path, samples_dir: Path, tmp_path: Path
) -> None:
    """`local run manifest.txt.gz` used to die reading the manifest as text; the bundle is the one
    `model import` makes from the built bundle's own checkpoint files."""
    imported = tmp_path / "lite0"
    stem = bundle_dir / "efficientnet-lite0"
    files = [f"{stem}-symbol.json", f"{stem}-0000.params", str(bundle_dir / "synset.txt")]
    options = ["--name", "lite0", "--mean", "127,127,127", "--std", "128,128,128", "-o", str(imported)]
    made = CliRunner().invoke(cli.main, ["model", "import", *files, *options])
    assert made.exit_code == 0, made.output
    manifest = tmp_path / "example.txt.gz"
    manifest.write_bytes(gzip.compress((ROOT / "sample_manifests" / "example.txt").read_bytes()))
    out = tmp_path / "results"
    args = [str(manifest), "--serve", str(samples_dir), "--model", str(imported), "--workers", "1"]
    result = CliRunner().invoke(cli.main, ["local", "run", *args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["predictions"][0]["label"] for r in lines] == ["espresso", "daisy", "football helmet"]
    assert {r["model"] for r in lines} == {"lite0:1"}
    assert lines[2]["url"].startswith("s3://")
