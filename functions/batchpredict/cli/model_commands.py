"""``batchpredict model``: a classic MXNet checkpoint into a verified bundle (``import``), a
bundle to S3 (``push``); the work is modelimport.py's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from batchpredict.cli.group import main
from batchpredict.cli.render import prediction_line
from batchpredict.cli.shared import BUILD_DIR, F, examples, fail, friendly_errors
from batchpredict.errors import BundleError, PredictionError

SAMPLE_PHOTO = BUILD_DIR / "samples" / "coffee.png"


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
    from batchpredict.cli.modelimport import ImportOptions, import_checkpoint

    if input_shape and (input_shape[0] != 3 or input_shape[1] != input_shape[2]):
        raise fail(f"--input-shape must be 3,N,N, got {','.join(map(str, input_shape))}")
    size = input_shape[1] if input_shape else None
    if crop and size and crop != size:
        raise fail(f"--crop {crop} differs from the input size {size}: the crop is the model's input")
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
        raise fail(str(exc)) from exc
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
    rows += [(f.role, f"{f.name}  sha256 {f.sha256[:16]}…  {f.size or 0:,} B") for f in spec.files]
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
    from batchpredict.cli.modelimport import push_bundle

    if not uri.startswith("s3://") or not uri.removeprefix("s3://").strip("/"):
        raise fail(f"expected s3://BUCKET/PREFIX, got {uri!r}")
    s3 = aws.client("s3", session=boto3.session.Session(profile_name=profile, region_name=region))
    try:
        keys = push_bundle(folder, uri, s3)
    except BundleError as exc:
        raise fail(str(exc)) from exc
    bucket = uri.removeprefix("s3://").split("/", 1)[0]
    for key in keys:
        click.echo(f"s3://{bucket}/{key}")
