import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchpredict.cli import main


def test_predict_json_lines_and_exit_status(bundle_dir: Path, samples_dir: Path, tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    sources = [str(samples_dir / "coffee.png"), str(junk), str(tmp_path / "missing.jpg"), "ftp://host/x.jpg"]
    result = CliRunner().invoke(
        main, ["predict", "--output", "json", "--top-k", "3", "--model", str(bundle_dir), *sources]
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


def test_predict_text_output_is_tab_separated(bundle_dir: Path, samples_dir: Path, tmp_path: Path) -> None:
    photo, missing = str(samples_dir / "coffee.png"), str(tmp_path / "missing.jpg")
    result = CliRunner().invoke(
        main, ["predict", "--output", "text", "--top-k", "2", "--model", str(bundle_dir), photo, missing]
    )
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[:2] for row in rows] == [[photo, "1"], [photo, "2"], [missing, "error"]]
    assert rows[0][3:] == ["n07920052", "967", "espresso"] and 0 < float(rows[0][2]) <= 1
    assert rows[2][2] == "file_not_found"


def test_the_old_output_flags_are_gone() -> None:
    assert CliRunner().invoke(main, ["predict", "--json", "x.jpg"]).exit_code == 2
    assert CliRunner().invoke(main, ["results", "job-1", "--format", "csv"]).exit_code == 2


def test_every_command_has_help_examples() -> None:
    commands = [
        [name, *([sub] if sub else [])]
        for name, command in main.commands.items()
        for sub in (getattr(command, "commands", None) or [None])
    ]
    assert ["model", "import"] in commands and ["local", "run"] in commands
    for command in commands:
        shown = CliRunner().invoke(main, [*command, "--help"])
        assert shown.exit_code == 0 and "Examples:\n    batchpredict " in shown.output, command


def test_missing_bundle_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["predict", "--model", str(tmp_path / "nope"), "x.jpg"])
    assert result.exit_code == 1
    assert "model bundle folder not found" in result.output
    assert "Traceback" not in result.output


def test_local_run_of_a_gzipped_manifest_needing_serve_is_one_line(tmp_path: Path) -> None:
    import gzip

    manifest = tmp_path / "urls.txt.gz"
    manifest.write_bytes(gzip.compress(b"${SAMPLES_URL}/coffee.png\n"))
    result = CliRunner().invoke(main, ["local", "run", str(manifest)])
    assert result.exit_code == 1 and "pass --serve DIR" in result.output
    assert "Traceback" not in result.output and "UnicodeDecodeError" not in result.output


def test_local_stack_reaches_only_the_samples_server_and_bucket(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchpredict.cli import local_commands
    from batchpredict.config import image_source_prefixes
    from batchpredict.local.servers import FileServer

    samples = FileServer(tmp_path)
    samples.start()
    try:
        options = local_commands.local_settings(str(bundle_dir), 1, (), samples)
        host_port = samples.url.removeprefix("http://")
        # not 127.0.0.0/8: moto and DynamoDB Local listen on loopback too
        assert options.allowed_networks == host_port
        # a prefix, not the whole bucket: the functions' settings refuse one (they failed at start)
        assert options.parameters["ImageSourcePrefixes"] == f"s3://{options.prefix}-samples/served/"
        assert image_source_prefixes(options.parameters["ImageSourcePrefixes"])
        assert options.parameters["ApiImageSourcePrefixes"] == f"s3://{options.prefix}-samples/served/"
        assert "warning" not in capsys.readouterr().err
        wide = local_commands.local_settings(str(bundle_dir), 1, ("10.0.0.0/8",), samples)
        assert wide.allowed_networks == f"{host_port},10.0.0.0/8"
        assert "warning: image URLs may reach every host of 10.0.0.0/8" in capsys.readouterr().err
        up = local_commands.local_settings(str(bundle_dir), 1, ())  # `local up`: nothing unless asked
        assert (up.allowed_networks, up.parameters["ImageSourcePrefixes"]) == ("", "")
    finally:
        samples.stop()


def test_the_local_state_is_saved_loaded_and_cleared_in_one_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import subprocess
    import sys

    from batchpredict.cli.client import StackRef, UserError
    from batchpredict.cli.targets import LOCAL_DIR_ENV, local_state

    monkeypatch.setenv(LOCAL_DIR_ENV, str(tmp_path / "local"))
    state = local_state()
    assert (state.path, state.log_dir) == (tmp_path / "local" / "stack.json", tmp_path / "local" / "logs")
    assert state.pid() is None and not state.alive()
    with pytest.raises(UserError, match="no local stack is running"):
        state.load()
    status = CliRunner().invoke(main, ["status", "job-1"])
    assert status.exit_code == 1 and "no local stack is running" in status.output

    ref = StackRef("in", "out", "table", endpoints={"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"})
    state.save(ref, os.getpid())
    assert json.loads(state.path.read_text())["pid"] == os.getpid()
    assert state.alive() and state.load() == ref

    gone = subprocess.Popen([sys.executable, "-c", ""])  # a process that has ended, as after kill -9
    gone.wait()
    state.save(ref, gone.pid)
    assert state.pid() == gone.pid and not state.alive()
    with pytest.raises(UserError, match="not running any more"):
        state.load()

    state.path.write_text("{not json")
    assert state.pid() is None and not state.alive()
    state.clear()
    state.clear()  # nothing to remove is fine
    assert not state.path.exists()


def test_the_state_file_is_its_owners_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stack.json carries the stack's access key (its StackRef's settings): mode 0600, also when
    it replaces a file an older version left readable to all."""
    import os
    import stat

    from batchpredict.cli.client import StackRef
    from batchpredict.cli.targets import LOCAL_DIR_ENV, local_state

    monkeypatch.setenv(LOCAL_DIR_ENV, str(tmp_path / "local"))
    state = local_state()
    secret = {"AWS_ACCESS_KEY_ID": "localabc", "AWS_SECRET_ACCESS_KEY": "s3cret"}
    state.folder.mkdir(parents=True)
    state.path.write_text("{}")
    state.path.chmod(0o644)

    state.save(StackRef("in", "out", "table", endpoints=secret), os.getpid())

    assert stat.S_IMODE(state.path.stat().st_mode) == 0o600
    assert state.load().endpoints == secret


def test_local_down_signals_only_the_process_that_wrote_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale stack.json (its `local up` killed -9) whose pid now names another process: `local
    down` says so, clears the state and signals nothing; the process that wrote it is stopped."""
    import os
    import subprocess
    import sys

    from batchpredict.cli.client import StackRef
    from batchpredict.cli.targets import LOCAL_DIR_ENV, local_state

    monkeypatch.setenv(LOCAL_DIR_ENV, str(tmp_path / "local"))
    state = local_state()
    ref = StackRef("in", "out", "table")
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        state.save(ref, os.getpid())  # this process wrote it: its command line and start time
        saved = json.loads(state.path.read_text())
        state.path.write_text(json.dumps(saved | {"pid": bystander.pid}))  # the pid, reused
        assert state.pid() == bystander.pid and not state.alive()

        down = CliRunner().invoke(main, ["local", "down"])

        assert down.exit_code == 1
        assert f"pid {bystander.pid} is now another process (sleep 60" in down.output
        assert "left alone" in down.output and "stale state removed" in down.output
        assert not state.path.exists()
        assert bystander.poll() is None  # not signalled

        # A state of the old shape (no command line, no start time) proves nothing either.
        state.path.write_text(json.dumps({"pid": bystander.pid, "stack": saved["stack"]}))
        assert CliRunner().invoke(main, ["local", "down"]).exit_code == 1
        assert bystander.poll() is None and not state.path.exists()
    finally:
        bystander.kill()
        bystander.wait()

    # The process that wrote the state is signalled (as `local up` does, it clears it on SIGTERM).
    script = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (os.unlink(sys.argv[1]), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(state.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline() == "ready\n"
        state.save(ref, owner.pid)
        assert state.alive()

        down = CliRunner().invoke(main, ["local", "down"])

        assert down.exit_code == 0, down.output
        assert owner.wait(30) == 0 and not state.path.exists()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
