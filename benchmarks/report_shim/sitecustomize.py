"""REPORT lines for an older tree's local runner, for ``local_stack_throughput.py --before REF``.

Python imports ``sitecustomize`` at start-up from the first folder of ``sys.path`` that has
one. The benchmark puts this folder on PYTHONPATH of the ``--before`` leg only (and so of its
worker processes), with ``BATCHPREDICT_BENCH_REPORT_SHIM=1``. When that tree's
``batchpredict.local.lambda_shim`` has no ``parse_report`` (it predates the runner's REPORT
lines), its ``deliver_once`` is wrapped to time each handler call and print the same line the
current runner prints, with the function's MemorySize from the worker's mapping (argv[1]),
so both legs are billed by one rule. A tree that reports by itself is left alone.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import math
import os
import resource
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

TARGET = "batchpredict.local.lambda_shim"


def _memory_mb(context: Any) -> int:
    """The worker's mapping (``python -m batchpredict.local.runner MAPPING_JSON``) has the MemorySize."""
    try:
        return int(json.loads(sys.argv[1])["memory_mb"])
    except (IndexError, ValueError, KeyError, TypeError):
        return int(context.memory_limit_in_mb)


def _patch(module: ModuleType) -> None:
    if hasattr(module, "parse_report"):
        return
    original = module.deliver_once

    def deliver_once(sqs: Any, queue_url: str, queue_arn: str, handler: Any, **kwargs: Any) -> Any:
        def timed(event: Any, context: Any) -> Any:
            started = time.perf_counter()
            try:
                return handler(event, context)
            finally:
                ms = round((time.perf_counter() - started) * 1000, 2)
                rss = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                print(
                    f"REPORT RequestId: {context.aws_request_id}\tDuration: {ms:.2f} ms"
                    f"\tBilled Duration: {max(1, math.ceil(ms))} ms\tMemory Size: {_memory_mb(context)} MB"
                    f"\tMax Memory Used: {rss} MB",
                    flush=True,
                )

        return original(sqs, queue_url, queue_arn, timed, **kwargs)

    setattr(module, "deliver_once", deliver_once)  # noqa: B010 - a module attribute mypy cannot see


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if os.environ.get("BATCHPREDICT_BENCH_REPORT_SHIM") == "1":
    sys.meta_path.insert(0, _Finder())
