"""The user's commands: ``batchpredict --help``. Handlers and logic live elsewhere; this shapes output."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import click

from batchpredict.bundle import resolve_bundle
from batchpredict.config import ConfigError, EngineConfig, engine_config
from batchpredict.errors import BundleError, ErrorCode, PredictionError
from batchpredict.fetch import Fetcher, FetchLimits, parse_networks, wide_allowances
from batchpredict.jobs import JobStatus
from batchpredict.model import load_model
from batchpredict.predictor import predict_payloads
from batchpredict.render import (
    OUTPUT_HELP,
    OUTPUTS,
    job_view,
    jobs_view,
    prediction_line,
    predictions_view,
    results_table,
    results_view,
)

F = TypeVar("F", bound=Callable[..., Any])

# An editable install (make demo / make test) finds the bundle that `make model` built.
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "build" / "model" / "efficientnet-lite0"
URL_PREFIXES = ("http://", "https://", "s3://")


def _engine_config(model: str | None, max_batch: int) -> EngineConfig:
    env = dict(os.environ)
    if model:
        env["MODEL_URI"] = model
    env.setdefault("MODEL_URI", str(DEFAULT_BUNDLE))
    env["MAX_BATCH"] = str(max_batch)
    return engine_config(env)


def _read_source(source: str, fetcher: Fetcher) -> bytes | PredictionError:
    if source.startswith(URL_PREFIXES) or "://" in source:
        try:
            return fetcher.fetch(source).data
        except PredictionError as exc:
            return exc
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        return PredictionError(ErrorCode.FILE_NOT_FOUND, f"cannot read {source}: {exc.strerror}")


def _s3_client() -> object:
    from batchpredict import aws

    return aws.client("s3")


def output_option(default: str, *extra: str, help_extra: str = "") -> Callable[[F], F]:
    """The one ``--output`` of every command that prints records (see render.py)."""
    return click.option(
        "--output",
        type=click.Choice([*OUTPUTS, *extra]),
        default=default,
        show_default=True,
        help=OUTPUT_HELP + help_extra,
    )


def examples(*lines: str) -> str:
    """A command's epilog: examples shown by --help as written (\b keeps click from rewrapping)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


@click.group()
@click.version_option(package_name="batchpredict")
def main() -> None:
    """Batch ImageNet predictions with MXNet: locally, or on AWS Lambda."""


@main.command(
    epilog=examples(
        "batchpredict predict build/samples/coffee.png https://example.com/cat.jpg",
        "batchpredict predict --output json --top-k 3 build/samples/*.jpg | jq .predictions[0].label",
        "batchpredict predict --model build/model/resnet-18 s3://bucket/photos/cat.jpg",
    )
)
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--top-k",
    "top_k",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="How many classes to print per image.",
)
@output_option("table")
@click.option(
    "--model", help="Model bundle folder or s3:// prefix (default: $MODEL_URI or the built bundle)."
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 256),
    default=32,
    show_default=True,
    help="Largest batch of one forward pass.",
)
@click.option(
    "--allow-network",
    "allowed",
    multiple=True,
    metavar="CIDR",
    help="Let URLs reach this private/loopback network (e.g. 127.0.0.0/8). Repeatable.",
)
@click.option(
    "--stack",
    "stack_name",
    metavar="NAME",
    help="Ask this deployed stack's predict API instead, each request signed with SigV4.",
)
@click.option("--profile", help="With --stack: the AWS profile to sign with (default: the standard chain).")
@click.option("--region", help="With --stack: the stack's region (default: the profile's).")
def predict(
    sources: tuple[str, ...],
    top_k: int,
    output: str,
    model: str | None,
    max_batch: int,
    allowed: tuple[str, ...],
    stack_name: str | None,
    profile: str | None,
    region: str | None,
) -> None:
    """Predict the top-k ImageNet classes of image files or URLs (http, https, s3)."""
    if stack_name:
        _predict_remote(StackTarget(stack_name, profile, region), sources, top_k, output)
        return
    if profile or region:
        raise _fail("--profile and --region go with --stack NAME")
    try:
        config = _engine_config(model, max_batch)
        engine = load_model(resolve_bundle(config.model_uri, _s3_client), config.max_batch, config.threads)
        limits = FetchLimits(allowed_networks=parse_networks(",".join(allowed)))
    except (ConfigError, BundleError, ValueError) as exc:
        raise click.ClickException(
            f"{exc} (build the default bundle with `make model`)"
            if isinstance(exc, BundleError) and not model
            else str(exc)
        ) from exc
    fetcher = Fetcher(limits, s3_client_factory=_s3_client)
    try:
        payloads = [_read_source(source, fetcher) for source in sources]
    finally:
        fetcher.close()
    outcomes = predict_payloads(engine, payloads, top_k)
    click.echo(predictions_view(sources, outcomes, output), nl=False)
    if any(outcome.error is not None for outcome in outcomes):
        raise SystemExit(1)


# --- the pipeline commands -----------------------------------------------------------------

# Where `local up` keeps its state file and the functions' logs; BATCHPREDICT_LOCAL_DIR moves it.
LOCAL_DIR = Path(os.environ.get("BATCHPREDICT_LOCAL_DIR") or DEFAULT_BUNDLE.parents[1] / "local")
STATE_FILE = LOCAL_DIR / "stack.json"


def _fail(message: str) -> click.ClickException:
    return click.ClickException(message)


def friendly_errors(command: F) -> F:
    """One clear line, no traceback, for what the user can fix."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            NoRegionError,
            ProfileNotFound,
        )

        from batchpredict.client import UserError

        try:
            return command(*args, **kwargs)
        except UserError as exc:
            raise _fail(str(exc)) from exc
        except NoCredentialsError as exc:
            raise _fail(
                "no AWS credentials: configure them (aws configure, --profile, AWS_PROFILE) or use --local"
            ) from exc
        except NoRegionError as exc:
            raise _fail("no AWS region: pass --region, or set AWS_REGION or the profile's region") from exc
        except ProfileNotFound as exc:
            raise _fail(f"{exc} (see `aws configure list-profiles`)") from exc
        except EndpointConnectionError as exc:
            raise _fail(
                f"cannot reach {exc.kwargs.get('endpoint_url')}: is the stack running? "
                "(batchpredict local up)"
            ) from exc
        except ClientError as exc:
            raise _fail(f"AWS said: {exc}") from exc

    return wrapper  # type: ignore[return-value]


STACK_ENV = "BATCHPREDICT_STACK"
JOB = "job-30481560046df9c31196"  # in --help examples


@dataclass(frozen=True)
class StackTarget:
    """The stack a command talks to, a deployed one by name or (``name`` None) the local one,
    and the AWS profile and region a deployed one is reached with."""

    name: str | None = None
    profile: str | None = None
    region: str | None = None

    @property
    def local(self) -> bool:
        return self.name is None

    def session(self) -> Any:
        """The boto3 session every client of this command is made from."""
        import boto3

        if self.local:
            _local_ref()  # points this process at the local stack's endpoints and credentials
            return boto3.session.Session()
        return boto3.session.Session(profile_name=self.profile, region_name=self.region)

    def aws_client(self, service: str) -> Any:
        from batchpredict import aws

        return aws.client(service, session=self.session())

    def client(self) -> Any:
        from batchpredict.client import Client, StackRef

        if self.local:
            return Client(_local_ref())
        assert self.name is not None
        ref = StackRef.from_cloudformation(self.name, self.aws_client("cloudformation"))
        return Client(ref, s3=self.aws_client("s3"), dynamodb=self.aws_client("dynamodb"))


def _stack_target(
    stack_name: str | None, use_local: bool, profile: str | None, region: str | None
) -> StackTarget:
    from click.core import ParameterSource

    from_env = click.get_current_context().get_parameter_source("stack_name") == ParameterSource.ENVIRONMENT
    if use_local and stack_name and not from_env:
        raise _fail("give either --local or --stack NAME, not both")
    if use_local or not stack_name:
        if profile or region:
            raise _fail(f"--profile and --region are for a deployed stack (--stack NAME or ${STACK_ENV})")
        return StackTarget()
    return StackTarget(stack_name, profile, region)


def stack_options(command: F) -> F:
    """--stack/--local/--profile/--region, handed to the command as one ``target: StackTarget``."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        stack_name: str | None,
        use_local: bool,
        profile: str | None,
        region: str | None,
        **kwargs: Any,
    ) -> Any:
        return command(*args, target=_stack_target(stack_name, use_local, profile, region), **kwargs)

    options = [
        click.option(
            "--stack",
            "stack_name",
            metavar="NAME",
            envvar=STACK_ENV,
            help=f"A deployed stack (names from its CloudFormation outputs); default ${STACK_ENV}.",
        ),
        click.option(
            "--local",
            "use_local",
            is_flag=True,
            help=f"The local stack (the default unless --stack or ${STACK_ENV} names one).",
        ),
        click.option("--profile", metavar="NAME", help="AWS profile for a deployed stack (as the AWS CLI)."),
        click.option("--region", metavar="REGION", help="AWS region of a deployed stack (as the AWS CLI)."),
    ]
    decorated: Any = friendly_errors(wrapper)
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


@friendly_errors
def _predict_remote(target: StackTarget, sources: tuple[str, ...], top_k: int, output: str) -> None:
    """``predict --stack``: the stack's predict API, SigV4-signed with the target's session."""
    from batchpredict.apiclient import ApiError, outcome_of, predict_remote
    from batchpredict.client import StackRef

    files = [source for source in sources if not source.startswith(URL_PREFIXES)]
    if files:
        raise _fail(f"the API takes URLs, not files: {', '.join(files)}")
    assert target.name is not None
    ref = StackRef.from_cloudformation(target.name, target.aws_client("cloudformation"))
    if not ref.api_url:
        raise _fail(f"stack {target.name!r} has no PredictApiUrl output")
    try:
        records = predict_remote(ref.api_url, list(sources), target.session())
    except ApiError as exc:
        raise _fail(str(exc)) from exc
    outcomes = [outcome_of(record, top_k) for record in records]
    click.echo(predictions_view(sources, outcomes, output), nl=False)
    if any(outcome.error is not None for outcome in outcomes):
        raise SystemExit(1)


def _local_stack_alive() -> bool:
    """A state file whose process still runs (a stale one, after kill -9, does not count)."""
    try:
        os.kill(int(json.loads(STATE_FILE.read_text())["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return False
    return True


def _local_ref() -> Any:
    from batchpredict.client import StackRef, UserError

    if not STATE_FILE.is_file():
        raise UserError(
            "no local stack is running: start one with `batchpredict local up`, or pass --stack NAME"
        )
    if not _local_stack_alive():
        raise UserError("the local stack is not running any more: start it with `batchpredict local up`")
    state = json.loads(STATE_FILE.read_text())
    ref = StackRef(**state["stack"])
    os.environ.update(ref.endpoints or {})
    return ref


def _progress_line(progress: Any) -> str:
    job = progress.job
    total = job.total if job.split_done else None
    done = progress.done
    width = 30
    filled = int(width * done / total) if total else 0
    bar = "#" * filled + "." * (width - filled)
    eta = f"{progress.eta_seconds:4.0f}s" if progress.eta_seconds is not None else "   ?"
    count = f"{done}/{total if total is not None else '?'}"
    rate = f"{progress.rate:5.1f} images/s"
    return f"\r[{bar}] {count}  failed {job.failed}  {rate}  ETA {eta}  {job.status.value:<22}"


def _watch(client: Any, job_id: str, timeout: float | None = None) -> Any:
    """Follow a job: a live bar on a terminal, the final line otherwise."""
    interactive = sys.stdout.isatty()
    last: list[Any] = []

    def show(progress: Any) -> None:
        last[:] = [progress]
        if interactive:
            click.echo(_progress_line(progress), nl=False)

    job = client.watch(job_id, show, timeout=timeout)
    click.echo("" if interactive else _progress_line(last[-1]).lstrip("\r"))
    return job


def _job_options(
    name: str | None, tags: tuple[str, ...], top_k: int | None, max_failures: str | None, notify: str | None
) -> Any:
    """The job's options, checked as the splitter will check them (options.parse_options)."""
    from batchpredict.options import OptionError, parse_options

    metadata = {
        "name": name,
        "tags": ",".join(tags) or None,
        "top-k": str(top_k) if top_k is not None else None,
        "max-failures": max_failures,
        "notify": notify,
    }
    try:
        return parse_options({k: v for k, v in metadata.items() if v is not None})
    except OptionError as exc:
        raise _fail(str(exc)) from exc


@main.command(
    epilog=examples(
        "batchpredict submit photos.jsonl --wait",
        "batchpredict submit photos.csv.gz --key nightly/photos.csv.gz",
        "batchpredict submit urls.txt --name nightly --tag team=vision --top-k 3 --max-failures 5%",
        "BATCHPREDICT_STACK=batchpredict batchpredict submit urls.txt --profile prod --region eu-west-1",
    )
)
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--wait", is_flag=True, help="Show a live progress bar until the job ends.")
@click.option("--key", help="Object name under manifests/ (default: the file name).")
@click.option("--name", help="The job's name (x-amz-meta-name): shown by status/jobs, in events.")
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="A tag (x-amz-meta-tags). Repeatable.")
@click.option("--top-k", "top_k", type=int, help="Classes per image for this job (1-100; default TOP_K).")
@click.option(
    "--max-failures",
    metavar="N|P%",
    help="Stop the job (FAILED tolerated_failures_exceeded) once more than N lines, or P%, failed.",
)
@click.option(
    "--notify", type=click.Choice(["email"]), help="Mail this job's end (the stack's NotificationEmail)."
)
@stack_options
def submit(
    manifest: Path,
    wait: bool,
    key: str | None,
    name: str | None,
    tags: tuple[str, ...],
    top_k: int | None,
    max_failures: str | None,
    notify: str | None,
    target: StackTarget,
) -> None:
    """Upload MANIFEST under manifests/ and print the job id; the options travel as the
    object's S3 user metadata (as `aws s3 cp --metadata name=…,top-k=3` would send them)."""
    options = _job_options(name, tags, top_k, max_failures, notify)
    client = target.client()
    job_id = client.submit(manifest, key, options)
    click.echo(job_id)
    if wait:
        job = _watch(client, job_id)
        if job.status.value == "FAILED":
            raise _fail(f"job {job_id} failed: {job.error}")


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
@click.option(
    "--idle",
    type=click.IntRange(1, 3600),
    default=60,
    show_default=True,
    help="With --events: stop after this many seconds without one.",
)
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
        raise _fail("give a JOB to follow, or --events")
    click.echo(job_view(_watch(client, job_id), "table"), nl=False)


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
        click.echo(job_view(_watch(client, job_id), "table"), nl=False)


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
        r
        for r in target.client().result_lines(job_id, from_table)
        if not failed_only or r["status"] == "FAILED"
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
        _watch(client, new_id)


def _thumbnails(
    allowed: tuple[str, ...], s3_client_factory: Callable[[], Any] = _s3_client
) -> Callable[[str], bytes | None]:
    fetcher = Fetcher(
        FetchLimits(allowed_networks=parse_networks(",".join(allowed))), s3_client_factory=s3_client_factory
    )

    def fetch(url: str) -> bytes | None:
        try:
            return fetcher.fetch(url).data
        except PredictionError:
            return None

    return fetch


def write_report(
    summary: dict[str, Any],
    records: Any,
    output: Path,
    allowed: tuple[str, ...],
    s3_client_factory: Callable[[], Any] = _s3_client,
) -> None:
    from batchpredict.report import render_report

    output.write_text(
        render_report(summary, records, _thumbnails(allowed, s3_client_factory)), encoding="utf-8"
    )


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
@click.option(
    "--allow-network",
    "allowed",
    multiple=True,
    metavar="CIDR",
    help="Networks thumbnails may be fetched from (the local stack adds 127.0.0.0/8).",
)
@stack_options
def report(job_id: str, output: Path, allowed: tuple[str, ...], target: StackTarget) -> None:
    """Write a self-contained HTML page: thumbnails, top-5 bars, failures, summary."""
    client = target.client()
    if target.local:
        allowed = (*allowed, "127.0.0.0/8")
    write_report(
        client.summary(job_id), client.result_lines(job_id), output, allowed, lambda: target.aws_client("s3")
    )
    click.echo(str(output))


# --- model bundles ---------------------------------------------------------------------------

SAMPLE_PHOTO = DEFAULT_BUNDLE.parents[1] / "samples" / "coffee.png"


def _numbers(count: int, kind: type) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    """A click callback for "a,b,c": COUNT numbers of KIND, as a tuple."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            numbers = tuple(kind(v) for v in value.split(","))
        except ValueError:
            numbers = ()
        if len(numbers) != count:
            raise click.BadParameter(f"expected {count} comma-separated numbers, got {value!r}")
        return numbers

    return parse


def _per_channel(name: str, default: str, help_text: str) -> Callable[[F], F]:
    return click.option(
        name, callback=_numbers(3, float), default=default, show_default=True, metavar="R,G,B", help=help_text
    )


def _sample_photo(path: Path | None) -> tuple[str, bytes]:
    """The photo the import's check runs on: the one given, the sample `make` fetched, or
    (no samples at hand) a generated gradient, which proves the bundle loads all the same."""
    if path is None and SAMPLE_PHOTO.is_file():
        path = SAMPLE_PHOTO
    if path is not None:
        return path.name, path.read_bytes()
    import io

    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, 256, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1][None, :]), axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "a generated gradient", buffer.getvalue()


@main.group()
def model() -> None:
    """Model bundles: import a classic MXNet checkpoint, push a bundle to S3."""


@model.command(
    "import",
    epilog=examples(
        "batchpredict model import resnet-18-symbol.json resnet-18-0000.params synset.txt \\",
        "    --name resnet-18 --version 1 -o build/model/resnet-18",
        "batchpredict model import net-symbol.json net-0000.params synset.txt --name net \\",
        "    --mean 123.68,116.78,103.94 --std 58.4,57.12,57.38 --output-kind logits -o bundles/net",
        "batchpredict predict --model build/model/resnet-18 photo.jpg",
    ),
)
@click.argument("symbol", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("params", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("labels", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name (file names and the model id NAME:VERSION).")
@click.option("--version", "model_version", default="1", show_default=True)
@click.option("--input-name", help="The input variable (default: the one input without parameters).")
@click.option(
    "--input-shape",
    callback=_numbers(3, int),
    metavar="3,N,N",
    help="Input shape (default: the symbol's, else the first common size the network takes).",
)
@_per_channel("--mean", "0,0,0", "Subtracted per channel, on the 0-255 scale.")
@_per_channel("--std", "1,1,1", "Divided by per channel, after the mean.")
@click.option("--resize", type=click.IntRange(1), help="Shorter side before the crop (default: N*256/224).")
@click.option("--crop", type=click.IntRange(1), help="Centre crop; the same as N of --input-shape.")
@click.option("--colour", type=click.Choice(["RGB", "BGR"]), default="RGB", show_default=True)
@click.option(
    "--interpolation",
    type=click.Choice(["bicubic", "bilinear", "nearest", "lanczos"]),
    default="bicubic",
    show_default=True,
)
@click.option(
    "--output-kind",
    type=click.Choice(["probabilities", "logits"]),
    help="Default: probabilities when the symbol ends in a softmax, else logits.",
)
@click.option("--license", "licence", default="unspecified", show_default=True, help="Goes into model.json.")
@click.option(
    "--sample",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The photo the check runs on (default: build/samples/coffee.png).",
)
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@friendly_errors
def model_import(
    symbol: Path,
    params: Path,
    labels: Path,
    name: str,
    model_version: str,
    input_name: str | None,
    input_shape: tuple[int, int, int] | None,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    resize: int | None,
    crop: int | None,
    colour: str,
    interpolation: str,
    output_kind: str | None,
    licence: str,
    sample: Path | None,
    out: Path,
) -> None:
    """Make a verified bundle (model.json with sha256s) from a model-zoo checkpoint
    (SYMBOL = NAME-symbol.json, PARAMS = NAME-0000.params, LABELS = synset.txt, one
    "wnid label" line per class) and check it with one forward pass on a photo."""
    from batchpredict.modelimport import ImportOptions, import_checkpoint

    if input_shape and (input_shape[0] != 3 or input_shape[1] != input_shape[2]):
        raise _fail(f"--input-shape must be 3,N,N, got {','.join(map(str, input_shape))}")
    size = input_shape[1] if input_shape else None
    if crop and size and crop != size:
        raise _fail(f"--crop {crop} differs from the input size {size}: the crop is the model's input")
    options = ImportOptions(
        name=name,
        version=model_version,
        input_name=input_name,
        input_size=size or crop,
        mean=mean,
        std=std,
        resize=resize,
        colour=colour,
        interpolation=interpolation,
        output_kind=output_kind,
        license=licence,
    )
    sample_name, photo = _sample_photo(sample)
    try:
        imported = import_checkpoint(symbol, params, labels, out, options, photo)
    except (BundleError, PredictionError) as exc:
        raise _fail(str(exc)) from exc
    spec = imported.spec
    pre = spec.preprocess
    click.echo(f"{spec.model_id} -> {out}")
    where = imported.sources
    rows = [
        ("input", f"{spec.input_name} {list(spec.input_shape)} {pre.color}  ({where['input']})"),
        (
            "output",
            f"{spec.output_name}, {spec.output_kind}, {len(spec.labels)} classes  ({where['output']})",
        ),
        (
            "preprocess",
            f"resize {pre.resize_shorter} ({pre.interpolation}), crop {pre.crop}, "
            f"mean {list(pre.mean)}, std {list(pre.std)}",
        ),
    ]
    files = spec.raw["files"].items()
    rows += [(role, f"{e['path']}  sha256 {e['sha256'][:16]}…  {e['bytes']:,} B") for role, e in files]
    for label, value in rows:
        click.echo(f"  {label:<12} {value}")
    click.echo(f"  check        {sample_name}:")
    for p in imported.check:
        click.echo(f"    {prediction_line(p)}")


@model.command(
    "push",
    epilog=examples(
        "batchpredict model push build/model/resnet-18 s3://my-models/resnet-18/1/",
        "batchpredict model push build/model/resnet-18 s3://my-models/resnet-18/1/ --profile prod",
        "sam deploy --parameter-overrides ModelUri=s3://my-models/resnet-18/1/",
    ),
)
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("uri", metavar="s3://BUCKET/PREFIX")
@click.option("--profile", metavar="NAME", help="AWS profile (as the AWS CLI).")
@click.option("--region", metavar="REGION", help="AWS region (as the AWS CLI).")
@friendly_errors
def model_push(folder: Path, uri: str, profile: str | None, region: str | None) -> None:
    """Verify the bundle in FOLDER and upload it under an s3:// prefix (model.json last),
    where MODEL_URI, `predict --model` and the stack's predictor can load it."""
    import boto3

    from batchpredict import aws
    from batchpredict.modelimport import push_bundle

    if not uri.startswith("s3://") or not uri.removeprefix("s3://").strip("/"):
        raise _fail(f"expected s3://BUCKET/PREFIX, got {uri!r}")
    s3 = aws.client("s3", session=boto3.session.Session(profile_name=profile, region_name=region))
    try:
        keys = push_bundle(folder, uri, s3)
    except BundleError as exc:
        raise _fail(str(exc)) from exc
    bucket = uri.removeprefix("s3://").split("/", 1)[0]
    for key in keys:
        click.echo(f"s3://{bucket}/{key}")


# --- the local stack -------------------------------------------------------------------------

LOG_DIR = LOCAL_DIR / "logs"


@main.group()
def local() -> None:
    """The embedded local stack: the whole pipeline on loopback, no AWS account."""


def _local_options(
    model: str | None, workers: int | None, allowed: tuple[str, ...], samples: Any = None
) -> Any:
    """The local stack's settings; ``samples`` (a started FileServer) is the one loopback address
    image URLs may reach, and its bucket the one s3:// source (moto and DynamoDB Local stay out)."""
    from batchpredict.local.provision import LocalOptions, samples_bucket
    from batchpredict.model import available_cpus

    bundle = Path(model) if model else DEFAULT_BUNDLE
    if not (bundle / "model.json").is_file():
        raise _fail(f"no model bundle at {bundle} (build it with `make model`, or pass --model DIR)")
    cpus = available_cpus()
    count = workers or cpus  # one predict worker per core, one inference thread each
    networks = (*([samples.url.removeprefix("http://")] if samples else []), *allowed)
    try:
        wide = wide_allowances(parse_networks(",".join(networks)))
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    if wide:
        click.echo(f"warning: image URLs may reach every host of {', '.join(wide)}", err=True)
    options = LocalOptions(model_uri=str(bundle.resolve()), predict_workers=count)
    sources = f"s3://{samples_bucket(options.prefix)}/" if samples else ""
    return replace(
        options,
        allowed_networks=",".join(networks),
        environment={"INFERENCE_THREADS": str(max(1, cpus // count))},
        parameters={"ImageSourcePrefixes": sources, "ApiImageSourcePrefixes": sources},
    )


def local_options(command: F) -> F:
    command = click.option("--model", help="Model bundle folder (default: the one `make model` built).")(
        command
    )
    command = click.option(
        "--workers", type=click.IntRange(1, 64), help="predict worker processes (default: one per core)."
    )(command)
    command = click.option(
        "--allow-network",
        "allowed",
        multiple=True,
        metavar="CIDR",
        help="A network or ADDRESS:PORT image URLs may reach (only the --serve server is, by default).",
    )(command)
    return friendly_errors(command)


def _serve(samples: Any, bucket: str, folder: Path) -> dict[str, str]:
    """Copy FOLDER (served over HTTP by ``samples``) to the samples bucket; the placeholder values."""
    s3 = _s3_client()
    s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    for path in sorted(folder.iterdir()):
        if path.is_file():
            s3.upload_file(str(path), bucket, path.name)  # type: ignore[attr-defined]
    return {"${SAMPLES_URL}": samples.url, "${SAMPLES_S3}": f"s3://{bucket}"}


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
@click.option(
    "--show",
    type=click.IntRange(0, 10_000),
    default=20,
    show_default=True,
    help="Result lines to print as a table.",
)
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

    from batchpredict.client import Client
    from batchpredict.local.placeholders import expand, uses_placeholders
    from batchpredict.local.provision import samples_bucket
    from batchpredict.local.servers import FileServer
    from batchpredict.local.stack import LocalStack

    if not serve and uses_placeholders(manifest):
        raise _fail(f"{manifest} uses ${{SAMPLES_URL}}/${{SAMPLES_S3}}: pass --serve DIR to fill them in")
    samples = FileServer(serve) if serve else None
    options = _local_options(model, workers, allowed, samples)
    stack = LocalStack(options, log_dir=LOG_DIR, warn=lambda m: click.echo(m, err=True))
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
            job = _watch(client, job_id, timeout=timeout)
            output.mkdir(parents=True, exist_ok=True)
            if job.status.value == "FAILED":
                raise _fail(f"job {job_id} failed: {job.error}")
            records = list(client.result_lines(job_id))
            summary = client.summary(job_id)
            (output / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            (output / "_summary.json").write_text(json.dumps(summary, indent=2))
            write_report(summary, records, output / "report.html", tuple(options.allowed_networks.split(",")))
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

    if _local_stack_alive():
        raise _fail("a local stack is already running (batchpredict local down)")
    stack = LocalStack(
        _local_options(model, workers, allowed), log_dir=LOG_DIR, warn=lambda m: click.echo(m, err=True)
    )
    ref = stack.start()
    click.echo(f"function logs  {LOG_DIR}/")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        STATE_FILE.write_text(json.dumps({"pid": os.getpid(), "stack": ref.__dict__}, indent=2))
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
        STATE_FILE.unlink(missing_ok=True)
        stack.stop()
        click.echo("stopped", err=True)


@local.command("down", epilog=examples("batchpredict local down"))
@friendly_errors
def local_down() -> None:
    """Stop the local stack that `batchpredict local up` started."""
    import signal
    import time

    if not STATE_FILE.is_file():
        raise _fail("no local stack is running")
    pid = int(json.loads(STATE_FILE.read_text())["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        STATE_FILE.unlink(missing_ok=True)
        raise _fail("the local stack was not running (stale state removed)") from None
    for _ in range(100):
        if not STATE_FILE.is_file():
            click.echo("stopped")
            return
        time.sleep(0.2)
    raise _fail(f"the local stack (pid {pid}) did not stop within 20s")


if __name__ == "__main__":
    main()
