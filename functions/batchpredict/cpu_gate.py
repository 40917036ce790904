"""The contract between predict's compute (decode, forward passes) and whoever lends it CPUs.

On Lambda an invocation's vCPUs are its own (1,769 MB of memory buys one): nothing to wait
for, so predict runs ``UNGATED``. The local stack shares a machine's cores between several
predict workers; there a gate (``batchpredict.cpu_slots``) makes an invocation hold as
many cores as its memory buys while it runs, except while it only waits on image URLs or on its
last writes, and counts the time it waited for them, which Lambda would not have billed (see
costs.ComputeMeter and the local REPORT lines).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class CpuGate(Protocol):
    def computing(self) -> AbstractContextManager[None]:
        """Held around an invocation and around each of its CPU tasks (a decode, a forward pass):
        the invocation's vCPUs are its own meanwhile."""
        ...

    def idle(self) -> AbstractContextManager[None]:
        """Inside ``computing``: a wait on the network alone (fetches, writes). Other workers may
        compute meanwhile, unless a CPU task of this invocation still runs."""
        ...

    def waited_seconds(self) -> float:
        """Seconds this process has waited for its CPUs so far (only ever grows)."""
        ...


class Ungated:
    """Lambda's case: the vCPUs are there; nothing is waited for."""

    @contextmanager
    def computing(self) -> Iterator[None]:
        yield

    @contextmanager
    def idle(self) -> Iterator[None]:
        yield

    def waited_seconds(self) -> float:
        return 0.0


UNGATED = Ungated()
