"""The local stand-in for Lambda's SQS event-source mappings: worker *processes*.

Each function gets a pool of processes (its concurrency). A worker imports its handler
once (a warm container) and long-polls its queue with the mapping's batch size and
batching window, invoking the handler with the exact SQS event shape and a context whose
remaining time honours the function's timeout. What succeeded is deleted; failures
come back after the visibility timeout. A worker that dies is replaced; the messages it
held come back by visibility timeout, as on AWS.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from typing import Any

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


def _load(handler: str) -> Any:
    module, _, name = handler.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _worker(mapping: Mapping, stop: Event) -> None:
    os.environ.update(mapping.environment)
    import boto3

    from batchpredict.local.lambda_shim import deliver_once

    handler = _load(mapping.handler)
    sqs = boto3.client("sqs")
    while not stop.is_set():
        try:
            deliver_once(
                sqs,
                mapping.queue_url,
                mapping.queue_arn,
                handler,
                function_name=mapping.function,
                batch_size=mapping.batch_size,
                wait_seconds=1,
                window_seconds=mapping.window_seconds,
                timeout_seconds=mapping.timeout_seconds,
            )
        except Exception:  # an SQS hiccup must not end the worker; the next poll tries again
            log.exception("%s: polling failed", mapping.function)
            time.sleep(1)


class Runner:
    """Starts, watches (replacing dead workers) and stops the worker pools."""

    def __init__(self, mappings: list[Mapping]) -> None:
        self.mappings = mappings
        self._ctx = multiprocessing.get_context("spawn")  # no threads of the parent inherited mid-state
        self._stop = self._ctx.Event()
        self.workers: dict[str, list[Any]] = {m.function: [] for m in mappings}
        self.replaced = 0
        self._watcher = threading.Thread(target=self._watch, name="runner-watch", daemon=True)

    def _spawn(self, mapping: Mapping) -> Any:
        process = self._ctx.Process(
            target=_worker, args=(mapping, self._stop), name=f"{mapping.function}-worker", daemon=True
        )
        process.start()
        return process

    def start(self) -> None:
        for mapping in self.mappings:
            self.workers[mapping.function] = [self._spawn(mapping) for _ in range(mapping.concurrency)]
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for mapping in self.mappings:
                pool = self.workers[mapping.function]
                for i, process in enumerate(pool):
                    if not process.is_alive() and not self._stop.is_set():
                        log.warning(
                            "%s worker %d exited with %s; starting a new one",
                            mapping.function,
                            process.pid,
                            process.exitcode,
                        )
                        pool[i] = self._spawn(mapping)
                        self.replaced += 1

    def stop(self, grace_seconds: float = 10.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + grace_seconds
        for pool in self.workers.values():
            for process in pool:
                process.join(max(0.0, deadline - time.monotonic()))
                if process.is_alive():
                    process.terminate()
                    process.join(2)
