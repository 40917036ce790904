"""The streaming predict engine: fetch, decode and infer overlap inside one invocation.

* every URL is fetched concurrently (``ImageFetcher``: retries inside the image's deadline);
* each payload is decoded as soon as it arrives, by a pool of decoders admitted by a
  memory budget (``budget.MemoryBudget``), under a decode time budget;
* the engine (this thread) runs a forward pass whenever a bucket of decoded images is
  ready, or when nothing that could fill the bucket is still decoding; at the end of a run
  (no fetch out, the rest fits in one bucket) it takes ``TAIL_PASS`` images at a time rather
  than wait for the last decodes to fill the bucket, so that its last pass is a small one;
* a group (a chunk) is handed on as soon as its last image is done, while later images
  are still in flight;
* when every fetch still out has been out for ``refill_after_seconds`` (slow or stalled
  servers) and the CPU has at most a bucket of work left, the run asks its ``refill`` for more
  groups, so that a stalled fetch costs its own line's wait, not the invocation's idle cores
  (see batch.ChunkBatch);
* and at the tail of its compute (no fetch out, at most AHEAD_BUCKETS buckets of work left) it
  asks for more too, so that the next groups' fetches, and the last groups' writes, overlap the tail instead
  of the invocation ending with idle vCPUs and the next one starting with them: an invocation
  keeps taking work while it has time for a whole fetch and decode (its cost per image then no
  longer carries the fixed cost of an invocation's start and end; see README, "What it costs").

Per-host politeness (hostlimiter.py, when the fetcher has a limiter): a line's fetch first asks
for its host's turn. A turn soon is waited for on a timer, not on a fetch thread (the other
hosts' lines go on); a turn past the run's horizon, or a refusal (429/503), makes the line
*deferred* (``Outcome.deferred_until``): its group is handed on with it, and batch.py sends the
deferred lines back to the queue for later.

The same URL twice in a job is fetched once in a run, and the same bytes are decoded and
inferred once (sharedwork.py): a line that follows another takes that line's outcome.

One URL or payload can only fail its own result: whatever a fetch or decode raises
becomes that image's error. Work not done by the run's deadline is left out (its group
is reported unfinished, for redelivery), never written as a failure it did not earn.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from batchpredict import images
from batchpredict.budget import MemoryBudget
from batchpredict.config import StreamSettings
from batchpredict.cpu_gate import UNGATED, CpuGate
from batchpredict.errors import ErrorCode, PredictionError, RefusedError
from batchpredict.fetching import FetchResult, ImageFetcher
from batchpredict.fidelity import Fidelity, engine_for
from batchpredict.hostlimiter import Turn
from batchpredict.hostlimits import host_key
from batchpredict.images import DecodedImage, Preprocess
from batchpredict.model import Engine, available_cpus
from batchpredict.observability import logger
from batchpredict.predictor import Outcome
from batchpredict.records import WorkItem
from batchpredict.sharedwork import Follower, SharedWork, Slot
from batchpredict.urlkey import url_key

Clock = Callable[[], float]

# At the end of a run only the decodes under way can still add to the bucket, and waiting for
# them left the last bucket's forward pass (up to 16 images, ~150 ms on one thread) to run
# alone after the last decode, with the decoders' cores idle: ~150 ms at the end of every
# 32-image invocation, ~45 ms with passes of 4 (measured on the benchmark's photos). Passes
# of 4 cost per image what passes of 16 do (1-thread efficientnet-lite0: 8.7-9.0 ms either
# way; 9.2 at 2, ~10 at 1), and here (Zen 4, oneDNN held to AVX2) a pass of 4 gives the very
# same probabilities as a pass of 16 (the passes of 8, 2 and 1 a run's leftovers already make
# differ by up to 6e-7).
TAIL_PASS = 4


@dataclass
class ImageResult:
    """One image of a group, done: its outcome (predictions or error) and fetch time.
    ``shared_with``: the line whose fetch (and outcome) it took (sharedwork.py)."""

    item: WorkItem
    outcome: Outcome
    fetch_ms: float = 0.0
    shared_with: int | None = None


GroupDone = Callable[[int, list[ImageResult]], None]
# More groups for a run whose fetches are stalled, of at most the given number of lines in all
# (what the free fetch threads can fetch, one deadline after another, before the run ends), and
# the classes per image they need (None: the predictor's); no groups: nothing more to do.
Refill = Callable[[int], tuple[Sequence[Sequence[WorkItem]], int | None]]
# After a refill that found nothing, the next waits this many times ``refill_after_seconds``.
EMPTY_REFILL_BACKOFF = 5
# At the tail of its compute a run takes more work once no fetch is out and at most this many
# buckets are left to decode and infer: about 0.7 s of 2 vCPUs at 16 a bucket, so that the next
# chunks' fetches are in before the CPU runs dry. One bucket left was not enough: the fetches of
# a refill took up to 1.2 s on a loaded machine, and the vCPUs idled 0.3-0.6 s an invocation.
AHEAD_BUCKETS = 2
# A host's turn this close is taken at once rather than on the timer.
TIMER_SLACK_SECONDS = 0.002


class Decoder(Protocol):
    def memory_bytes(self, payload: bytes, fidelity: Fidelity) -> int:
        """The peak memory decoding ``payload`` will take, from its header alone."""
        ...

    def decode(self, payload: bytes, deadline: float, fidelity: Fidelity) -> DecodedImage:
        """The model's input tensor; PredictionError for a payload that cannot be one."""
        ...


@dataclass(frozen=True)
class ImageDecoder:
    """The production decode path (images.py) for one model's preprocessing."""

    preprocess: Preprocess
    max_pixels: int

    def memory_bytes(self, payload: bytes, fidelity: Fidelity) -> int:
        return images.decode_memory_bytes(payload, self.preprocess, self.max_pixels, fidelity)

    def decode(self, payload: bytes, deadline: float, fidelity: Fidelity) -> DecodedImage:
        return images.decode_image(
            payload, self.preprocess, self.max_pixels, deadline=deadline, fidelity=fidelity
        )


@dataclass
class _Ready:
    group: int
    position: int
    outcome: Outcome
    fetch_ms: float
    since: float


@dataclass
class _Run:
    """The state of one ``run``: shared by the fetch and decode threads and the engine loop."""

    deadline: float
    groups: list[Sequence[WorkItem]] = field(default_factory=list)
    results: list[list[ImageResult | None]] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    ready: deque[_Ready] = field(default_factory=deque)
    completed: deque[int] = field(default_factory=deque)
    fetching: int = 0
    waiting: int = 0  # of ``fetching``: lines waiting on a timer for their host's turn
    host_pending: Counter[str | None] = field(default_factory=Counter)  # lines not yet sent, by host
    decoding: int = 0
    closed: bool = False  # past the deadline: late work is dropped, not recorded
    top_k: int = 5
    last_fetch: float = 0.0  # when the latest fetch was submitted
    next_refill: float = 0.0  # no refill before this time
    shared: SharedWork = field(default_factory=SharedWork)

    def finish(self, group: int, position: int, result: ImageResult) -> None:
        with self.cond:
            if not self.closed:
                self._record([((group, position), result)])
                self.cond.notify()

    def follow(self, key: tuple[object, ...], follower: Follower) -> bool:
        """Whether ``follower`` takes the outcome of the line that leads ``key`` in this run (at
        once if it is done); False: it leads ``key`` itself."""
        with self.cond:
            leader = self.shared.follow(key, follower)
            if leader is None:
                return False
            done = self.results[leader[0]][leader[1]]
            if done is not None and not self.closed:
                self._record(self._followers(leader, done))
                self.cond.notify()
            return True

    def _record(self, todo: list[tuple[Slot, ImageResult]]) -> None:
        """Record each result, and its followers' copies of it (under ``cond``)."""
        while todo:
            (group, position), result = todo.pop()
            if self.results[group][position] is not None:
                continue
            self.results[group][position] = result
            self.pending[group] -= 1
            if self.pending[group] == 0:
                self.completed.append(group)
            todo += self._followers((group, position), result)

    def _followers(self, leader: Slot, result: ImageResult) -> list[tuple[Slot, ImageResult]]:
        copies = []
        for follower in self.shared.take(leader):
            group, position = follower.slot
            copies.append((follower.slot, _copied(result, self.groups[group][position], follower)))
        return copies


def _copied(leader: ImageResult, item: WorkItem, follower: Follower) -> ImageResult:
    """``item``'s result from its leader's: the same predictions, image and error, no decode or
    inference time of its own; its own fetch time, or none and the leader named (unless the
    leader is the same line, in a second delivery of its chunk)."""
    # Every field, so that a deferred leader's followers are deferred with it.
    outcome = replace(leader.outcome, preprocess_ms=0.0, inference_ms=0.0)
    if follower.fetch_ms is None:
        same_line = leader.item.index == item.index
        return ImageResult(item, outcome, 0.0, shared_with=None if same_line else leader.item.index)
    return ImageResult(item, outcome, follower.fetch_ms)


class StreamingPredictor:
    """Runs groups of work items through fetch -> decode -> inference, streaming.

    Pools are built once per process and shared by every run; a run's tasks all end by
    its deadline (fetches and decodes are bounded by it), so a later run never waits on them.
    """

    def __init__(
        self,
        engine: Engine,
        fetcher: ImageFetcher,
        settings: StreamSettings,
        top_k: int,
        memory: MemoryBudget,
        *,
        decoder: Decoder | None = None,
        fast_engine: Engine | None = None,
        gate: CpuGate = UNGATED,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 1 <= settings.bucket <= engine.max_batch:
            raise ValueError(f"bucket must be between 1 and the engine's max batch {engine.max_batch}")
        self.engine = engine
        self.fast_engine = fast_engine  # fidelity fast's own engine, once one passes its gate
        self.fetcher = fetcher
        self.settings = settings
        self.top_k = top_k
        self.memory = memory
        self.decoder = decoder or ImageDecoder(engine.spec.preprocess, settings.max_pixels)
        self.gate = gate  # held around each decode and forward pass (cpu_gate.py)
        self._clock = clock
        self._fetchers = ThreadPoolExecutor(fetcher.policy.concurrency, thread_name_prefix="fetch")
        self._timer = _Timer()  # lines waiting for their host's turn
        self._decoders = ThreadPoolExecutor(
            settings.decoders or available_cpus(), thread_name_prefix="decode"
        )

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    def run(
        self,
        groups: Sequence[Sequence[WorkItem]],
        deadline: float,
        on_done: GroupDone,
        top_k: int | None = None,
        refill: Refill | None = None,
    ) -> set[int]:
        """Predict every item; ``on_done(group, results)`` as each group completes (on this
        thread). Items with an error (failed at split time) or no URL are done at once.
        ``top_k``: classes per image this run (None: the predictor's). ``refill``: asked for
        more groups while fetches stall (their indices follow the ones before).

        Returns the groups not completed by ``deadline``.
        """
        now = self._clock()
        run = _Run(deadline=deadline, top_k=top_k or self.top_k, last_fetch=now, next_refill=now)
        self._add(run, groups)
        handed: set[int] = set()
        try:
            self._loop(run, on_done, refill, handed)
        finally:
            with run.cond:
                run.closed = True
        # Whatever was not handed on is unfinished, even if its last image came in just now.
        return set(range(len(run.groups))) - handed

    def _add(self, run: _Run, groups: Sequence[Sequence[WorkItem]]) -> None:
        for items in groups:
            with run.cond:
                g = len(run.groups)
                run.groups.append(items)
                run.results.append([None] * len(items))
                run.pending.append(len(items))
                if not items:
                    run.completed.append(g)
                # A line with the URL of an earlier line of its job takes that line's fetch
                # (sharedwork.py) and asks for no host turn.
                fetch = [
                    p
                    for p, item in enumerate(items)
                    if item.error is None and item.url and not run.follow(_same_url(item), Follower((g, p)))
                ]
                # Counted before the first fetch asks for a turn: a lease is sized by them.
                run.host_pending.update(host_key(items[p].url or "") for p in fetch)
            for p, item in enumerate(items):
                if item.error is not None or not item.url:
                    run.finish(g, p, ImageResult(item, Outcome()))  # failed at split time
            for p in fetch:
                with run.cond:
                    run.fetching += 1
                    run.last_fetch = self._clock()
                self._fetchers.submit(self._fetch, run, g, p, items[p])

    # -- the engine loop (the calling thread) -------------------------------------------

    def _loop(self, run: _Run, on_done: GroupDone, refill: Refill | None, handed: set[int]) -> None:
        while len(handed) < len(run.groups):
            batch: list[_Ready] = []
            finished: list[int] = []
            refill_lines = 0
            with run.cond:
                while True:
                    now = self._clock()
                    if run.completed:
                        finished = list(run.completed)
                        run.completed.clear()
                        break
                    if now >= run.deadline:
                        run.closed = True  # late work is dropped from here on, under this lock
                        return
                    take = self._batch_size(run, now)
                    if take:
                        batch = [run.ready.popleft() for _ in range(take)]
                        break
                    lines = self._refill_lines(run, now) if refill is not None else 0
                    if lines and now >= self._stall_ends(run):
                        refill_lines = lines
                        break
                    ahead = self._ahead_lines(run, now) if refill is not None else 0
                    if ahead:
                        refill_lines = ahead
                        break
                    if run.ready or run.decoding:
                        run.cond.wait(self._wait_seconds(run, now, bool(lines)))
                        continue
                    with self.gate.idle():  # only fetches out: other workers may compute
                        run.cond.wait(self._wait_seconds(run, now, bool(lines)))
            for g in finished:
                handed.add(g)
                on_done(g, [r for r in run.results[g] if r is not None])
            if batch:
                self._infer(run, batch)
            if refill_lines and refill is not None:
                self._refill(run, refill, refill_lines)

    def _refill_lines(self, run: _Run, now: float) -> int:
        """How many lines a refill may add now (0: none). Only while fetches are out, on threads
        of their own, and the CPU has at most a bucket of work left (ready or decoding): the
        new fetches then arrive as it runs dry. Only as many as the free fetch threads can
        take, one whole fetch deadline after another, and still decode before the run ends."""
        free = self.fetcher.policy.concurrency - (run.fetching - run.waiting)
        if not run.fetching or free <= 0 or len(run.ready) + run.decoding > self.settings.bucket:
            return 0
        rounds = int((run.deadline - now - self.settings.decode_seconds) // self.fetcher.total_timeout)
        return free * max(rounds, 0)

    def _ahead_lines(self, run: _Run, now: float) -> int:
        """How many lines to take at the tail of the compute (0: none): no fetch out, some but at
        most AHEAD_BUCKETS buckets of CPU work left, no refill found the queue empty lately, and
        time for the new lines' whole fetch and decode before the run ends."""
        if run.fetching or now < run.next_refill or not (run.ready or run.decoding):
            return 0
        if len(run.ready) + run.decoding > AHEAD_BUCKETS * self.settings.bucket:
            return 0
        rounds = int((run.deadline - now - self.settings.decode_seconds) // self.fetcher.total_timeout)
        return self.fetcher.policy.concurrency * max(rounds, 0)

    def _stall_ends(self, run: _Run) -> float:
        """When the fetches out count as stalled: the latest has been out ``refill_after_seconds``."""
        return max(run.last_fetch + self.settings.refill_after_seconds, run.next_refill)

    def _refill(self, run: _Run, refill: Refill, lines: int) -> None:
        pause = self.settings.refill_after_seconds
        try:
            groups, top_k = refill(lines)
        except Exception:  # the run goes on with what it has
            logger.exception("refill failed")
            groups, top_k = [], None
        with run.cond:
            run.next_refill = self._clock() + pause * (1 if groups else EMPTY_REFILL_BACKOFF)
            if groups:
                run.top_k = max(run.top_k, top_k or self.top_k)
        self._add(run, groups)

    def _batch_size(self, run: _Run, now: float) -> int:
        """How many ready images to infer now (0: wait for more)."""
        ready = len(run.ready)
        if ready >= self.settings.bucket:
            return self.settings.bucket
        if not ready:
            return 0
        if run.decoding:
            # A decode under way may complete the bucket. But once no fetch is out and all that
            # is left fits in one bucket, the run's last pass would wait for its last decode:
            # infer by TAIL_PASS meanwhile, so that only a few images follow that decode.
            tail = not run.fetching and ready + run.decoding <= self.settings.bucket
            return TAIL_PASS if tail and ready >= TAIL_PASS else 0
        lingered = now - run.ready[0].since >= self.settings.linger_seconds
        # Nothing is decoding: wait for fetches still out only a little, the CPU is idle meanwhile.
        return ready if lingered or not run.fetching else 0

    def _wait_seconds(self, run: _Run, now: float, may_refill: bool) -> float:
        until = run.deadline - now
        if run.ready and not run.decoding:
            until = min(until, run.ready[0].since + self.settings.linger_seconds - now)
        if may_refill:  # else a finished fetch or decode notifies
            until = min(until, self._stall_ends(run) - now)
        return max(until, 0.001)

    def _infer(self, run: _Run, batch: list[_Ready]) -> None:
        """One forward pass per engine the batch's fidelities pick (fidelity.engine_for)."""
        passes: dict[int, tuple[Engine, list[_Ready]]] = {}
        for ready in batch:
            fidelity = run.groups[ready.group][ready.position].fidelity
            engine = engine_for(fidelity, self.engine, self.fast_engine)
            passes.setdefault(id(engine), (engine, []))[1].append(ready)
        for engine, part in passes.values():
            self._forward(run, engine, part)

    def _forward(self, run: _Run, engine: Engine, batch: list[_Ready]) -> None:
        try:
            with self.gate.computing():
                tensors = np.stack([r.outcome.image.tensor for r in batch])  # type: ignore[union-attr]
                started = time.perf_counter()
                predictions = engine.run_inference(tensors, run.top_k)
        except Exception:
            # Not one image's fault (every tensor has the engine's shape): leave these images
            # unfinished so their chunks come back, rather than failing lines that may be fine.
            logger.exception("forward pass failed", extra={"images": len(batch)})
            return
        # The forward pass is shared, so each image is charged its share of it.
        share = (time.perf_counter() - started) * 1000 / len(batch)
        for ready, preds in zip(batch, predictions, strict=True):
            ready.outcome.predictions = preds
            ready.outcome.inference_ms = share
            item = run.groups[ready.group][ready.position]
            result = ImageResult(item, ready.outcome, ready.fetch_ms)
            run.finish(ready.group, ready.position, result)

    # -- fetch and decode (pool threads) -----------------------------------------------

    def _fetch(self, run: _Run, group: int, position: int, item: WorkItem) -> None:
        """Wait for the host's turn (on the timer), defer the line, or fetch it now."""
        if self.fetcher.limiter is None or run.closed:
            self._fetch_now(run, group, position, item)
            return
        try:
            turn = self._turn(run, item)
        except Exception as exc:
            logger.exception("host turn failed unexpectedly", extra={"url": (item.url or "")[:200]})
            self._fetched(
                run, group, position, item, FetchResult(_internal(exc, "waiting for the host"), 0.0)
            )
            return
        if turn.refusing or turn.defer_until is not None:
            self._fetched(run, group, position, item, FetchResult(_not_now(item, turn), 0.0))
        elif turn.at > time.time() + TIMER_SLACK_SECONDS:
            with run.cond:
                run.waiting += 1
            self._timer.at(
                turn.at, lambda: self._fetchers.submit(self._fetch_waited, run, group, position, item, turn)
            )
        else:
            self._fetch_now(run, group, position, item)

    def _turn(self, run: _Run, item: WorkItem) -> Turn:
        assert self.fetcher.limiter is not None
        key = host_key(item.url or "")
        mono, wall = self._clock(), time.time()
        # A turn must leave the line time for its whole fetch and decode before the run ends.
        room = run.deadline - mono - self.fetcher.total_timeout - self.settings.decode_seconds
        policy = self.fetcher.limiter.policy
        horizon = wall + max(min(policy.max_wait_seconds, room), policy.lease_seconds)
        with run.cond:
            pending = run.host_pending[key]
            run.host_pending[key] -= 1
        return self.fetcher.limiter.turn(item.url or "", item.host_rps, horizon, pending)

    def _fetch_waited(self, run: _Run, group: int, position: int, item: WorkItem, turn: Turn) -> None:
        """The turn's time has come: fetch, unless the host was cut since it was granted (then
        the line asks for a turn again, at the new rate)."""
        assert self.fetcher.limiter is not None
        stands = run.closed or self.fetcher.limiter.valid(item.url or "", turn)
        with run.cond:
            run.waiting -= 1
            if not stands:
                run.host_pending[host_key(item.url or "")] += 1
        if stands:
            self._fetch_now(run, group, position, item)
        else:
            self._fetch(run, group, position, item)

    def _fetch_now(self, run: _Run, group: int, position: int, item: WorkItem) -> None:
        fetched: FetchResult | None = None
        try:
            if not run.closed:
                fetched = self.fetcher.fetch(
                    item.url or "", run.deadline, item.host_rps, robots=item.honour_robots
                )
        except Exception as exc:  # a bug or an unforeseen library error: this line only
            logger.exception("fetch failed unexpectedly", extra={"url": (item.url or "")[:200]})
            fetched = FetchResult(_internal(exc, "fetching"), 0.0)
        finally:
            if fetched is None:
                with run.cond:
                    run.fetching -= 1
                    run.cond.notify()
        if fetched is not None:
            self._fetched(run, group, position, item, fetched)

    def _fetched(self, run: _Run, group: int, position: int, item: WorkItem, fetched: FetchResult) -> None:
        with run.cond:
            run.fetching -= 1
            if isinstance(fetched.payload, bytes) and not run.closed:
                run.decoding += 1
            run.cond.notify()
        if isinstance(fetched.payload, PredictionError):
            if self._cut_by_deadline(run, fetched.payload):
                return  # the run, not the image, ran out of time: the chunk comes back
            result = ImageResult(item, _outcome_of(fetched.payload), fetched.fetch_ms)
            run.finish(group, position, result)
            return
        if not run.closed:
            self._decode_once(run, group, position, item, fetched)

    def _decode_once(
        self, run: _Run, group: int, position: int, item: WorkItem, fetched: FetchResult
    ) -> None:
        """Decode the payload, unless the same bytes (sha256, same fidelity) are decoding or
        decoded in this run: the line then takes their outcome, with its own fetch time."""
        assert isinstance(fetched.payload, bytes)
        # images.decode_image hashes the bytes again for the record (~0.6 ms a MiB each).
        digest = hashlib.sha256(fetched.payload).digest()
        with run.cond:
            if run.follow(("bytes", item.fidelity, digest), Follower((group, position), fetched.fetch_ms)):
                run.decoding -= 1  # counted by _fetched, which expected a decode
                run.cond.notify()
                return
        self._decoders.submit(self._decode, run, group, position, item, fetched)

    def _decode(self, run: _Run, group: int, position: int, item: WorkItem, fetched: FetchResult) -> None:
        payload = fetched.payload
        assert isinstance(payload, bytes)
        outcome = Outcome()
        started = time.perf_counter()
        try:
            if run.closed:
                return
            with (
                self.memory.reserve(self.decoder.memory_bytes(payload, item.fidelity)),
                self.gate.computing(),
            ):
                deadline = min(self._clock() + self.settings.decode_seconds, run.deadline)
                outcome.image = self.decoder.decode(payload, deadline, item.fidelity)
        except PredictionError as exc:
            outcome.error = exc
        except Exception as exc:
            logger.exception("decode failed unexpectedly", extra={"url": (item.url or "")[:200]})
            outcome.error = _internal(exc, "decoding")
        finally:
            outcome.preprocess_ms = (time.perf_counter() - started) * 1000
            with run.cond:
                run.decoding -= 1
                if outcome.image is not None and not run.closed:
                    run.ready.append(_Ready(group, position, outcome, fetched.fetch_ms, self._clock()))
                run.cond.notify()
        if outcome.error is not None and not self._cut_by_deadline(run, outcome.error):
            run.finish(group, position, ImageResult(item, outcome, fetched.fetch_ms))

    def _cut_by_deadline(self, run: _Run, error: PredictionError) -> bool:
        timed_out = error.code in (ErrorCode.FETCH_TIMEOUT, ErrorCode.DECODE_TIMEOUT)
        return timed_out and self._clock() >= run.deadline

    def close(self) -> None:
        self._timer.stop()
        self._fetchers.shutdown(wait=False, cancel_futures=True)
        self._decoders.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()


def _same_url(item: WorkItem) -> tuple[object, ...]:
    """The key of lines that share one fetch: same job, same fidelity, same URL key."""
    return ("url", item.job_id, item.fidelity, url_key(item.url or ""))


def _not_now(item: WorkItem, turn: Turn) -> PredictionError:
    host = host_key(item.url or "")
    if turn.refusing:
        return PredictionError(
            ErrorCode.RATE_LIMITED, f"{host} has refused every request lately (HTTP 429/503)", transient=False
        )
    wait = (turn.defer_until or 0.0) - time.time()
    return _DeferredError(f"{host}'s next turn is {wait:.0f} s away", turn.defer_until or 0.0)


class _DeferredError(PredictionError):
    """Not this run: the host's turn comes after the run's horizon."""

    def __init__(self, message: str, until: float) -> None:
        super().__init__(ErrorCode.RATE_LIMITED, message, transient=True)
        self.until = until


def _outcome_of(error: PredictionError) -> Outcome:
    """A fetch's error as the line's outcome: failed, or deferred (its host said not now)."""
    if isinstance(error, RefusedError):
        return Outcome(error=error, deferred_until=time.time() + (error.retry_after or 0.0), refused=True)
    if isinstance(error, _DeferredError):
        return Outcome(error=error, deferred_until=error.until)
    return Outcome(error=error)


class _Timer:
    """Runs callbacks at epoch times, on one thread (started on first use)."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], object]]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def at(self, when: float, callback: Callable[[], object]) -> None:
        with self._cond:
            heapq.heappush(self._due, (when, next(self._order), callback))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="host-turns", daemon=True)
                self._thread.start()
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._due or self._due[0][0] > time.time()):
                    self._cond.wait(self._due[0][0] - time.time() if self._due else None)
                if self._stopped:
                    return
                _, _, callback = heapq.heappop(self._due)
            try:
                callback()
            except Exception:  # a pool shut down under it: the run is over
                logger.exception("a host turn's callback failed")


def _internal(exc: BaseException, doing: str) -> PredictionError:
    return PredictionError(
        ErrorCode.INTERNAL_ERROR, f"internal error while {doing}: {type(exc).__name__}", transient=False
    )
