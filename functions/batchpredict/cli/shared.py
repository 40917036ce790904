"""What the commands share: the defaults under build/, one ``--output``, --help examples, and one
line instead of a traceback for what the user can fix."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from batchpredict.cli.render import OUTPUT_HELP, OUTPUTS

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

F = TypeVar("F", bound=Callable[..., Any])

# An editable install (make demo / make test) finds what `make model` built under build/.
BUILD_DIR = Path(__file__).resolve().parents[3] / "build"
DEFAULT_BUNDLE = BUILD_DIR / "model" / "efficientnet-lite0"
URL_PREFIXES = ("http://", "https://", "s3://")


def s3_client() -> S3Client:
    from batchpredict import aws

    return aws.client("s3")


def fail(message: str) -> click.ClickException:
    return click.ClickException(message)


def output_option(default: str, *extra: str, help_extra: str = "") -> Callable[[F], F]:
    """The one ``--output`` of every command that prints records (see render.py)."""
    return click.option(
        "--output",
        type=click.Choice([*OUTPUTS, *extra]),
        default=default,
        show_default=True,
        help=OUTPUT_HELP + help_extra,
    )


def int_option(name: str, low: int, high: int, default: int, help_text: str) -> Callable[[F], F]:
    """An integer option within ``low``..``high``, its default shown by --help."""
    return click.option(
        name, type=click.IntRange(low, high), default=default, show_default=True, help=help_text
    )


def allow_network_option(help_text: str) -> Callable[[F], F]:
    """``--allow-network CIDR`` (repeatable), handed to the command as ``allowed``."""
    return click.option("--allow-network", "allowed", multiple=True, metavar="CIDR", help=help_text)


def examples(*lines: str) -> str:
    """A command's epilog: examples shown by --help as written (\b keeps click from rewrapping)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


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

        from batchpredict.cli.client import UserError

        try:
            return command(*args, **kwargs)
        except UserError as exc:
            raise fail(str(exc)) from exc
        except NoCredentialsError as exc:
            raise fail(
                "no AWS credentials: configure them (aws configure, --profile, AWS_PROFILE) or use --local"
            ) from exc
        except NoRegionError as exc:
            raise fail("no AWS region: pass --region, or set AWS_REGION or the profile's region") from exc
        except ProfileNotFound as exc:
            raise fail(f"{exc} (see `aws configure list-profiles`)") from exc
        except EndpointConnectionError as exc:
            raise fail(
                f"cannot reach {exc.kwargs.get('endpoint_url')}: is the stack running? "
                "(batchpredict local up)"
            ) from exc
        except ClientError as exc:
            raise fail(f"AWS said: {exc}") from exc

    return wrapper  # type: ignore[return-value]
