"""What a job cost: the usage predict measures per chunk, and a documented price table.

predict charges every counted chunk its share of the invocation's billed time (the wall
time since the previous chunk it counted, or since the invocation began), so the shares of
an invocation add up to its billed duration, less the short tail after its last count.
The JOB record sums them; finalize turns the sums into ``_summary.json``'s ``compute``.

Wall time less the time the invocation waited for CPUs it would have had to itself on Lambda
(``cpu_gate.CpuGate.waited_seconds``: always 0 on Lambda; on the local stack, the time a worker
waited for its cores while another worker computed, see ``cpu_slots.py``), so that the
local figures estimate Lambda's bill whatever the number of workers sharing the machine.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# DynamoDB bills a write per started KiB of the item; a transaction writes each item twice.
WRITE_UNIT_BYTES = 1024
TRANSACTION_WRITE_FACTOR = 2
SQS_BATCH = 10  # chunks per SendMessageBatch / DeleteMessageBatch
# Lambda gives a function CPU in proportion to its memory: one vCPU at 1,769 MB, six at the
# largest size (10,240 MB).
LAMBDA_MB_PER_VCPU = 1769
LAMBDA_MAX_MB = 10_240
LAMBDA_MAX_VCPUS = 6


def vcpus(memory_mb: int) -> int:
    """Whole vCPUs a function of ``memory_mb`` has on Lambda (at least 1: below 1,769 MB Lambda
    gives a fraction of one, which the local stack counts as one)."""
    if memory_mb >= LAMBDA_MAX_MB:
        return LAMBDA_MAX_VCPUS
    return max(1, memory_mb // LAMBDA_MB_PER_VCPU)


def floor_gb_seconds(memory_mb: int, cpu_seconds: float) -> float:
    """The least GB-s a function of ``memory_mb`` can be billed for ``cpu_seconds`` of CPU work:
    every one of its vCPUs busy from its first to its last millisecond."""
    return memory_mb / 1024 * cpu_seconds / vcpus(memory_mb)


@dataclass(frozen=True)
class Prices:
    """USD list prices, us-east-1, on-demand, after free tiers; from the AWS pricing pages
    (Lambda, SQS, DynamoDB, S3) as published in 2025. Edit here when they change."""

    lambda_gb_second: float = 0.0000166667  # x86_64: the predictor is an x86_64 image
    lambda_request: float = 0.20 / 1_000_000
    sqs_request: float = 0.40 / 1_000_000  # standard queue, per 64 KiB request
    dynamodb_write_unit: float = 0.625 / 1_000_000  # on-demand write request unit
    s3_put: float = 0.005 / 1_000  # PUT, COPY, POST, LIST
    s3_get: float = 0.0004 / 1_000


PRICES = Prices()


@dataclass(frozen=True)
class ChunkUsage:
    """What writing one chunk cost, added to the JOB in the chunk's counting transaction."""

    billed_ms: int = 0
    memory_mb: int = 0
    invocations: int = 0  # 1 on the first chunk an invocation counts
    write_units: int = 0

    def as_counters(self) -> dict[str, int]:
        return {
            "compute_ms": self.billed_ms,
            "compute_mb_ms": self.billed_ms * self.memory_mb,
            "invocations": self.invocations,
            "write_units": self.write_units,
        }


class ComputeMeter:
    """Splits one invocation's billed time between the chunks it counts (thread-safe).

    ``waited``: seconds the process has waited for CPUs so far (``CpuGate.waited_seconds``);
    what it grows by between two charges is left out of the second.
    """

    def __init__(
        self,
        memory_mb: int,
        clock: Callable[[], float] = time.monotonic,
        waited: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.memory_mb = memory_mb
        self._clock = clock
        self._waited = waited
        self._mark = clock()
        self._waited_mark = waited()
        self._carried_ms = 0.0
        self._invocation_charged = False
        self._lock = threading.Lock()

    def take(self, write_units: int) -> ChunkUsage:
        """The time since the last charge; call right before the counting transaction."""
        with self._lock:
            now, waited = self._clock(), self._waited()
            spent = (now - self._mark - (waited - self._waited_mark)) * 1000 + self._carried_ms
            self._mark, self._waited_mark, self._carried_ms = now, waited, 0.0
            first = not self._invocation_charged
            self._invocation_charged = True
        # Rounded to the microsecond first: float noise must not bill an extra ms.
        return ChunkUsage(math.ceil(round(max(spent, 0.0), 3)), self.memory_mb, int(first), write_units)

    def refund(self, usage: ChunkUsage) -> None:
        """The chunk was counted by an earlier delivery: its time goes to the next one."""
        with self._lock:
            self._carried_ms += usage.billed_ms
            if usage.invocations:
                self._invocation_charged = False


def write_units(item_bytes: int) -> int:
    return max(1, math.ceil(item_bytes / WRITE_UNIT_BYTES))


def compute_summary(
    images: int, chunks: int, counters: dict[str, int], prices: Prices = PRICES
) -> dict[str, Any]:
    """``_summary.json``'s ``compute``: measured predict usage and an estimated bill.

    Lambda GB-s, predict invocations and DynamoDB write units are measured; SQS and S3
    requests are counted from the job's shape (a send and a delete per chunk, batched by
    10, a receive per invocation; a PUT and a GET per part, plus the merge's few).
    """
    gb_seconds = counters.get("compute_mb_ms", 0) / 1024 / 1000
    invocations = counters.get("invocations", 0)
    sqs_requests = 2 * math.ceil(chunks / SQS_BATCH) + invocations
    s3_puts, s3_gets = chunks + 4, chunks + 1
    cost = {
        "lambda_compute": gb_seconds * prices.lambda_gb_second,
        "lambda_requests": invocations * prices.lambda_request,
        "sqs": sqs_requests * prices.sqs_request,
        "dynamodb_writes": counters.get("write_units", 0) * prices.dynamodb_write_unit,
        "s3_requests": s3_puts * prices.s3_put + s3_gets * prices.s3_get,
    }
    total = sum(cost.values())
    return {
        "predict_billed_ms": counters.get("compute_ms", 0),
        "predict_gb_seconds": round(gb_seconds, 3),
        "gb_seconds_per_image": round(gb_seconds / images, 5) if images else None,
        "predict_invocations": invocations,
        "dynamodb_write_units": counters.get("write_units", 0),
        "estimated_usd": {name: _significant(value) for name, value in cost.items()}
        | {"total": _significant(total)},
        "estimated_usd_per_million_images": _significant(total / images * 1_000_000) if images else None,
        "prices": "us-east-1 on-demand list prices (batchpredict/costs.py); split and finalize not included",
    }


def _significant(value: float) -> float:
    """Four significant digits: a small job's cost is a few millionths of a dollar."""
    return float(f"{value:.4g}")
