"""The local stand-in for Lambda's SQS event-source mappings: worker *processes*.

Each function gets a pool of processes (its concurrency). A worker imports its handler
once (a warm container) and long-polls its queue with the mapping's batch size and
batching window, invoking the handler with the exact SQS event shape and a context whose
remaining time honours the function's timeout and whose memory limit is the function's
MemorySize. What succeeded is deleted; failures come back after the visibility timeout.
A worker that dies is replaced; the messages of the invocation it was running come back by
visibility timeout (or sooner, by the function's own heartbeat: predict's), as on AWS; those
it had received but not yet handed to its handler come back within seconds, as a Lambda
poller, which is not the function, would have invoked another environment with them. Each
invocation ends with Lambda's REPORT line in the function's log (duration,
billed duration, memory size, the worker's peak RSS), and a worker's environment carries
Lambda's runtime variables (``AWS_LAMBDA_FUNCTION_NAME``, ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``).

A mapping with ``max_concurrency`` scales out as Lambda's does while messages wait: one more
worker every few seconds, up to that many, as long as the machine has idle CPU (Lambda gives
each invocation CPUs of its own; here they are shared, so workers waiting on slow URLs are
what extra workers are for). Extra workers leave after a while without messages.

A mapping with ``cpu_slots`` (predict's) runs on the machine's cores in turn
(cpu_slots.py): the runner makes one slot per core, and each of the mapping's workers
runs on as many as its memory buys on Lambda (``costs.vcpus``: its decoders and inference
threads, unless the function's environment sets them), holding them for its invocations except
while they only wait on the network. Its REPORT lines leave out the time it waited for them, so
they estimate what Lambda would bill however many workers share the machine.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mapping:
    """One function and the queue its event-source mapping reads."""

    function: str  # a name for logs and the context
    handler: str  # "package.module.function"
    queue_url: str
    queue_arn: str
    batch_size: int = 10
    window_seconds: float = 0.0
    concurrency: int = 1
    timeout_seconds: float = 60.0
    memory_mb: int = 1024
    environment: dict[str, str] = field(default_factory=dict)
    max_concurrency: int = 0  # > concurrency: scale out up to this many workers (see module doc)
    idle_exit_seconds: float = 0.0  # > 0: the worker leaves after this long without a message
    # The queue's visibility timeout (0: not given): a poller that dies before it invokes then
    # holds its messages only briefly, as Lambda's poller is not the function (lambda_shim).
    visibility_seconds: int = 0
    # The function computes on the machine's CPU slots, as many as its memory buys (module doc).
    cpu_slots: bool = False

    def compute_environment(self, slots: Path) -> dict[str, str]:
        """A ``cpu_slots`` mapping's worker: where the slots are, and compute threads for as many
        vCPUs as its memory buys (the function's own settings win)."""
        from batchpredict.costs import vcpus

        threads = str(vcpus(self.memory_mb))
        return (
            {"INFERENCE_THREADS": threads, "DECODERS": threads}
            | self.environment
            | {"LOCAL_CPU_SLOTS": str(slots)}
        )

    def lambda_environment(self) -> dict[str, str]:
        """The variables Lambda's runtime sets in every execution environment of the function."""
        return {
            "AWS_LAMBDA_FUNCTION_NAME": self.function,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        }


def serve(mapping: Mapping, stop: threading.Event) -> None:
    """A worker's loop: import the handler once, then poll and invoke until told to stop."""
    from batchpredict import aws
    from batchpredict.costs import vcpus
    from batchpredict.cpu_slots import process_gate
    from batchpredict.local.lambda_shim import deliver_once, load_handler

    handler = load_handler(mapping.handler)
    slots = mapping.environment.get("LOCAL_CPU_SLOTS") if mapping.cpu_slots else None
    # Held for each invocation; the handler's compute holds the same one (wiring.cpu_gate).
    gate = process_gate(slots, vcpus(mapping.memory_mb)) if slots else None
    sqs = aws.client("sqs")
    parent = os.getppid()
    last_message = time.monotonic()
    # A worker whose stack died (kill -9, closed terminal) stops instead of polling for ever.
    while not stop.is_set() and os.getppid() == parent:
        if mapping.idle_exit_seconds and time.monotonic() - last_message > mapping.idle_exit_seconds:
            return  # an extra worker no longer needed
        try:
            delivered = deliver_once(
                sqs,
                mapping.queue_url,
                mapping.queue_arn,
                handler,
                function_name=mapping.function,
                batch_size=mapping.batch_size,
                wait_seconds=1,
                window_seconds=mapping.window_seconds,
                timeout_seconds=mapping.timeout_seconds,
                memory_mb=mapping.memory_mb,
                visibility_seconds=mapping.visibility_seconds,
                gate=gate,
            )
            if delivered:
                last_message = time.monotonic()
        except Exception:  # an SQS hiccup must not end the worker; the next poll tries again
            log.exception("%s: polling failed", mapping.function)
            time.sleep(1)


def main() -> None:
    """``python -m batchpredict.local.runner MAPPING_JSON``: one worker process."""
    mapping = Mapping(**json.loads(sys.argv[1]))
    stop = threading.Event()
    # SIGTERM ends the loop after the current invocation, as Lambda lets an invocation finish.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    serve(mapping, stop)


SCALE_EVERY_SECONDS = 2.0  # at most one more worker this often: a new one needs ~2 s to load the model
# The machine's idle CPU share (over SCALE_EVERY_SECONDS) above which an extra worker is worth
# it. A new predict worker costs ~2.3 CPU-s to start (imports, model load and bind): about 1.2 s
# of both cores here, more than half of the interval. Predict refills while its fetches stall,
# so a stall idles a core only briefly; a quarter idle spawned workers whose start cost more
# than the idle time they would fill (predict CPU per image 1.24x instead of 1.13x at 2% tarpit
# lines).
SCALE_WHEN_IDLE = 0.5
EXTRA_IDLE_EXIT_SECONDS = 20.0


class CpuIdle:
    """The machine's idle CPU share since the previous call (Linux /proc/stat)."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return 0, 0
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    def __call__(self) -> float:
        now = self._read()
        idle, total = now[0] - self._last[0], now[1] - self._last[1]
        self._last = now
        return idle / total if total > 0 else 0.0


class Runner:
    """Starts, watches (replacing dead workers, scaling out) and stops the worker pools.

    ``backlog(mapping)`` says how many messages wait in a mapping's queue (for scaling out).
    """

    def __init__(
        self,
        mappings: list[Mapping],
        log_dir: Path | None = None,
        *,
        backlog: Callable[[Mapping], int] | None = None,
        cpu_idle: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        cores: int | None = None,
    ) -> None:
        self.mappings = mappings
        self.log_dir = log_dir
        self._cores = cores  # CPU slots to make (None: the CPUs this process may use)
        self.slots: Path | None = None  # made at start, if a mapping computes on slots
        self._stop = threading.Event()
        self.workers: dict[str, list[subprocess.Popen[bytes]]] = {m.function: [] for m in mappings}
        self.replaced = 0
        self.scaled_out = 0
        self._extra: set[int] = set()  # pids of the workers started by scaling out
        self._backlog = backlog
        self._cpu_idle = cpu_idle or CpuIdle()
        self._clock = clock
        self._last_scale: dict[str, float] = {}
        self._watcher = threading.Thread(target=self._watch, name="runner-watch", daemon=True)

    def _spawn(self, mapping: Mapping) -> subprocess.Popen[bytes]:
        # A fresh interpreter with the function's environment set before anything is imported,
        # as Lambda starts a container: module-level settings (Powertools) see it.
        if mapping.cpu_slots and self.slots is not None:
            mapping = replace(mapping, environment=mapping.compute_environment(self.slots))
        command = [sys.executable, "-m", "batchpredict.local.runner", json.dumps(asdict(mapping))]
        env = os.environ | mapping.environment | mapping.lambda_environment()
        if self.log_dir is None:
            return subprocess.Popen(command, env=env)
        # Each function's log lines (Powertools JSON, EMF metrics, REPORT lines) go to its own file.
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{mapping.function}.log").open("ab") as log_file:
            return subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)

    def start(self) -> None:
        if any(m.cpu_slots for m in self.mappings):
            from batchpredict.cpu_slots import make_slots
            from batchpredict.model import available_cpus

            folder = Path(tempfile.mkdtemp(prefix="batchpredict-cpu-slots-"))
            self.slots = make_slots(folder, self._cores or available_cpus())
        for mapping in self.mappings:
            self.workers[mapping.function] = [self._spawn(mapping) for _ in range(mapping.concurrency)]
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for mapping in self.mappings:
                self._tend(mapping)
                if self._backlog is not None and mapping.max_concurrency > mapping.concurrency:
                    self._scale_out(mapping, self._backlog)

    def _tend(self, mapping: Mapping) -> None:
        """Replace a dead worker; let an extra one that left go."""
        pool = self.workers[mapping.function]
        for process in list(pool):
            if process.poll() is None or self._stop.is_set():
                continue
            if process.pid in self._extra:
                self._extra.discard(process.pid)
                pool.remove(process)
                continue
            log.warning(
                "%s worker %d exited with %s; starting a new one",
                mapping.function,
                process.pid,
                process.returncode,
            )
            pool[pool.index(process)] = self._spawn(mapping)
            self.replaced += 1

    def _scale_out(self, mapping: Mapping, backlog: Callable[[Mapping], int]) -> None:
        now = self._clock()
        if now - self._last_scale.get(mapping.function, float("-inf")) < SCALE_EVERY_SECONDS:
            return
        self._last_scale[mapping.function] = now
        idle = self._cpu_idle()  # over the last SCALE_EVERY_SECONDS
        pool = self.workers[mapping.function]
        if len(pool) >= mapping.max_concurrency or idle < SCALE_WHEN_IDLE:
            return
        waiting = backlog(mapping)
        if waiting <= 0:
            return
        process = self._spawn(replace(mapping, idle_exit_seconds=EXTRA_IDLE_EXIT_SECONDS))
        self._extra.add(process.pid)
        pool.append(process)
        self.scaled_out += 1
        log.info("%s: %d messages waiting, %.0f%% CPU idle: worker %d started",
                 mapping.function, waiting, idle * 100, len(pool))  # fmt: skip

    def stop(self, grace_seconds: float = 10.0) -> None:
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join()  # no replacement worker may start after this point
        processes = [p for pool in self.workers.values() for p in pool]
        for process in processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace_seconds
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.slots is not None:
            shutil.rmtree(self.slots, ignore_errors=True)


if __name__ == "__main__":
    main()
