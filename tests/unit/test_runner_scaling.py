"""The local runner scales a mapping out like Lambda: while messages wait and the CPUs idle."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from batchpredict.local import runner as runner_module
from batchpredict.local.runner import EXTRA_IDLE_EXIT_SECONDS, Mapping, Runner

_pids = itertools.count(1000)


class FakeProcess:
    def __init__(self, mapping: Mapping) -> None:
        self.pid = next(_pids)
        self.mapping = mapping
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def predict() -> Mapping:
    return Mapping("PredictFunction", "h.f", "url", "arn", concurrency=2, max_concurrency=4)


def _runner(
    predict: Mapping, backlog: int, idle: float, monkeypatch: pytest.MonkeyPatch
) -> tuple[Runner, Clock]:
    clock = Clock()
    runner = Runner([predict], backlog=lambda _: backlog, cpu_idle=lambda: idle, clock=clock)
    monkeypatch.setattr(runner, "_spawn", FakeProcess)
    runner.workers[predict.function] = [FakeProcess(predict) for _ in range(predict.concurrency)]  # type: ignore[misc]
    return runner, clock


def _scale(runner: Runner, predict: Mapping, clock: Clock, ticks: int) -> None:
    for _ in range(ticks):
        runner._tend(predict)
        runner._scale_out(predict, runner._backlog)  # type: ignore[arg-type]
        clock.now += 0.5


def test_waiting_messages_and_idle_cpus_add_a_worker_every_interval_up_to_the_maximum(
    predict: Mapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, clock = _runner(predict, backlog=30, idle=0.6, monkeypatch=monkeypatch)

    _scale(runner, predict, clock, ticks=4)  # 2 s
    assert len(runner.workers[predict.function]) == 3
    _scale(runner, predict, clock, ticks=40)
    pool: list[Any] = runner.workers[predict.function]
    assert len(pool) == 4 and runner.scaled_out == 2
    assert [p.mapping.idle_exit_seconds for p in pool[2:]] == [EXTRA_IDLE_EXIT_SECONDS] * 2


@pytest.mark.parametrize(("backlog", "idle"), [(0, 0.9), (50, 0.1), (50, 0.4)])
def test_no_worker_is_added_without_waiting_messages_or_idle_cpus(
    predict: Mapping, backlog: int, idle: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, clock = _runner(predict, backlog, idle, monkeypatch)
    _scale(runner, predict, clock, ticks=20)
    assert len(runner.workers[predict.function]) == 2


def test_an_extra_worker_that_leaves_is_not_replaced_but_a_regular_one_is(
    predict: Mapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, clock = _runner(predict, backlog=5, idle=0.9, monkeypatch=monkeypatch)
    _scale(runner, predict, clock, ticks=1)
    pool: list[Any] = runner.workers[predict.function]
    regular, extra = pool[0], pool[2]
    runner._backlog = lambda _: 0
    extra.returncode, regular.returncode = 0, -9

    _scale(runner, predict, clock, ticks=1)

    assert extra not in pool and regular not in pool
    assert len(pool) == 2 and runner.replaced == 1


def test_cpu_idle_reads_the_machine() -> None:
    sample = runner_module.CpuIdle()
    assert 0.0 <= sample() <= 1.0


class FakePopen:
    def __init__(self, command: list[str], env: dict[str, str], **_: Any) -> None:
        self.pid = next(_pids)
        self.command, self.env = command, env
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def terminate(self) -> None:
        self.returncode = 0

    def wait(self, timeout: float | None = None) -> int:
        return 0


def test_predict_workers_compute_on_cpu_slots_with_as_many_threads_as_their_memory_buys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner_module.subprocess, "Popen", FakePopen)
    computes = Mapping("PredictFunction", "h.f", "url", "arn", memory_mb=3538, cpu_slots=True)
    own = Mapping(
        "Other", "h.g", "url2", "arn2", memory_mb=5307, cpu_slots=True, environment={"DECODERS": "1"}
    )
    waits = Mapping("FinalizeFunction", "h.g", "url3", "arn3", memory_mb=3538)
    runner = Runner([computes, own, waits], cores=2)
    runner.start()
    try:
        (predict,), (other,), (finalize,) = (runner.workers[m.function] for m in (computes, own, waits))
        slots = runner.slots
        assert slots is not None and sorted(p.name for p in slots.iterdir()) == ["slot-0", "slot-1", "turn"]
        env = predict.env  # type: ignore[attr-defined]
        assert (env["LOCAL_CPU_SLOTS"], env["INFERENCE_THREADS"], env["DECODERS"]) == (str(slots), "2", "2")
        env = other.env  # type: ignore[attr-defined]
        assert (env["INFERENCE_THREADS"], env["DECODERS"]) == ("3", "1")  # the function's own setting wins
        assert "LOCAL_CPU_SLOTS" not in finalize.env  # type: ignore[attr-defined]
    finally:
        runner.stop()
    assert not slots.exists()
