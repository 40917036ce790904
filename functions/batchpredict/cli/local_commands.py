"""``batchpredict local``: the embedded stack on loopback (local/), for one job (``run``) or in the
foreground for the other commands (``up``, ``down``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from batchpredict.cli.client import Client
from batchpredict.cli.group import main
from batchpredict.cli.job_commands import follow
from batchpredict.cli.render import results_table
from batchpredict.cli.report import write_report
from batchpredict.cli.shared import (
    DEFAULT_BUNDLE,
    F,
    allow_network_option,
    examples,
    fail,
    friendly_errors,
    int_option,
    s3_client,
)
from batchpredict.cli.targets import local_state, process_identity
from batchpredict.fetch import parse_networks, wide_allowances

# Where --serve copies its folder in the samples bucket: IMAGE_SOURCE_PREFIXES takes no whole bucket.
SERVED_PREFIX = "served/"


@main.group()
def local() -> None:
    """The embedded local stack: the whole pipeline on loopback, no AWS account."""


def local_settings(
    model: str | None, workers: int | None, allowed: tuple[str, ...], samples: Any = None
) -> Any:
    """The local stack's settings; ``samples`` (a started FileServer) is the one loopback address
    image URLs may reach, and its bucket the one s3:// source (moto and DynamoDB Local stay out)."""
    from batchpredict.local.provision import LocalOptions, samples_bucket
    from batchpredict.model import available_cpus

    bundle = Path(model) if model else DEFAULT_BUNDLE
    if not (bundle / "model.json").is_file():
        raise fail(f"no model bundle at {bundle} (build it with `make model`, or pass --model DIR)")
    cpus = available_cpus()
    count = workers or cpus  # one predict worker per core, one inference thread each
    networks = (*([samples.url.removeprefix("http://")] if samples else []), *allowed)
    try:
        wide = wide_allowances(parse_networks(",".join(networks)))
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if wide:
        click.echo(f"warning: image URLs may reach every host of {', '.join(wide)}", err=True)
    options = LocalOptions(model_uri=str(bundle.resolve()), predict_workers=count)
    sources = f"s3://{samples_bucket(options.prefix)}/{SERVED_PREFIX}" if samples else ""
    return replace(
        options,
        allowed_networks=",".join(networks),
        environment={"INFERENCE_THREADS": str(max(1, cpus // count))},
        parameters={"ImageSourcePrefixes": sources, "ApiImageSourcePrefixes": sources},
    )


def local_options(command: F) -> F:
    """--model/--workers/--allow-network of `local run` and `local up`."""
    command = click.option("--model", help="Model bundle folder (default: the one `make model` built).")(
        command
    )
    command = click.option(
        "--workers", type=click.IntRange(1, 64), help="predict worker processes (default: one per core)."
    )(command)
    command = allow_network_option(
        "A network or ADDRESS:PORT image URLs may reach (only the --serve server is, by default)."
    )(command)
    return friendly_errors(command)


def _serve(samples: Any, bucket: str, folder: Path) -> dict[str, str]:
    """Copy FOLDER (served over HTTP by ``samples``) under SERVED_PREFIX in the samples bucket;
    the placeholder values."""
    s3 = s3_client()
    s3.create_bucket(Bucket=bucket)
    for path in sorted(folder.iterdir()):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{SERVED_PREFIX}{path.name}")
    return {"${SAMPLES_URL}": samples.url, "${SAMPLES_S3}": f"s3://{bucket}/{SERVED_PREFIX.rstrip('/')}"}


@local.command(
    "run",
    epilog=examples(
        "batchpredict local run sample_manifests/demo.jsonl --serve build/samples -o build/demo",
        "batchpredict local run urls.txt.gz --model build/model/resnet-18 --workers 2",
    ),
)
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Where results.jsonl, _summary.json and report.html go.",
)
@click.option(
    "--serve",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Serve this folder on loopback and in a samples bucket (fills ${SAMPLES_URL}, ${SAMPLES_S3}).",
)
@click.option(
    "--timeout", type=float, default=1800.0, show_default=True, help="Give up after this many seconds."
)
@int_option("--show", 0, 10_000, 20, "Result lines to print as a table.")
@local_options
def local_run(
    manifest: Path,
    output: Path,
    serve: Path | None,
    timeout: float,
    show: int,
    model: str | None,
    workers: int | None,
    allowed: tuple[str, ...],
) -> None:
    """Start the local stack, run MANIFEST as a job, download its results, stop the stack."""
    import tempfile

    from batchpredict.local.placeholders import expand, uses_placeholders
    from batchpredict.local.provision import samples_bucket
    from batchpredict.local.servers import FileServer
    from batchpredict.local.stack import LocalStack

    if not serve and uses_placeholders(manifest):
        raise fail(f"{manifest} uses ${{SAMPLES_URL}}/${{SAMPLES_S3}}: pass --serve DIR to fill them in")
    samples = FileServer(serve) if serve else None
    options = local_settings(model, workers, allowed, samples)
    stack = LocalStack(options, log_dir=local_state().log_dir, warn=lambda m: click.echo(m, err=True))
    stoppers: list[Callable[[], None]] = []
    if samples is not None:
        samples.start()
        stoppers.append(samples.stop)
    click.echo("starting the local stack (moto server, DynamoDB Local, worker processes)...", err=True)
    try:
        ref = stack.start()
        with tempfile.TemporaryDirectory() as workdir:
            values = _serve(samples, samples_bucket(options.prefix), serve) if serve else {}
            client = Client(ref)
            job_id = client.submit(expand(manifest, values, Path(workdir)), manifest.name)
            click.echo(f"job {job_id}", err=True)
            job = follow(client, job_id, timeout=timeout)
            output.mkdir(parents=True, exist_ok=True)
            if job.status.value == "FAILED":
                raise fail(f"job {job_id} failed: {job.error}")
            records = list(client.result_lines(job_id))
            summary = client.summary(job_id)
            (output / "results.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
            (output / "_summary.json").write_text(json.dumps(summary, indent=2))
            networks = tuple(options.allowed_networks.split(","))
            write_report(summary, records, output / "report.html", networks, s3_client)
            if show:
                click.echo(results_table(records[:show]), nl=False)
                if len(records) > show:
                    click.echo(f"... {len(records) - show} more lines in {output / 'results.jsonl'}")
            click.echo(
                f"\n{summary['status']}: {summary['succeeded']} succeeded, {summary['failed']} failed"
                f" {summary['errors_by_code'] or ''} in {summary['duration_seconds']}s"
            )
            click.echo(
                f"wrote {output / 'results.jsonl'}, {output / '_summary.json'}, {output / 'report.html'}"
            )
    finally:
        for stop in reversed(stoppers):
            stop()
        stack.stop()


@local.command(
    "up",
    epilog=examples(
        "batchpredict local up                 # then, in another terminal:",
        "batchpredict submit photos.jsonl --wait",
        "batchpredict local up --model build/model/resnet-18 --allow-network 10.0.0.0/8",
    ),
)
@local_options
def local_up(model: str | None, workers: int | None, allowed: tuple[str, ...]) -> None:
    """Start the local stack in the foreground (Ctrl-C or `batchpredict local down` stops it)."""
    import signal
    import threading

    from batchpredict.local.stack import LocalStack

    state = local_state()
    if state.alive():
        raise fail("a local stack is already running (batchpredict local down)")
    stack = LocalStack(
        local_settings(model, workers, allowed), log_dir=state.log_dir, warn=lambda m: click.echo(m, err=True)
    )
    ref = stack.start()
    click.echo(f"function logs  {state.log_dir}/")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        state.save(ref, os.getpid())
        for name, value in (
            ("input bucket", ref.input_bucket),
            ("output bucket", ref.output_bucket),
            ("table", ref.table),
        ):
            click.echo(f"{name:<15}{value}")
        click.echo(f"predict API    {ref.api_url}?url=…")
        click.echo("\nfor the AWS CLI:")
        for name, value in (ref.endpoints or {}).items():
            click.echo(f"  export {name}={value}")
        click.echo("\nrunning; Ctrl-C to stop")
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        state.clear()
        stack.stop()
        click.echo("stopped", err=True)


@local.command("down", epilog=examples("batchpredict local down"))
@friendly_errors
def local_down() -> None:
    """Stop the local stack that `batchpredict local up` started."""
    import signal
    import time

    state = local_state()
    pid = state.pid()
    if pid is None:
        raise fail("no local stack is running")
    if not state.signal(signal.SIGTERM):  # only the very process that wrote the state
        state.clear()
        now = process_identity(pid)
        if now is None:
            raise fail("the local stack was not running (stale state removed)")
        command = " ".join(now["cmdline"]).strip()[:80]
        raise fail(
            f"the local stack was not running (stale state removed): pid {pid} is now another"
            f" process ({command or 'no command line'}), left alone"
        )
    for _ in range(100):
        if state.pid() is None:
            click.echo("stopped")
            return
        time.sleep(0.2)
    raise fail(f"the local stack (pid {pid}) did not stop within 20s")
