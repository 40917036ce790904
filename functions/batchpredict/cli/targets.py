"""Which stack a command talks to: ``--stack``/``--local``/``--profile``/``--region``, and the
local stack's state (the folder ``local up`` writes; ``BATCHPREDICT_LOCAL_DIR`` moves it)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from batchpredict import aws
from batchpredict.cli.client import Client, LocalState, StackRef
from batchpredict.cli.shared import BUILD_DIR, F, fail, friendly_errors

if TYPE_CHECKING:
    import boto3

STACK_ENV = "BATCHPREDICT_STACK"
LOCAL_DIR_ENV = "BATCHPREDICT_LOCAL_DIR"


def local_state() -> LocalState:
    """Where `local up` keeps its state file and the functions' logs (read at each call, so a
    test's or a user's BATCHPREDICT_LOCAL_DIR counts)."""
    return LocalState(Path(os.environ.get(LOCAL_DIR_ENV) or BUILD_DIR / "local"))


def local_ref() -> StackRef:
    """The running local stack, with this process pointed at its endpoints and credentials."""
    ref = local_state().load()
    os.environ.update(ref.endpoints or {})
    return ref


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

    def session(self) -> boto3.session.Session:
        """The boto3 session every client of this command is made from."""
        import boto3

        if self.local:
            local_ref()  # points this process at the local stack's endpoints and credentials
            return boto3.session.Session()
        return boto3.session.Session(profile_name=self.profile, region_name=self.region)

    def stack_ref(self) -> StackRef:
        """A deployed stack's names, from its CloudFormation outputs."""
        assert self.name is not None
        return StackRef.from_cloudformation(self.name, aws.client("cloudformation", session=self.session()))

    def client(self) -> Client:
        if self.local:
            return Client(local_ref())
        session = self.session()
        return Client(
            self.stack_ref(),
            s3=aws.client("s3", session=session),
            dynamodb=aws.client("dynamodb", session=session),
        )


def _stack_target(
    stack_name: str | None, use_local: bool, profile: str | None, region: str | None
) -> StackTarget:
    from click.core import ParameterSource

    from_env = click.get_current_context().get_parameter_source("stack_name") == ParameterSource.ENVIRONMENT
    if use_local and stack_name and not from_env:
        raise fail("give either --local or --stack NAME, not both")
    if use_local or not stack_name:
        if profile or region:
            raise fail(f"--profile and --region are for a deployed stack (--stack NAME or ${STACK_ENV})")
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
