"""Which stack a command talks to: ``--stack``/``--local``/``--profile``/``--region``, and the
local stack's state (the folder ``local up`` writes; ``BATCHPREDICT_LOCAL_DIR`` moves it)."""

from __future__ import annotations

import functools
import json
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from batchpredict import aws
from batchpredict.cli.client import Client, StackRef, UserError
from batchpredict.cli.shared import BUILD_DIR, F, fail, friendly_errors

if TYPE_CHECKING:
    import boto3

STACK_ENV = "BATCHPREDICT_STACK"
LOCAL_DIR_ENV = "BATCHPREDICT_LOCAL_DIR"
PROC = Path("/proc")


def process_identity(pid: int) -> dict[str, Any] | None:
    """What tells process ``pid`` from a later one given the same pid: its command line and its
    start time (clock ticks after boot), from /proc; None when there is no such process (or no
    /proc)."""
    try:
        cmdline = (PROC / str(pid) / "cmdline").read_bytes()
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # stat: "pid (comm) state ..." with the start time the 22nd field; comm may hold spaces and ")".
    started = int(stat.rsplit(")", 1)[1].split()[19])
    return {"cmdline": cmdline.decode(errors="replace").split("\0"), "started": started}


@dataclass(frozen=True)
class LocalState:
    """The folder of a running ``batchpredict local up``: ``stack.json`` (its pid, command line and
    start time, and its StackRef, for the commands of other terminals) and the functions' logs."""

    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / "stack.json"

    @property
    def log_dir(self) -> Path:
        return self.folder / "logs"

    def save(self, ref: StackRef, pid: int) -> None:
        """Written for its owner only (0600): the StackRef carries the stack's access key."""
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {"pid": pid, "process": process_identity(pid), "stack": asdict(ref)}
        with os.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
            os.fchmod(file.fileno(), 0o600)  # a file an older version wrote keeps its mode otherwise
            file.write(json.dumps(state, indent=2))

    def _saved(self) -> dict[str, Any] | None:
        try:
            saved = json.loads(self.path.read_text())
            return {"pid": int(saved["pid"]), "process": saved.get("process"), "stack": saved["stack"]}
        except (OSError, KeyError, TypeError, ValueError, AttributeError):
            return None

    def pid(self) -> int | None:
        """The pid of the process that saved the state; None when there is no (readable) state."""
        saved = self._saved()
        return None if saved is None else int(saved["pid"])

    def alive(self) -> bool:
        """Whether the process that saved the state still runs: its pid is the same command line
        started at the same time (a stale state, after kill -9, does not count, even once another
        process has its pid). Without /proc the pid is all there is to go by."""
        saved = self._saved()
        if saved is None:
            return False
        if not PROC.is_dir():
            try:
                os.kill(saved["pid"], 0)
            except OSError:
                return False
            return True
        return saved["process"] is not None and process_identity(saved["pid"]) == saved["process"]

    def signal(self, signum: int) -> bool:
        """Send ``signum`` to the process that saved the state if it still runs (``alive``); False,
        and nothing sent, otherwise. A pidfd holds the process while it is checked, so no process
        given its pid meanwhile can receive the signal."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            handle: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except (AttributeError, OSError):  # no pidfd here (not Linux, or an old kernel)
            handle = None
        try:
            if not self.alive():
                return False
            if handle is None:
                os.kill(pid, signum)
            else:
                signal.pidfd_send_signal(handle, signum)
        except ProcessLookupError:
            return False
        finally:
            if handle is not None:
                os.close(handle)
        return True

    def load(self) -> StackRef:
        """The running local stack; a UserError saying what to do when there is none."""
        if not self.path.is_file():
            raise UserError(
                "no local stack is running: start one with `batchpredict local up`, or pass --stack NAME"
            )
        saved = self._saved()
        if saved is None or not self.alive():
            raise UserError("the local stack is not running any more: start it with `batchpredict local up`")
        return StackRef(**saved["stack"])

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


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
