"""The commands on a stack's jobs: submit, status, watch, cancel, jobs, results, retry-failed,
report; against the local stack or a deployed one (targets.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from batchpredict import aws
from batchpredict.cli.client import Client, Progress
from batchpredict.cli.group import main
from batchpredict.cli.render import job_view, jobs_view, progress_line, results_view
from batchpredict.cli.report import write_report
from batchpredict.cli.shared import allow_network_option, examples, fail, int_option, output_option
from batchpredict.cli.targets import StackTarget, stack_options
from batchpredict.jobs import Job, JobStatus
from batchpredict.options import (
    FIDELITIES,
    MAX_FAILURES_COUNT,
    MAX_TIMEOUT_SECONDS,
    MAX_TOP_K,
    MIN_TIMEOUT_SECONDS,
)
from batchpredict.records import FAILED

JOB = "job-30481560046df9c31196"  # in --help examples


def follow(client: Client, job_id: str, timeout: float | None = None) -> Job:
    """Follow a job: a live bar on a terminal, the final line otherwise."""
    interactive = sys.stdout.isatty()
    last: list[Progress] = []

    def show(progress: Progress) -> None:
        last[:] = [progress]
        if interactive:
            click.echo(progress_line(progress), nl=False)

    job = client.watch(job_id, show, timeout=timeout)
    click.echo("" if interactive else progress_line(last[-1]).lstrip("\r"))
    return job


def _job_options(metadata: Mapping[str, object]) -> Any:
    """The job's options from the command's (``x-amz-meta-<option>: value``, None: not given),
    checked as the splitter will check them (options.parse_options)."""
    from batchpredict.options import OptionError, parse_options

    try:
        return parse_options({k: str(v) for k, v in metadata.items() if v is not None})
    except OptionError as exc:
        raise fail(str(exc)) from exc


@main.command(
    epilog=examples(
        "batchpredict submit photos.jsonl --wait",
        "batchpredict submit photos.csv.gz --key nightly/photos.csv.gz",
        "batchpredict submit urls.txt --name nightly --tag team=vision --top-k 3 --max-failures 5%",
        "batchpredict submit urls.txt --max-failures 1000 --timeout 7200",
        "batchpredict submit photos.jsonl --dry-run",
        "batchpredict submit urls.txt --fidelity fast",
        "batchpredict submit our-cdn-urls.txt --ignore-robots",
        "BATCHPREDICT_STACK=batchpredict batchpredict submit urls.txt --profile prod --region eu-west-1",
    )
)
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--wait", is_flag=True, help="Show a live progress bar until the job ends.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Upload nothing: read MANIFEST as the splitter would (its lines, those that would fail, by"
    " code) and estimate the job's GB-s, $ and wall time from the stack's recent jobs.",
)
@click.option("--key", help="Object name under manifests/ (default: the file name).")
@click.option("--name", help="The job's name (x-amz-meta-name): shown by status/jobs, in events.")
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="A tag (x-amz-meta-tags). Repeatable.")
@click.option(
    "--top-k",
    "top_k",
    type=click.IntRange(1, MAX_TOP_K),
    help=f"Classes per image for this job (1-{MAX_TOP_K}; default the function's TOP_K).",
)
@click.option(
    "--max-failures",
    metavar="N|P%",
    help="Stop the job (FAILED tolerated_failures_exceeded) once more than N lines"
    f" (0-{MAX_FAILURES_COUNT:,}), or P% of the finished ones (0-100, up to 4 decimals), failed.",
)
@click.option(
    "--timeout",
    type=click.IntRange(MIN_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS),
    metavar="SECONDS",
    help="How long the job may run (x-amz-meta-timeout):"
    f" {MIN_TIMEOUT_SECONDS}-{MAX_TIMEOUT_SECONDS} seconds (7 days).",
)
@click.option(
    "--notify", type=click.Choice(["email"]), help="Mail this job's end (the stack's NotificationEmail)."
)
@click.option(
    "--fidelity",
    type=click.Choice(FIDELITIES),
    help="exact (default): the reference preprocessing, bit for bit; fast: JPEGs drafted and big"
    " pictures reduced before the resize, far less decode CPU (x-amz-meta-fidelity).",
)
@click.option(
    "--host-rps",
    type=click.FloatRange(0.1, 1000),
    metavar="N",
    help="At most N requests a second to any one image host for this job (x-amz-meta-host-rps;"
    " below the stack's HostRps only: it lowers, never raises).",
)
@click.option(
    "--ignore-robots",
    is_flag=True,
    help="For your own hosts only: fetch images whose X-Robots-Tag says noai, noimageai or none, and"
    " skip robots.txt (x-amz-meta-robots=ignore; by default they fail robots_disallowed).",
)
@stack_options
def submit(
    manifest: Path,
    wait: bool,
    dry_run: bool,
    key: str | None,
    name: str | None,
    tags: tuple[str, ...],
    top_k: int | None,
    max_failures: str | None,
    timeout: int | None,
    notify: str | None,
    fidelity: str | None,
    host_rps: float | None,
    ignore_robots: bool,
    target: StackTarget,
) -> None:
    """Upload MANIFEST under manifests/ and print the job id; the options travel as the
    object's S3 user metadata (as `aws s3 cp --metadata name=…,top-k=3` would send them)."""
    metadata = {"name": name, "tags": ",".join(tags) or None, "top-k": top_k, "max-failures": max_failures}
    rate = None if host_rps is None else f"{host_rps:g}"
    robots = "ignore" if ignore_robots else None
    asked = {"timeout": timeout, "notify": notify, "fidelity": fidelity, "host-rps": rate, "robots": robots}
    options = _job_options(metadata | asked)
    client = target.client()
    if dry_run:
        found = client.dry_run(manifest, key, options)
        click.echo(found.text(), nl=False)
        if found.scan.error:
            raise fail("the manifest cannot be split")
        return
    job_id = client.submit(manifest, key, options)
    click.echo(job_id)
    if wait:
        job = follow(client, job_id)
        if job.status.value == "FAILED":
            raise fail(f"job {job_id} failed: {job.error}")


@main.command(
    epilog=examples(
        f"batchpredict status {JOB}",
        f"batchpredict status {JOB} --output json | jq .succeeded",
    )
)
@click.argument("job_id")
@output_option("table")
@stack_options
def status(job_id: str, output: str, target: StackTarget) -> None:
    """Show a job's record."""
    click.echo(job_view(target.client().job(job_id), output), nl=False)


@main.command(epilog=examples(f"batchpredict watch {JOB}", "batchpredict watch --events --idle 5"))
@click.argument("job_id", required=False)
@click.option(
    "--events", is_flag=True, help="Print job state change events (JSON) as they arrive (local stack)."
)
@int_option("--idle", 1, 3600, 60, "With --events: stop after this many seconds without one.")
@stack_options
def watch(job_id: str | None, events: bool, idle: int, target: StackTarget) -> None:
    """Follow a job with a progress bar until it ends; or, with --events, the job state change
    events of the local stack as they arrive (each event is read once)."""
    client = target.client()
    if events:
        for event in client.events(idle):
            click.echo(json.dumps(event))
        return
    if not job_id:
        raise fail("give a JOB to follow, or --events")
    click.echo(job_view(follow(client, job_id), "table"), nl=False)


@main.command(epilog=examples(f"batchpredict cancel {JOB}", f"batchpredict cancel {JOB} --wait"))
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Follow the job until it has ended.")
@stack_options
def cancel(job_id: str, wait: bool, target: StackTarget) -> None:
    """Cancel a SPLITTING or RUNNING job: no more images are fetched; every line not yet done
    ends FAILED `cancelled`, and the job CANCELLED with a complete results.jsonl."""
    client = target.client()
    job = client.cancel(job_id)
    click.echo(f"{job.job_id} {job.status.value}")
    if wait:
        click.echo(job_view(follow(client, job_id), "table"), nl=False)


def _since(value: str | None) -> str | None:
    """An ISO time as is, or a duration back from now (30m, 12h, 7d)."""
    import re
    from datetime import UTC, datetime, timedelta

    if not value:
        return None
    match = re.fullmatch(r"(\d+)([mhd])", value)
    if not match:
        return value
    unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    then = datetime.now(UTC) - timedelta(**{unit: int(match.group(1))})
    return then.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@main.command(
    epilog=examples(
        "batchpredict jobs --limit 5",
        "batchpredict jobs --status RUNNING --status CANCELLING --since 2h --name nightly",
        "batchpredict jobs --manifest s3://INPUT-BUCKET/manifests/photos.txt",
        "batchpredict jobs --output text | cut -f1,2",
        "batchpredict jobs --stack batchpredict --profile prod --output json",
    )
)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in JobStatus], case_sensitive=False),
    help="Only jobs in this status. Repeatable.",
)
@click.option("--name", help="Only jobs of this name.")
@click.option("--since", metavar="TIME", help="Only jobs created since: an ISO time, or 30m / 12h / 7d ago.")
@click.option("--manifest", metavar="S3_URI", help="The jobs of one manifest (s3://bucket/manifests/key).")
@output_option("table")
@stack_options
def jobs(
    limit: int,
    statuses: tuple[str, ...],
    name: str | None,
    since: str | None,
    manifest: str | None,
    output: str,
    target: StackTarget,
) -> None:
    """List recent jobs, newest first (from the table's by-status index: no scan)."""
    client = target.client()
    if manifest:
        found = client.jobs_of_manifest(manifest)[:limit]
    else:
        wanted = tuple(JobStatus(s.upper()) for s in statuses)
        found = client.recent_jobs(limit, wanted, _since(since), name)
    click.echo(jobs_view(found, output), nl=False)


@main.command(
    epilog=examples(
        f"batchpredict results {JOB} --output table",
        f"batchpredict results {JOB} --failed-only --output csv --file failed.csv",
        f"batchpredict results {JOB} --from-table | jq -r .predictions[0].label",
    )
)
@click.argument("job_id")
@click.option("--file", "to_file", type=click.Path(path_type=Path), help="Write here instead of stdout.")
@click.option("--failed-only", is_flag=True, help="Only the lines that failed.")
@output_option("json", "csv", help_extra=" csv: a header and one row a line, top-1 only.")
@click.option("--from-table", is_flag=True, help="Query DynamoDB (manifest order) instead of results.jsonl.")
@stack_options
def results(
    job_id: str,
    to_file: Path | None,
    failed_only: bool,
    output: str,
    from_table: bool,
    target: StackTarget,
) -> None:
    """A job's results, from results.jsonl in S3 or from the table."""
    records = [
        r for r in target.client().result_lines(job_id, from_table) if not failed_only or r.status == FAILED
    ]
    text = results_view(records, output)
    if to_file:
        to_file.write_text(text)
        click.echo(f"{len(records)} lines -> {to_file}", err=True)
    else:
        click.echo(text, nl=False)


@main.command(name="retry-failed", epilog=examples(f"batchpredict retry-failed {JOB} --wait"))
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Follow the new job until it ends.")
@stack_options
def retry_failed(job_id: str, wait: bool, target: StackTarget) -> None:
    """Submit a job's failed lines as a new job."""
    client = target.client()
    new_id, count = client.retry_failed(job_id)
    click.echo(new_id)
    click.echo(f"{count} failed lines resubmitted", err=True)
    if wait:
        follow(client, new_id)


@main.command(
    epilog=examples(
        f"batchpredict report {JOB} -o report.html",
        f"batchpredict report {JOB} --stack batchpredict --allow-network 10.0.0.0/8",
    )
)
@click.argument("job_id")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=Path("report.html"), show_default=True
)
@allow_network_option("Networks thumbnails may be fetched from (the local stack adds 127.0.0.0/8).")
@stack_options
def report(job_id: str, output: Path, allowed: tuple[str, ...], target: StackTarget) -> None:
    """Write a self-contained HTML page: thumbnails, top-5 bars, failures, summary."""
    client = target.client()
    if target.local:
        allowed = (*allowed, "127.0.0.0/8")
    write_report(
        client.summary(job_id),
        client.result_lines(job_id),
        output,
        allowed,
        lambda: aws.client("s3", session=target.session()),
    )
    click.echo(str(output))
