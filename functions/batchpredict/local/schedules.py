"""The local stand-in for the template's EventBridge schedules (the sweeper's ``rate(1 minute)``):
each scheduled function runs as one worker process that imports its handler once and invokes it
with EventBridge's "Scheduled Event" and a Lambda context every period (locally a few seconds,
``LocalOptions.schedule_seconds``), ending each invocation with Lambda's REPORT line. A process
that dies is started again."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86_400, "days": 86_400}


@dataclass(frozen=True)
class Schedule:
    """One scheduled function: what it runs, how often, as what."""

    function: str
    handler: str
    rule: str  # the rule's name, for the event's resources
    period_seconds: float
    timeout_seconds: float = 60.0
    memory_mb: int = 128
    environment: dict[str, str] = field(default_factory=dict)


def rate_seconds(expression: str) -> float:
    """``rate(1 minute)``, ``rate(5 minutes)``, ... in seconds (cron expressions are not played)."""
    inner = expression.strip().removeprefix("rate(").removesuffix(")")
    number, _, unit = inner.partition(" ")
    if not expression.strip().startswith("rate(") or unit not in _UNITS:
        raise ValueError(f"{expression!r}: only rate(N minutes|hours|days) runs locally")
    return int(number) * _UNITS[unit]


def scheduled_event(rule: str, region: str = "us-east-1") -> dict[str, Any]:
    """What EventBridge sends a function on each tick of a schedule rule."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": region,
        "resources": [f"arn:aws:events:{region}:000000000000:rule/{rule}"],
        "detail": {},
    }


def serve(schedule: Schedule, stop: threading.Event) -> None:
    """A worker's loop: import the handler once, then invoke it every period until told to stop."""
    from batchpredict.local.lambda_shim import LocalContext, Report, load_handler, peak_rss_mb, print_report

    handler = load_handler(schedule.handler)
    parent = os.getppid()
    while not stop.wait(schedule.period_seconds) and os.getppid() == parent:
        context = LocalContext(
            schedule.function, timeout_seconds=schedule.timeout_seconds, memory_limit_in_mb=schedule.memory_mb
        )
        started = time.perf_counter()
        try:
            handler(scheduled_event(schedule.rule), context)
        except Exception:  # as EventBridge's next tick does, the next period tries again
            log.exception("%s failed", schedule.function)
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            print_report(
                Report.measured(context.aws_request_id, duration_ms, schedule.memory_mb, peak_rss_mb())
            )


def main() -> None:
    """``python -m batchpredict.local.schedules SCHEDULE_JSON``: one scheduled function's process."""
    schedule = Schedule(**json.loads(sys.argv[1]))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # after the current invocation
    serve(schedule, stop)


class Scheduler:
    """Starts one process a schedule, starts again one that died, stops them all.
    ``environment``: added to each schedule's own (the local endpoints and credentials)."""

    def __init__(
        self,
        schedules: list[Schedule],
        log_dir: Path | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.schedules = schedules
        self.log_dir = log_dir
        self.environment = environment or {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="schedules-watch", daemon=True)

    def _start(self, schedule: Schedule) -> None:
        command = [sys.executable, "-m", "batchpredict.local.schedules", json.dumps(asdict(schedule))]
        env = os.environ | schedule.environment | self.environment
        env |= {
            "AWS_LAMBDA_FUNCTION_NAME": schedule.function,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(schedule.memory_mb),
        }
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"{schedule.function}.log").open("ab")
        try:
            self.processes[schedule.function] = subprocess.Popen(
                command, env=env, stdout=output, stderr=subprocess.STDOUT if output else None
            )
        finally:
            if output is not None:
                output.close()  # the child holds its own copy

    def start(self) -> None:
        for schedule in self.schedules:
            self._start(schedule)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for schedule in self.schedules:
                if self.processes[schedule.function].poll() is not None and not self._stop.is_set():
                    log.warning("%s exited; starting it again", schedule.function)
                    self._start(schedule)

    def stop(self, grace_seconds: float = 10.0) -> None:
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join()  # none is started again after this
        for process in self.processes.values():
            _end(process, grace_seconds)


def _end(process: subprocess.Popen[bytes], grace_seconds: float) -> None:
    """SIGTERM (the invocation under way finishes first), SIGKILL once ``grace_seconds`` pass."""
    process.terminate()
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    main()
