"""A gzip bomb of blank lines on the local stack, settings as `batchpredict local run` has them
(function timeouts capped at 60 s): the job ends FAILED with the cap it hit, and the splitter's
memory does not grow with what the gzip expands to."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchpredict.cli.client import Client, StackRef
from batchpredict.local.lambda_shim import Report, parse_report
from batchpredict.local.provision import LocalOptions
from batchpredict.local.stack import LocalStack

NEWLINES = 10**8  # 100 MB of "\n": a 102 KB .gz


@pytest.fixture(scope="module")
def bomb_stack(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, StackRef]]:
    options = LocalOptions(
        model_uri=str(bundle_dir.resolve()), prefix="bomb", environment={"INFERENCE_THREADS": "1"}
    )
    logs = tmp_path_factory.mktemp("logs")
    stack = LocalStack(options, serve_api=False, log_dir=logs)
    ref = stack.start()
    try:
        yield logs, ref
    finally:
        stack.stop()


def _gzip_of_newlines(path: Path, count: int) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    block = b"\n" * (1 << 20)
    with path.open("wb") as out:
        for _ in range(count // len(block)):
            out.write(packer.compress(block))
        out.write(packer.compress(b"\n" * (count % len(block))) + packer.flush())


def _split_reports(logs: Path) -> list[Report]:
    text = (logs / "SplitManifestFunction.log").read_text(errors="replace")
    return [report for line in text.splitlines() if (report := parse_report(line)) is not None]


def test_a_gzip_of_1e8_newlines_fails_its_job_with_the_cap_it_hit(
    bomb_stack: tuple[Path, StackRef], tmp_path: Path
) -> None:
    logs, ref = bomb_stack
    client = Client(ref)
    warm = tmp_path / "warm.txt"
    warm.write_text("not a url\n")
    client.watch(client.submit(warm), lambda _: None, timeout=300)
    before = _split_reports(logs)[-1]  # the worker's peak RSS after a one-line manifest
    bomb = tmp_path / "bomb.txt.gz"
    _gzip_of_newlines(bomb, NEWLINES)
    assert bomb.stat().st_size < 110_000

    job = client.watch(client.submit(bomb), lambda _: None, timeout=600)

    assert job.status.value == "FAILED"
    assert job.error is not None
    assert "more than 2000000 lines (blank lines and comments included)" in job.error
    assert client.summary(job.job_id)["error"] == job.error
    after = _split_reports(logs)[-1]
    peaks = f"{before.max_memory_used_mb} -> {after.max_memory_used_mb} MB"
    print(f"bomb split: {after.duration_ms:.0f} ms, peak RSS {peaks}")
    # Read 64 KiB at a time: the 100 MB it expands to never sits in memory.
    assert after.max_memory_used_mb - before.max_memory_used_mb < 32
