"""A memory budget that admits decodes: the decoder pool is sized by memory, not only by CPUs.

A hostile image just under the pixel cap can need hundreds of MB while it decodes (a
palette PNG with transparency, an animated WebP's canvas), so running one decoder per CPU
is only safe while their peaks fit together. Each decode reserves its estimated peak
(``images.decode_memory_bytes``) before it starts and waits while the budget is spent;
one decode bigger than the whole budget still runs, alone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MIB = 1024 * 1024


class MemoryBudget:
    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"a memory budget needs a positive capacity, got {capacity_bytes}")
        self.capacity = capacity_bytes
        self.in_use = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold ``size`` bytes of the budget for the duration of the block."""
        with self._cond:
            # Over-budget requests wait for an empty budget, then run alone.
            while self.in_use and self.in_use + size > self.capacity:
                self._cond.wait()
            self.in_use += size
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= size
                self._cond.notify_all()


def resident_bytes() -> int:
    """This process's resident memory now (Linux), 0 where unknown."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def decode_budget_bytes(memory_mb: int, resident: int, headroom: float = 0.15) -> int:
    """What decoders may use: the function's memory, less what the process holds already
    (interpreter, model, bound executors) and a headroom for everything else in flight."""
    usable = int(memory_mb * MIB * (1 - headroom)) - resident
    return max(usable, 64 * MIB)


def machine_memory_mb() -> int:
    """The memory this process may use outside Lambda: the cgroup v2 limit, else physical."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            return int(limit) // MIB
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB
