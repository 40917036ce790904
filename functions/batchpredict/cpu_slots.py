"""The machine's cores as slots that the local predict workers take turns to compute on, so that
their REPORT lines and ``_summary.json`` estimate what Lambda would bill.

Why: on Lambda each invocation has vCPUs of its own (1,769 MB of memory buys one; the template's
3,538 MB buys two). Locally several predict worker processes share the machine's cores, so each
one's wall time (its billed duration) stretched with its co-tenants: the same job measured 0.152
GB-s per line with one worker and 0.255 with two (issue 18).

The design: the runner makes one slot per core (``CpuSlots``: a lock file each, ``flock``, so a
worker that dies frees its slots at once). Each predict worker holds, through its ``SlotGate``, as
many slots as the function's memory buys (``costs.vcpus``; its decoders and inference threads are
that many) from the start of each invocation to its end, in turn with the other workers, except
while the invocation only waits on the network: on image URLs with nothing left to decode or
infer (``pipeline.StreamingPredictor``), and on its last writes (``batch.ChunkBatch``). So no more
workers run at once than the cores allow, each on as many cores as Lambda would give it, and a
worker whose only work is waiting on slow URLs holds no slot: another computes meanwhile, which
is what extra workers are for. The time a worker waited for its slots is time Lambda would not
have billed (its vCPUs would have been there): the REPORT line's duration and the chunks' billed
ms (``costs.ComputeMeter``) leave it out; the wait at an invocation's start is before its clock
starts. Time spent waiting on the network, S3, SQS or DynamoDB is billed, as on Lambda.

Why the whole invocation and not only its decodes and forward passes: a worker's other work
(receiving, claims, part and row writes, and the emulated services answering them: DynamoDB
Local, moto, the file server, none of which runs on a Lambda's vCPUs) then ran on the cores
another worker was billed for, and stretched its billed time: 1.45x the GB-s with two workers in
a first try. Held for the whole invocation, a worker's time is what it would be alone.

What this does not emulate: the fraction of a vCPU below 1,769 MB (a slot is a whole core, so a
smaller function is estimated as if it had one), and the CPU the emulated services and other
processes of the machine take from the running worker, which stretches its time somewhat (the
estimate errs high, not low).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

# How often a worker waiting for slots tries them again (it holds the turn meanwhile).
POLL_SECONDS = 0.002
TURN_FILE = "turn"


def make_slots(folder: Path, cores: int) -> Path:
    """The slot files of ``cores`` cores (and the turn file) in ``folder``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in [TURN_FILE, *(f"slot-{i}" for i in range(cores))]:
        (folder / name).touch()
    return folder


class CpuSlots:
    """One process's handle on the machine's slots. A worker takes its turn (the turn file), then
    takes free slots until it has as many as it asked for; the next worker's turn waits for it."""

    def __init__(self, folder: Path, sleep: Callable[[float], None] = time.sleep) -> None:
        self._turn = os.open(folder / TURN_FILE, os.O_RDWR)
        slots = sorted(folder.glob("slot-*"), key=lambda p: int(p.name.partition("-")[2]))
        if not slots:
            raise ValueError(f"{folder} holds no CPU slots")
        self._slots = [os.open(p, os.O_RDWR) for p in slots]
        self._sleep = sleep

    @property
    def cores(self) -> int:
        return len(self._slots)

    def acquire(self, count: int) -> list[int]:
        """Blocks until this process holds ``count`` slots (at most all of them); their handles."""
        count = max(1, min(count, len(self._slots)))
        held: list[int] = []
        fcntl.flock(self._turn, fcntl.LOCK_EX)
        try:
            while True:
                for slot in self._slots:
                    if slot in held:
                        continue
                    try:
                        fcntl.flock(slot, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    held.append(slot)
                    if len(held) == count:
                        return held
                self._sleep(POLL_SECONDS)
        except BaseException:
            self.release(held)
            raise
        finally:
            fcntl.flock(self._turn, fcntl.LOCK_UN)

    @staticmethod
    def release(held: list[int]) -> None:
        for slot in held:
            fcntl.flock(slot, fcntl.LOCK_UN)


class SlotGate:
    """A worker process's ``cpu_gate.CpuGate``: its ``vcpus`` slots held while any of its threads
    is inside ``computing`` (and not ``idle``), and the time it waited for them."""

    def __init__(self, slots: CpuSlots, vcpus: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._slots = slots
        self.vcpus = vcpus
        self._clock = clock
        self._cond = threading.Condition()
        self._active = 0  # compute tasks inside the gate (or waiting at it)
        self._held: list[int] | None = None
        self._acquiring = False
        self._waited = 0.0

    @contextmanager
    def computing(self) -> Iterator[None]:
        self._enter()
        try:
            yield
        finally:
            self._exit()

    @contextmanager
    def idle(self) -> Iterator[None]:
        with self._cond:
            inside = self._active > 0
        if not inside:  # not within an invocation's hold: nothing to give back
            yield
            return
        self._exit()
        try:
            yield
        finally:
            self._enter()

    def waited_seconds(self) -> float:
        with self._cond:
            return self._waited

    def _enter(self) -> None:
        with self._cond:
            self._active += 1
            while self._held is None and self._acquiring:
                self._cond.wait()  # another thread of this process is taking the slots
            if self._held is not None:
                return
            self._acquiring = True
        started = self._clock()
        try:
            held = self._slots.acquire(self.vcpus)
        except BaseException:
            with self._cond:
                self._acquiring = False
                self._active -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._waited += self._clock() - started
            self._held, self._acquiring = held, False
            self._cond.notify_all()

    def _exit(self) -> None:
        with self._cond:
            self._active -= 1
            if self._active == 0 and self._held is not None:
                self._slots.release(self._held)
                self._held = None


@cache
def process_gate(folder: str, vcpus: int) -> SlotGate:
    """The one gate of this worker process (the handler's compute and the REPORT line share it)."""
    return SlotGate(CpuSlots(Path(folder)), vcpus)
