"""The user's commands: ``batchpredict --help``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from batchpredict.bundle import resolve_bundle
from batchpredict.config import ConfigError, EngineConfig, engine_config
from batchpredict.errors import BundleError, ErrorCode, PredictionError
from batchpredict.fetch import Fetcher, FetchLimits, parse_networks
from batchpredict.model import load_model
from batchpredict.predictor import Outcome, predict_payloads

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
    import boto3

    return boto3.client("s3")


def _print_text(source: str, outcome: Outcome) -> None:
    click.echo(source)
    if outcome.error is not None:
        click.echo(f"  error {outcome.error.code.value}: {outcome.error.message}")
        return
    for p in outcome.predictions:
        click.echo(
            f"  {p.rank}. {p.label.split(',')[0]:<32} {p.probability:7.2%}  ({p.wnid}, class {p.class_index})"
        )


def _as_json(source: str, outcome: Outcome) -> str:
    if outcome.error is not None:
        return json.dumps({"source": source, "error": outcome.error.as_dict()})
    return json.dumps({"source": source, "predictions": [p.as_dict() for p in outcome.predictions]})


@click.group()
@click.version_option(package_name="batchpredict")
def main() -> None:
    """Batch ImageNet predictions with MXNet: locally, or on AWS Lambda."""


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--top-k",
    "top_k",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="How many classes to print per image.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line instead of text.")
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
def predict(
    sources: tuple[str, ...],
    top_k: int,
    as_json: bool,
    model: str | None,
    max_batch: int,
    allowed: tuple[str, ...],
) -> None:
    """Predict the top-k ImageNet classes of image files or URLs (http, https, s3)."""
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
    for source, outcome in zip(sources, outcomes, strict=True):
        if as_json:
            click.echo(_as_json(source, outcome))
        else:
            _print_text(source, outcome)
    if any(outcome.error is not None for outcome in outcomes):
        raise SystemExit(1)
