"""The ``batchpredict`` group and ``predict``: one-off predictions here, with the model loaded in
this process, or through a deployed stack's predict API."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import click

from batchpredict.bundle import resolve_bundle
from batchpredict.cli.render import predictions_view
from batchpredict.cli.shared import (
    DEFAULT_BUNDLE,
    URL_PREFIXES,
    allow_network_option,
    examples,
    fail,
    friendly_errors,
    int_option,
    output_option,
    s3_client,
)
from batchpredict.cli.targets import StackTarget
from batchpredict.config import ConfigError, EngineConfig, engine_config
from batchpredict.defaults import DEFAULT_TOP_K
from batchpredict.errors import BundleError, ErrorCode, PredictionError
from batchpredict.fetch import Fetcher, FetchLimits, parse_networks
from batchpredict.model import load_model
from batchpredict.options import MAX_TOP_K
from batchpredict.predictor import Outcome, predict_payloads


@click.group()
@click.version_option(package_name="batchpredict")
def main() -> None:
    """Batch ImageNet predictions with MXNet: locally, or on AWS Lambda."""


def _engine_config(model: str | None, max_batch: int) -> EngineConfig:
    env = dict(os.environ)
    if model:
        env["MODEL_URI"] = model
    env.setdefault("MODEL_URI", str(DEFAULT_BUNDLE))
    env["MAX_BATCH"] = str(max_batch)
    return engine_config(env)


def _read_source(source: str, fetcher: Fetcher, robots: bool = True) -> bytes | PredictionError:
    if source.startswith(URL_PREFIXES) or "://" in source:
        try:
            return fetcher.fetch(source, robots=robots).data
        except PredictionError as exc:
            return exc
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        return PredictionError(ErrorCode.FILE_NOT_FOUND, f"cannot read {source}: {exc.strerror}")


def _show(sources: Sequence[str], outcomes: Sequence[Outcome], output: str) -> None:
    """Print the outcomes; the exit status is 1 if any image failed."""
    click.echo(predictions_view(sources, outcomes, output), nl=False)
    if any(outcome.error is not None for outcome in outcomes):
        raise SystemExit(1)


@main.command(
    epilog=examples(
        "batchpredict predict build/samples/coffee.png https://example.com/cat.jpg",
        "batchpredict predict --output json --top-k 3 build/samples/*.jpg | jq .predictions[0].label",
        "batchpredict predict --model build/model/resnet-18 s3://bucket/photos/cat.jpg",
    )
)
@click.argument("sources", nargs=-1, required=True)
@int_option("--top-k", 1, MAX_TOP_K, DEFAULT_TOP_K, "How many classes to print per image.")
@output_option("table")
@click.option(
    "--model", help="Model bundle folder or s3:// prefix (default: $MODEL_URI or the built bundle)."
)
@int_option("--max-batch", 1, 256, 32, "Largest batch of one forward pass.")
@allow_network_option("Let URLs reach this private/loopback network (e.g. 127.0.0.0/8). Repeatable.")
@click.option(
    "--stack",
    "stack_name",
    metavar="NAME",
    help="Ask this deployed stack's predict API instead, each request signed with SigV4.",
)
@click.option("--profile", help="With --stack: the AWS profile to sign with (default: the standard chain).")
@click.option("--region", help="With --stack: the stack's region (default: the profile's).")
@click.option(
    "--ignore-robots",
    is_flag=True,
    help="For your own hosts only: fetch images whose X-Robots-Tag says noai, noimageai or none.",
)
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
    ignore_robots: bool,
) -> None:
    """Predict the top-k ImageNet classes of image files or URLs (http, https, s3)."""
    if stack_name:
        _predict_remote(StackTarget(stack_name, profile, region), sources, top_k, output, ignore_robots)
        return
    if profile or region:
        raise fail("--profile and --region go with --stack NAME")
    try:
        config = _engine_config(model, max_batch)
        engine = load_model(resolve_bundle(config.model_uri, s3_client), config.max_batch, config.threads)
        limits = FetchLimits(allowed_networks=parse_networks(",".join(allowed)))
    except (ConfigError, BundleError, ValueError) as exc:
        raise click.ClickException(
            f"{exc} (build the default bundle with `make model`)"
            if isinstance(exc, BundleError) and not model
            else str(exc)
        ) from exc
    fetcher = Fetcher(limits, s3_client_factory=s3_client)
    try:
        payloads = [_read_source(source, fetcher, not ignore_robots) for source in sources]
    finally:
        fetcher.close()
    _show(sources, predict_payloads(engine, payloads, top_k), output)


@friendly_errors
def _predict_remote(
    target: StackTarget, sources: tuple[str, ...], top_k: int, output: str, ignore_robots: bool = False
) -> None:
    """``predict --stack``: the stack's predict API, SigV4-signed with the target's session."""
    from batchpredict.cli.apiclient import ApiError, outcome_of, predict_remote

    files = [source for source in sources if not source.startswith(URL_PREFIXES)]
    if files:
        raise fail(f"the API takes URLs, not files: {', '.join(files)}")
    ref = target.stack_ref()
    if not ref.api_url:
        raise fail(f"stack {target.name!r} has no PredictApiUrl output")
    try:
        records = predict_remote(ref.api_url, list(sources), target.session(), ignore_robots=ignore_robots)
    except ApiError as exc:
        raise fail(str(exc)) from exc
    _show(sources, [outcome_of(record, top_k) for record in records], output)
