"""Unit tests for costs.py (usage -> summary) and budget.py (the decoders' memory budget)."""

from __future__ import annotations

import threading
import time

import pytest

from batchpredict.budget import MIB, MemoryBudget, decode_budget_bytes
from batchpredict.costs import PRICES, ComputeMeter, compute_summary, write_units


def test_compute_summary_turns_measured_usage_into_gb_seconds_and_dollars() -> None:
    # 1,000 images in 63 chunks; 10 invocations of 2048 MB billed 40 s in all.
    counters = {"compute_ms": 40_000, "compute_mb_ms": 40_000 * 2048, "invocations": 10, "write_units": 2_000}

    summary = compute_summary(1_000, 63, counters)

    assert summary["predict_gb_seconds"] == pytest.approx(80.0)
    assert summary["gb_seconds_per_image"] == pytest.approx(0.08)
    usd = summary["estimated_usd"]
    assert usd["lambda_compute"] == pytest.approx(80 * PRICES.lambda_gb_second, rel=1e-3)
    assert usd["lambda_requests"] == pytest.approx(10 * 0.2e-6, rel=1e-3)
    assert usd["dynamodb_writes"] == pytest.approx(2_000 * 0.625e-6, rel=1e-3)
    assert usd["sqs"] == pytest.approx((2 * 7 + 10) * 0.4e-6, rel=1e-3)
    assert usd["total"] == pytest.approx(sum(v for k, v in usd.items() if k != "total"), rel=1e-3)
    assert summary["estimated_usd_per_million_images"] == pytest.approx(usd["total"] * 1000, rel=1e-2)


def test_compute_summary_of_a_job_without_measured_usage() -> None:
    summary = compute_summary(0, 0, {})
    assert summary["predict_gb_seconds"] == 0 and summary["gb_seconds_per_image"] is None


def test_write_units_are_billed_per_started_kib() -> None:
    assert [write_units(n) for n in (0, 1, 1024, 1025, 3000)] == [1, 1, 1, 2, 3]


def test_meter_shares_add_up_to_the_invocation_time() -> None:
    now = [10.0]
    meter = ComputeMeter(1024, clock=lambda: now[0])
    shares = []
    for step in (0.1, 0.35, 0.05):
        now[0] += step
        shares.append(meter.take(0).billed_ms)
    assert shares == [100, 350, 50]


def test_memory_budget_runs_an_oversized_decode_alone_and_bounds_the_rest() -> None:
    budget = MemoryBudget(100)
    peak = []
    lock = threading.Lock()
    running = [0]

    def decode(size: int) -> None:
        with budget.reserve(size):
            with lock:
                running[0] += 1
                peak.append((running[0], budget.in_use))
            time.sleep(0.02)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=decode, args=(size,)) for size in (60, 60, 250, 30, 30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert budget.in_use == 0
    # Never over budget, except the 250-byte decode, which ran with nothing else.
    assert all(in_use <= 100 or (in_use == 250 and n == 1) for n, in_use in peak)


def test_the_decode_budget_is_what_the_function_has_left() -> None:
    assert decode_budget_bytes(3538, resident=500 * MIB) == int(3538 * MIB * 0.85) - 500 * MIB
    assert decode_budget_bytes(512, resident=2000 * MIB) == 64 * MIB  # never nothing
