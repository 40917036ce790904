"""Work one predict run does once for several lines (pipeline.StreamingPredictor, issue 19).

A line leads a key (the first with it in the run does the work) or follows its leader and
takes the leader's outcome when it is done. Two keys:

* the same URL (urlkey.url_key) in the same job, same fidelity: the follower shares the fetch
  too (no fetch, no decode, no inference of its own);
* the same bytes (sha256) and fidelity, any job: the follower fetched for itself, and shares
  the decode and the forward pass.

Pure bookkeeping of slots (group, position); the run holds its lock around every call.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

Slot = tuple[int, int]  # (group, position) in a run


@dataclass(frozen=True)
class Follower:
    slot: Slot
    fetch_ms: float | None = None  # None: it shares its leader's fetch; else its own fetch took this


@dataclass
class SharedWork:
    _leaders: dict[Hashable, Slot] = field(default_factory=dict)
    _followers: dict[Slot, list[Follower]] = field(default_factory=dict)

    def follow(self, key: Hashable, follower: Follower) -> Slot | None:
        """The leader of ``key``, with ``follower`` registered to it; None: ``follower`` leads
        ``key`` from now on (it does the work)."""
        leader = self._leaders.setdefault(key, follower.slot)
        if leader == follower.slot:
            return None
        self._followers.setdefault(leader, []).append(follower)
        return leader

    def take(self, leader: Slot) -> list[Follower]:
        """The followers waiting for ``leader``'s outcome (each is handed out once)."""
        return self._followers.pop(leader, [])
