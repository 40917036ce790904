"""moto's SQS with standard queues whose calls do not scan the queue (the local stack's moto server).

moto 5.2.5 keeps a queue's messages in one list and scans it on every call: a receive builds
the list of visible messages and, for each message it returns, checks the retention period
through the queue's attribute map, which counts the visible, delayed and in-flight messages
(three more scans); every send reads that map too; delete and change-visibility look a receipt
handle up message by message. Receiving 10 messages took 0.56 s at a depth of 1,000 and 22 s
at 40,000, so a local job of more than ~10k lines crawled (issue 9).

``install()`` (called by ``servers.MotoServer`` before the server starts, so only in the process
that runs the local stack's, the tests' and the benchmarks' moto server) keeps, per standard
queue, an index beside moto's list:

* ready messages in a heap by send order (moto's order: oldest first, a message that comes
  back after its visibility timeout keeps its place);
* in-flight and delayed messages in a heap by the time they become visible;
* receipt handles (every one a message was given) -> message.

Receive, delete and change-visibility then cost O(log n) (plus one C-level ``list.remove`` of
the deleted message from moto's list, which the rest of moto still reads), and the
``Approximate*`` counts O(1) after the heaps are brought up to date. What a client sees does not
change: visibility timeouts, receive counts, redrive to the dead-letter queue after
``maxReceiveCount`` receives, long polling, retention. FIFO queues, and queues with moto's own
Lambda event-source mappings (the local stack has its own runner), keep moto's code unchanged.

Fair queues (moto has none): a standard queue's messages sent with a MessageGroupId are received
the way Amazon SQS fair queues deliver them ("How Amazon SQS fair queues work", SQS Developer
Guide): the group is the tenant, and of the tenants with ready messages the one with the fewest
messages in flight goes first, so a quiet tenant's messages come out ahead of a noisy tenant's
backlog as soon as they are ready; within a tenant, send order. A message without a group is a
tenant of its own (as on AWS), never in flight when ready: such messages go first, in send order,
so a queue that never sees a group keeps the order above. Not emulated: AWS's thresholds (a
tenant is noisy above 10% of the in-flight messages and 30 of its own, or 10% of the consumers'
recent processing time; below them SQS keeps its usual order), its processing-time share, and
the 5 minutes after which a silent noisy tenant is forgiven. ``install(fair_queues=False)``
ignores groups (a standard queue without fair queues: send order), benchmarks/fairness.py's
"before".
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import Counter
from copy import deepcopy
from typing import Any

from moto.core.utils import unix_time, unix_time_millis
from moto.sqs import models
from moto.sqs.exceptions import InvalidParameterValue, ReceiptHandleIsInvalid
from moto.sqs.models import Message, Queue, SQSBackend

MAX_VISIBILITY_SPAN_MS = 43200 * 1000  # SQS: a message's visibility can reach 12 h after it was sent


class DepthIndex:
    """Where a standard queue's live messages are: ready, in flight, delayed."""

    def __init__(self, queue: Queue, fair: bool = True) -> None:
        self.lock = threading.RLock()
        self.fair = fair  # messages grouped by MessageGroupId (module doc, "Fair queues")
        self.live: dict[str, Message] = {}
        self._order: dict[str, int] = {}
        # Per tenant (a MessageGroupId; None: messages without one, each a tenant of its own):
        # (send order, id); entries of gone messages skipped.
        self._ready: dict[str | None, list[tuple[int, str]]] = {}
        self._ready_ids: set[str] = set()
        self._tenant: dict[str, str | None] = {}  # id -> its tenant
        self._busy: Counter[str | None] = Counter()  # tenant -> its messages in flight
        self._hidden: list[tuple[float, int, str]] = []  # (visible or due at, order, id)
        self.in_flight: dict[str, float] = {}  # id -> visible_at (ms)
        self.delayed: dict[str, float] = {}  # id -> delayed_until (ms)
        self._handles: dict[str, str] = {}  # receipt handle -> id
        self._counter = itertools.count()
        for message in list(queue._messages):  # a queue with messages before install()
            self.add(message)

    # --- bookkeeping -----------------------------------------------------------------------

    def add(self, message: Message) -> None:
        with self.lock:
            self.live[message.id] = message
            self._order[message.id] = next(self._counter)
            self._tenant[message.id] = message.group_id if self.fair else None
            for handle in message.all_receipt_handles:
                if handle:
                    self._handles[handle] = message.id
            self.place(message)

    def place(self, message: Message) -> None:
        """File a live message under ready, in flight or delayed, by its own timestamps."""
        now = unix_time_millis()
        key, order = message.id, self._order[message.id]
        self._land(key)
        self.delayed.pop(key, None)
        self._ready_ids.discard(key)  # its entry in the ready heap, if any, is skipped from now on
        if now < message.delayed_until:
            self.delayed[key] = message.delayed_until
            heapq.heappush(self._hidden, (message.delayed_until, order, key))
        elif not now > message.visible_at:
            self.in_flight[key] = message.visible_at
            self._busy[self._tenant[key]] += 1
            heapq.heappush(self._hidden, (message.visible_at, order, key))
        else:
            self._ready_ids.add(key)
            heapq.heappush(self._ready.setdefault(self._tenant[key], []), (order, key))

    def _land(self, key: str) -> None:
        """The message is no longer in flight (if it was)."""
        if self.in_flight.pop(key, None) is not None:
            tenant = self._tenant[key]
            self._busy[tenant] -= 1
            if not self._busy[tenant]:
                del self._busy[tenant]

    def remove(self, queue: Queue, message: Message) -> None:
        with self.lock:
            key = message.id
            if key in self._tenant:
                self._land(key)
            self.live.pop(key, None)
            self._order.pop(key, None)
            self._tenant.pop(key, None)
            self.delayed.pop(key, None)
            self._ready_ids.discard(key)
            for handle in message.all_receipt_handles:
                self._handles.pop(handle, None)  # type: ignore[arg-type]
            queue._messages.remove(message)

    def add_handle(self, message: Message) -> None:
        """Remember the handle a receive just gave the message (its old ones stay valid)."""
        self._handles[message.receipt_handle] = message.id  # type: ignore[index]

    def by_handle(self, receipt_handle: str) -> Message | None:
        key = self._handles.get(receipt_handle)
        return None if key is None else self.live.get(key)

    def refresh(self) -> None:
        """Move the messages whose visibility timeout or delay has passed to ready."""
        now = unix_time_millis()
        # Strictly before now: moto counts a message visible once now > visible_at.
        while self._hidden and self._hidden[0][0] < now:
            due, _, key = heapq.heappop(self._hidden)
            message = self.live.get(key)
            # An entry the message has since moved on from (received again, visibility changed)
            # is stale: its current one is further down the heap.
            if message is not None and due in (self.in_flight.get(key), self.delayed.get(key)):
                self.place(message)

    def has_ready(self) -> bool:
        with self.lock:
            self.refresh()
            return bool(self._ready_ids)

    def next_ready(self) -> Message | None:
        """The oldest ready message of the tenant with the fewest messages in flight (module doc);
        without groups, the oldest ready message."""
        chosen: tuple[int, int, str | None] | None = None  # (in flight, head's order, tenant)
        for tenant, heap in list(self._ready.items()):
            while heap and heap[0][1] not in self._ready_ids:
                heapq.heappop(heap)  # a message that moved on since it was filed here
            if not heap:
                del self._ready[tenant]
                continue
            # Messages without a group are tenants of their own: none of them is in flight.
            rank = (0 if tenant is None else self._busy[tenant], heap[0][0], tenant)
            if chosen is None or rank[:2] < chosen[:2]:
                chosen = rank
        if chosen is None:
            return None
        _, key = heapq.heappop(self._ready[chosen[2]])
        self._ready_ids.discard(key)
        return self.live[key]

    def counts(self) -> tuple[int, int, int]:
        """(visible, in flight, delayed), as moto's Approximate* attributes count them."""
        with self.lock:
            self.refresh()
            hidden, delayed = len(self.in_flight), len(self.delayed)
            return len(self.live) - hidden - delayed, hidden, delayed


def index_of(queue: Queue) -> DepthIndex | None:
    """The queue's index; None for the queues moto's own code keeps handling."""
    if queue.fifo_queue or queue.lambda_event_source_mappings:
        return None
    index = queue.__dict__.get("_depth_index")
    if index is None:
        index = queue.__dict__.setdefault("_depth_index", DepthIndex(queue, _settings["fair_queues"]))
    return index  # type: ignore[no-any-return]


def _receive(
    queue: Queue, index: DepthIndex, count: int, visibility_timeout: int, attribute_names: list[str]
) -> list[Message]:
    """One pass of moto's receive loop over the ready messages only."""
    received: list[Message] = []
    visible_again: list[Message] = []
    retention_ms = int(queue.message_retention_period) * 1000  # type: ignore[attr-defined]
    redrive = queue.redrive_policy if queue.dead_letter_queue is not None else None
    with index.lock:
        index.refresh()
        while len(received) < count:
            message = index.next_ready()
            if message is None:
                break
            queue.pending_messages.discard(message)  # visible again: its consumer timed out
            if message.sent_timestamp + retention_ms <= unix_time_millis():  # type: ignore[operator]
                index.remove(queue, message)  # past the retention period: SQS deletes it
                continue
            if redrive and message.approximate_receive_count >= redrive["maxReceiveCount"]:
                index.remove(queue, message)
                queue.dead_letter_queue.add_message(message)  # type: ignore[union-attr]
                continue
            queue.pending_messages.add(message)
            message.mark_received(visibility_timeout=visibility_timeout)
            index.add_handle(message)
            if message.visible:  # a zero visibility timeout: receivable again, by a later call
                visible_again.append(message)
            else:
                index.place(message)
            copy = deepcopy(message)  # moto's rule: attributes filtered on a copy
            models._filter_message_attributes(copy, attribute_names)
            received.append(copy)
        for message in visible_again:
            index.place(message)
    return received


# --- the patched methods ---------------------------------------------------------------------

_original: dict[str, Any] = {}
_settings = {"fair_queues": True}  # install()'s; read when a queue's index is made


def _add_message(self: Queue, message: Message) -> None:
    index = index_of(self)
    if index is not None:
        index.add(message)
    _original["add_message"](self, message)


def _delete_message(self: Queue, receipt_handle: str) -> None:
    index = index_of(self)
    if index is None:
        return _original["delete_message"](self, receipt_handle)  # type: ignore[no-any-return]
    if receipt_handle in self.deleted_messages:
        return None  # deleted before: SQS accepts it again
    with index.lock:
        message = index.by_handle(receipt_handle)
        if message is None:
            raise ReceiptHandleIsInvalid()
        index.remove(self, message)
        self.pending_messages.discard(message)
        self.deleted_messages.update(message.all_receipt_handles)  # type: ignore[arg-type]
    return None


def _wait_for_messages(self: Queue, timeout: int) -> None:
    index = index_of(self)
    if index is None:
        return _original["wait_for_messages"](self, timeout)  # type: ignore[no-any-return]
    with self._messages_lock:
        self._messages_lock.wait_for(index.has_ready, timeout=timeout)
    return None


def _count(position: int, original: str) -> property:
    def count(self: Queue) -> int:
        index = index_of(self)
        return _original[original].fget(self) if index is None else index.counts()[position]

    return property(count)


def _receive_message(
    self: SQSBackend,
    queue_name: str,
    count: int,
    wait_seconds_timeout: int,
    visibility_timeout: int,
    message_attribute_names: list[str] | None = None,
) -> list[Message]:
    queue = self.get_queue(queue_name)
    index = index_of(queue)
    if index is None:
        return _original["receive_message"](  # type: ignore[no-any-return]
            self, queue_name, count, wait_seconds_timeout, visibility_timeout, message_attribute_names
        )
    polling_end = unix_time() + wait_seconds_timeout
    while True:
        received = _receive(queue, index, count, visibility_timeout, message_attribute_names or [])
        if received or not wait_seconds_timeout or unix_time() > polling_end:
            return received
        queue.wait_for_messages(1)


def _change_message_visibility(
    self: SQSBackend, queue_name: str, receipt_handle: str, visibility_timeout: int
) -> None:
    queue = self.get_queue(queue_name)
    index = index_of(queue)
    if index is None:
        return _original["change_message_visibility"](  # type: ignore[no-any-return]
            self, queue_name, receipt_handle, visibility_timeout
        )
    with index.lock:
        message = index.by_handle(receipt_handle)
        if message is None:
            raise ReceiptHandleIsInvalid
        given = unix_time_millis() + int(visibility_timeout) * 1000
        if given - message.sent_timestamp > MAX_VISIBILITY_SPAN_MS:  # type: ignore[operator]
            raise InvalidParameterValue(
                f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. Reason: Total "
                "VisibilityTimeout for the message is beyond the limit [43200 seconds]"
            )
        message.change_visibility(visibility_timeout)
        if message.visible:
            queue.pending_messages.discard(message)
        index.place(message)
    return None


def _purge_queue(self: SQSBackend, queue_name: str) -> None:
    _original["purge_queue"](self, queue_name)
    self.get_queue(queue_name).__dict__.pop("_depth_index", None)  # rebuilt from the empty list


def install(fair_queues: bool = True) -> None:
    """Patch moto's SQS classes in this process (idempotent). ``fair_queues``: whether the
    queues indexed from now on order their messages by MessageGroupId (module doc); False: send
    order, as a standard queue without fair queues."""
    _settings["fair_queues"] = fair_queues
    if _original:
        return
    counts = {
        "approximate_number_of_messages": 0,
        "approximate_number_of_messages_not_visible": 1,
        "approximate_number_of_messages_delayed": 2,
    }
    for name in counts:
        _original[name] = getattr(Queue, name)
    for name in ("add_message", "delete_message", "wait_for_messages"):
        _original[name] = getattr(Queue, name)
    for name in ("receive_message", "change_message_visibility", "purge_queue"):
        _original[name] = getattr(SQSBackend, name)
    for name, position in counts.items():
        setattr(Queue, name, _count(position, name))
    Queue.add_message = _add_message  # type: ignore[method-assign]
    Queue.delete_message = _delete_message  # type: ignore[method-assign]
    Queue.wait_for_messages = _wait_for_messages  # type: ignore[method-assign]
    SQSBackend.receive_message = _receive_message  # type: ignore[method-assign]
    SQSBackend.change_message_visibility = _change_message_visibility  # type: ignore[method-assign]
    SQSBackend.purge_queue = _purge_queue  # type: ignore[method-assign]
