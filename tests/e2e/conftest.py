"""The embedded local stack, started once for these tests, and the CLI pointed at it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchpredict import cli
from batchpredict.cli.client import Client, StackRef
from batchpredict.cli.targets import LOCAL_DIR_ENV, local_state
from batchpredict.local.provision import LocalOptions
from batchpredict.local.servers import FileServer
from batchpredict.local.stack import LocalStack
from tests.e2e.hangs import Tarpit

# Short local timeouts: a killed predict worker's messages come back within 6 s (its heartbeat's
# 5 s left + 1, or the work queue's 5 s + the window), a finalize worker's within 5 s.
FUNCTION_TIMEOUT = 5.0
PHOTOS = ["coffee.png", "chelsea.png", "astronaut.png", "rocket.jpg", "china.jpg", "flower.jpg"]


# Module scope: the stack points this process's boto3 at its servers until it stops, and
# the tests of other folders must not inherit that.
@pytest.fixture(scope="module")
def local_stack(
    bundle_dir: Path, photos_url: str, tarpit_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalStack, StackRef]]:
    options = LocalOptions(
        model_uri=str(bundle_dir.resolve()),
        prefix="e2e",
        # Those servers only, as `local run` does: the photos, and a server that never answers.
        allowed_networks=",".join(url.removeprefix("http://") for url in (photos_url, tarpit_url)),
        predict_workers=2,
        max_function_timeout=FUNCTION_TIMEOUT,
        environment={"INFERENCE_THREADS": "1"},
    )
    stack = LocalStack(options, log_dir=tmp_path_factory.mktemp("logs"))
    ref = stack.start()
    try:
        yield stack, ref
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def photos_url(samples_dir: Path) -> Iterator[str]:
    server = FileServer(samples_dir)
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def tarpit_url() -> Iterator[str]:
    server = Tarpit()
    yield server.start()
    server.stop()


@pytest.fixture(autouse=True)
def local_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The local stack's state file and logs in a tmp dir, for this process and the CLI processes
    it starts: never the repo's build/local/, where a developer's own `local up` may be running."""
    folder = tmp_path / "local"
    monkeypatch.setenv(LOCAL_DIR_ENV, str(folder))
    assert local_state().folder == folder
    return folder


@pytest.fixture
def run_cli(local_stack: tuple[LocalStack, StackRef], local_dir: Path) -> Any:
    """Invoke the CLI as a user would with `batchpredict local up` running in another terminal."""
    _, ref = local_stack
    local_state().save(ref, os.getpid())

    def run(*args: str) -> Any:
        result = CliRunner().invoke(cli.main, list(args), catch_exceptions=False)
        return result

    return run


@pytest.fixture
def photo_job(
    local_stack: tuple[LocalStack, StackRef], photos_url: str, tmp_path: Path
) -> Callable[[str, int], tuple[Client, str]]:
    """``photo_job(name, total)``: submit the manifest ``name`` of ``total`` lines of the sample
    photos (each URL made distinct by ``?n=``) and wait for its job; returns (client, job id)."""

    def submit(name: str, total: int) -> tuple[Client, str]:
        manifest = tmp_path / name
        manifest.write_text("".join(f"{photos_url}/{PHOTOS[i % len(PHOTOS)]}?n={i}\n" for i in range(total)))
        client = Client(local_stack[1])
        job_id = client.submit(manifest)
        client.wait_for_job(job_id)
        return client, job_id

    return submit
