"""The local stack's CPU slots (cpu_slots.py): predict workers compute on the machine's
cores in turn, each on as many as its memory buys, and the time one waits for them is not billed."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from batchpredict.costs import ComputeMeter, floor_gb_seconds, vcpus
from batchpredict.cpu_slots import CpuSlots, SlotGate, make_slots

# How long a test lets a blocked thread show that it is blocked (it must not get through).
BLOCKED_FOR = 0.2


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gate(folder: Path, vcpus: int, clock: FakeClock) -> SlotGate:
    # Each gate opens the slot files itself: flock treats its descriptors apart from any
    # other's, as it does another process's.
    return SlotGate(CpuSlots(folder, sleep=lambda _: None), vcpus, clock)


def test_lambda_vcpus_follow_the_memory() -> None:
    assert [vcpus(mb) for mb in (128, 1024, 1769, 3000, 3538, 5307, 10_240)] == [1, 1, 1, 1, 2, 3, 6]
    # The floor: every vCPU busy all the time; 3,538 MB (2 vCPUs) for 45 ms of CPU per image.
    assert floor_gb_seconds(3538, 0.045) == pytest.approx(3538 / 1024 * 0.045 / 2)


def test_a_worker_waits_for_the_cores_another_computes_on_and_that_wait_is_not_billed(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    folder = make_slots(tmp_path / "slots", cores=2)
    first, second = gate(folder, 2, clock), gate(folder, 2, clock)
    meter = ComputeMeter(3538, clock, second.waited_seconds)
    entered = threading.Event()

    def compute() -> None:
        with second.computing():
            entered.set()

    with first.computing():
        waiting = threading.Thread(target=compute)
        waiting.start()
        assert not entered.wait(BLOCKED_FOR)  # both cores are the first worker's
        clock.now += 5.0  # the first computes for 5 s meanwhile
    waiting.join(5)
    assert entered.is_set()
    assert second.waited_seconds() == pytest.approx(5.0)
    assert first.waited_seconds() == 0.0
    clock.now += 1.0  # the second computes for 1 s
    assert meter.take(0).billed_ms == 1000  # its 6 s of wall time, less the 5 s it waited


def test_workers_of_one_vcpu_compute_side_by_side_on_two_cores(tmp_path: Path) -> None:
    clock = FakeClock()
    folder = make_slots(tmp_path / "slots", cores=2)
    first, second, third = (gate(folder, 1, clock) for _ in range(3))
    entered = threading.Event()

    def compute() -> None:
        with third.computing():
            entered.set()

    with first.computing(), second.computing():
        waiting = threading.Thread(target=compute)
        waiting.start()
        assert not entered.wait(BLOCKED_FOR)  # a third would be one too many
    waiting.join(5)
    assert entered.is_set()
    assert first.waited_seconds() == second.waited_seconds() == 0.0


def test_a_workers_threads_share_its_slots_and_give_them_back_when_the_last_is_done(tmp_path: Path) -> None:
    clock = FakeClock()
    folder = make_slots(tmp_path / "slots", cores=2)
    worker, other = gate(folder, 2, clock), gate(folder, 2, clock)
    inside = threading.Barrier(3, timeout=5)

    def decode() -> None:
        with worker.computing():
            inside.wait()  # all three threads inside at once: one hold of the slots
            inside.wait()

    threads = [threading.Thread(target=decode) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    probe = CpuSlots(folder, sleep=lambda _: None)
    assert not _free(probe)  # held by the worker, once
    inside.wait()
    for t in threads:
        t.join(5)
    with other.computing():  # given back: the other worker gets them at once
        pass
    assert other.waited_seconds() == 0.0


def _free(slots: CpuSlots) -> bool:
    """Whether a slot could be taken now (without waiting)."""
    import fcntl

    for slot in slots._slots:
        try:
            fcntl.flock(slot, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        fcntl.flock(slot, fcntl.LOCK_UN)
        return True
    return False


def test_a_worker_that_dies_computing_frees_its_cores(tmp_path: Path) -> None:
    folder = make_slots(tmp_path / "slots", cores=1)
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from batchpredict.cpu_slots import CpuSlots\n"
        "CpuSlots(Path(sys.argv[1])).acquire(1)\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        assert not _free(CpuSlots(folder))
    finally:
        child.kill()  # SIGKILL: no clean-up of its own
        child.wait()
    clock = FakeClock()
    with gate(folder, 1, clock).computing():
        pass


def test_an_invocation_waiting_on_the_network_lets_another_worker_compute(tmp_path: Path) -> None:
    clock = FakeClock()
    folder = make_slots(tmp_path / "slots", cores=2)
    polling = threading.Event()  # the invocation is waiting for its cores back
    fetching = SlotGate(CpuSlots(folder, sleep=lambda _: polling.set()), 2, clock)
    other = gate(folder, 2, clock)
    computed = threading.Event()
    back = threading.Event()

    def compute() -> None:
        with other.computing():
            computed.set()
            assert back.wait(5) and polling.wait(5)
            clock.now += 2.0  # the other computes 2 s more while the first waits for its cores

    with fetching.computing():  # the invocation
        worker = threading.Thread(target=compute)
        worker.start()
        assert not computed.wait(BLOCKED_FOR)  # the invocation holds both cores
        with fetching.idle():  # only fetches out
            assert computed.wait(5)  # the other worker computes meanwhile
            back.set()
        # back from the wait: the cores again, after the other's 2 s, which are not billed
        assert fetching.waited_seconds() == pytest.approx(2.0)
    worker.join(5)


def test_idle_outside_an_invocation_holds_nothing_and_gives_nothing_back(tmp_path: Path) -> None:
    clock = FakeClock()
    folder = make_slots(tmp_path / "slots", cores=1)
    lone = gate(folder, 1, clock)
    with lone.idle():
        pass
    with lone.computing(), lone.computing():  # nested: one hold
        pass
    assert _free(CpuSlots(folder)) and lone.waited_seconds() == 0.0
