"""moto's SQS queues, indexed: what :mod:`lambdaloop_local.moto_patches` puts in the moto child.

moto keeps a queue's messages in one list and scans all of it for nearly every request: each
SendMessage reads ``Queue.attributes``, which counts the messages three times; each received
message checks its retention through those attributes three more times; a receive, a delete
or a visibility change walks the list; a long-polling receiver re-checks the whole list on
every send. A queue that holds thousands of messages (a dead-letter queue nobody reads, a
backlog) makes every request to it O(depth), and a dev stack under load CPU-bound.

Here each queue's messages live in :class:`_QueueMessages`: a heap of the visible ones in
sending order, a heap of timers for the delayed and in-flight ones, receipt handles indexed,
and one counter per state, so a request costs O(what it touches) (plus log n). It also holds
what SQS promises and moto loses under concurrency: one lock per queue, so no message is
handed to two receivers, and a long poll waits on it without holding it.

Behaviour beyond moto's, all as SQS does it: a message past the queue's retention period is
dropped when a receive meets it (moto stops handing out anything behind it); a FIFO
deduplication id is remembered for its 5 minutes even once its message is deleted; a FIFO
group stays closed while any of its messages is in flight. Not supported: moto's own Lambda
event source mappings on a queue (they need moto's Docker Lambda; the stack runs its own
pollers, :mod:`lambdaloop_local.sqs`).
"""

from __future__ import annotations

import copy
import functools
import heapq
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["patch_sqs"]

#: SQS's FIFO deduplication interval.
_DEDUPLICATION_MS = 300_000
#: SQS's longest total visibility timeout of a message, from when it was sent.
_MAX_VISIBILITY_MS = 43_200_000


class _State(Enum):
    READY = "ready"  # visible: ApproximateNumberOfMessages
    DELAYED = "delayed"  # ApproximateNumberOfMessagesDelayed
    IN_FLIGHT = "in flight"  # ApproximateNumberOfMessagesNotVisible


@dataclass(slots=True)
class _Held:
    message: Any
    seq: int
    group: str | None
    state: _State
    #: When a DELAYED or IN_FLIGHT message becomes READY (moto's epoch milliseconds).
    due: float = 0.0
    #: Where a READY message waits for a receive: "heap", "aside" (its FIFO group is in
    #: flight) or None (being handed out, or not READY).
    place: str | None = None


class _QueueMessages:
    """One queue's messages. Every method runs under ``cond``, the caller's."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.clear()

    def clear(self) -> None:
        """Forget every message (a purge); waiting receivers keep waiting on ``cond``."""
        self._held: dict[str, _Held] = {}  # message id -> entry
        self._ready: list[tuple[int, str]] = []  # (seq, id) of READY messages, oldest first
        self._timers: list[tuple[float, int, str]] = []  # (due, seq, id)
        self._aside: dict[str, list[tuple[int, str]]] = {}  # FIFO group in flight -> its READY
        self._handles: dict[str, str] = {}  # every receipt handle of a held message -> id
        self._counts: Counter[_State] = Counter()
        self._in_flight_groups: Counter[str] = Counter()
        self._dedup: OrderedDict[str, float] = OrderedDict()  # id -> when accepted (ms)
        self._next_seq = 0

    # -- reading

    def count(self, state: _State, now: float) -> int:
        self._advance(now)
        return self._counts[state]

    def messages(self, now: float, state: _State | None = None) -> list[Any]:
        self._advance(now)
        held = sorted(self._held.values(), key=lambda entry: entry.seq)
        return [entry.message for entry in held if state is None or entry.state is state]

    def in_flight_groups(self) -> set[str]:
        return set(self._in_flight_groups)

    def has_ready(self, now: float) -> bool:
        self._advance(now)
        return bool(self._ready)

    def next_due_in_s(self, now: float) -> float | None:
        return (self._timers[0][0] - now) / 1000 if self._timers else None

    # -- writing

    def duplicate(self, dedup_id: str, sent_ms: float) -> bool:
        """Whether ``dedup_id`` was accepted within SQS's deduplication interval; if not, it
        is accepted now."""
        while self._dedup and next(iter(self._dedup.values())) <= sent_ms - _DEDUPLICATION_MS:
            self._dedup.popitem(last=False)
        if dedup_id in self._dedup:
            return True
        self._dedup[dedup_id] = sent_ms
        return False

    def insert(self, message: Any, now: float) -> None:
        self._next_seq += 1
        entry = _Held(message, self._next_seq, message.group_id, _State.READY)
        self._held[message.id] = entry
        self._counts[_State.READY] += 1
        for handle in message.all_receipt_handles:
            if handle is not None:
                self._handles[handle] = message.id
        if message.delayed_until > now:
            self._move(entry, _State.DELAYED, message.delayed_until)
        else:
            self._queue(entry)
        self.cond.notify_all()

    def take(self, queue: Any, count: int, now: float) -> tuple[list[_Held], list[Any]]:
        """Up to ``count`` READY messages in sending order, skipping FIFO groups in flight
        (a group's messages may come together in one batch), and the messages due for the
        dead-letter queue, now removed. The caller marks the first received."""
        self._advance(now)
        taken: list[_Held] = []
        to_dlq: list[Any] = []
        retention_ms = int(queue.message_retention_period) * 1000
        policy = queue.redrive_policy if queue.dead_letter_queue is not None else None
        while len(taken) < count and self._ready:
            seq, message_id = heapq.heappop(self._ready)
            entry = self._held.get(message_id)
            if entry is None or entry.seq != seq or entry.place != "heap":
                continue  # deleted, or already handed out and back: a stale heap entry
            entry.place = None
            if entry.state is not _State.READY:
                continue
            if entry.message.sent_timestamp + retention_ms <= now:
                self._remove(entry)  # SQS deletes a message at the end of its retention
            elif entry.group is not None and self._in_flight_groups[entry.group]:
                entry.place = "aside"
                self._aside.setdefault(entry.group, []).append((seq, message_id))
            elif policy and entry.message.approximate_receive_count >= int(
                policy["maxReceiveCount"]
            ):
                self._remove(entry)
                to_dlq.append(entry.message)
            else:
                taken.append(entry)
        self._compact()
        return taken, to_dlq

    def received(self, entry: _Held, now: float) -> None:
        """Index the new receipt handle of a message just marked received, and hide it for
        its visibility timeout (0: it stays visible)."""
        message = entry.message
        self._handles[message.receipt_handle] = message.id
        if message.visible_at > now:
            self._move(entry, _State.IN_FLIGHT, message.visible_at)
        else:
            self._queue(entry)

    def delete(self, handle: str, deleted: set[str]) -> bool:
        """Delete the message ``handle`` names, remembering its handles in ``deleted``;
        False if no held message ever had that handle."""
        message_id = self._handles.get(handle)
        if message_id is None:
            return False
        entry = self._held[message_id]
        self._remove(entry)
        deleted.update(h for h in entry.message.all_receipt_handles if h is not None)
        return True

    def change_visibility(self, handle: str, timeout_s: int, now: float) -> bool:
        """As ChangeMessageVisibility; False if no held message has that handle. Raises
        ValueError past SQS's 12 hours from sending."""
        message_id = self._handles.get(handle)
        if message_id is None:
            return False
        entry = self._held[message_id]
        if now + timeout_s * 1000 - entry.message.sent_timestamp > _MAX_VISIBILITY_MS:
            raise ValueError(timeout_s)
        entry.message.change_visibility(timeout_s)
        if timeout_s == 0:
            self._move(entry, _State.READY)
        else:
            self._move(entry, _State.IN_FLIGHT, entry.message.visible_at)
        return True

    # -- inside

    def _advance(self, now: float) -> None:
        """Make READY every delayed or in-flight message whose time has come."""
        while self._timers and self._timers[0][0] < now:
            due, seq, message_id = heapq.heappop(self._timers)
            entry = self._held.get(message_id)
            current = entry is not None and entry.seq == seq and entry.due == due
            if current and entry is not None and entry.state is not _State.READY:
                self._move(entry, _State.READY)

    def _move(self, entry: _Held, state: _State, due: float = 0.0) -> None:
        was = entry.state
        self._counts[was] -= 1
        self._counts[state] += 1
        entry.state = state
        entry.due = due
        if state is not _State.READY:
            heapq.heappush(self._timers, (due, entry.seq, entry.message.id))
        if entry.group is not None and (was is _State.IN_FLIGHT) != (state is _State.IN_FLIGHT):
            self._count_in_flight(entry.group, 1 if state is _State.IN_FLIGHT else -1)
        if state is _State.READY:
            self._queue(entry)

    def _queue(self, entry: _Held) -> None:
        if entry.place is None:
            entry.place = "heap"
            heapq.heappush(self._ready, (entry.seq, entry.message.id))
            self.cond.notify_all()

    def _count_in_flight(self, group: str, change: int) -> None:
        self._in_flight_groups[group] += change
        if self._in_flight_groups[group] > 0:
            return
        del self._in_flight_groups[group]
        # The group is open again: its messages set aside go back in line, in order.
        for seq, message_id in self._aside.pop(group, []):
            heapq.heappush(self._ready, (seq, message_id))
            entry = self._held.get(message_id)
            if entry is not None and entry.seq == seq:
                entry.place = "heap"
        self.cond.notify_all()

    def _remove(self, entry: _Held) -> None:
        del self._held[entry.message.id]
        self._counts[entry.state] -= 1
        if entry.group is not None and entry.state is _State.IN_FLIGHT:
            self._count_in_flight(entry.group, -1)
        for handle in entry.message.all_receipt_handles:
            self._handles.pop(handle, None)

    def _compact(self) -> None:
        """Drop stale heap entries (deleted messages, old timers) once they outnumber the
        live ones: the heaps stay O(messages held)."""
        live = len(self._held) + 64
        if len(self._ready) > 2 * live:
            self._ready = [(e.seq, e.message.id) for e in self._held.values() if e.place == "heap"]
            heapq.heapify(self._ready)
        if len(self._timers) > 2 * live:
            self._timers = [
                (e.due, e.seq, e.message.id)
                for e in self._held.values()
                if e.state is not _State.READY
            ]
            heapq.heapify(self._timers)


#: Where a moto queue keeps its :class:`_QueueMessages` (an attribute of the queue, so that
#: moto's reset, which replaces the queues, forgets it with them).
_STORE_ATTRIBUTE = "_lambdaloop_messages"


def _messages_of(queue: Any) -> _QueueMessages:
    store: _QueueMessages = queue.__dict__[_STORE_ATTRIBUTE]
    return store


def _now_ms() -> float:
    from moto.core.utils import unix_time_millis

    now: float = unix_time_millis()
    return now


def patch_sqs(deleted_handles: int) -> None:
    """Give every moto queue a :class:`_QueueMessages`; its deleted receipt handles are the
    latest ``deleted_handles`` (a repeated delete succeeds, as on SQS)."""
    from moto.sqs.models import Queue, SQSBackend

    init = Queue.__init__

    @functools.wraps(init)
    def indexed_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.deleted_messages = _RecentSet(deleted_handles)

    patches: dict[str, Any] = {
        "__init__": indexed_init,
        "_messages": property(_all_messages, _reset_messages),
        "messages": property(_reader(_State.READY, list)),
        "pending_messages": property(_reader(_State.IN_FLIGHT, set)),
        "pending_message_groups": property(_in_flight_groups),
        "approximate_number_of_messages": property(_counter(_State.READY)),
        "approximate_number_of_messages_delayed": property(_counter(_State.DELAYED)),
        "approximate_number_of_messages_not_visible": property(_counter(_State.IN_FLIGHT)),
        "add_message": _add_message,
        "delete_message": _delete_message,
        "wait_for_messages": _wait_for_messages,
    }
    for name, value in patches.items():
        setattr(Queue, name, value)

    purge = SQSBackend.purge_queue

    @functools.wraps(purge)
    def purge_queue(self: Any, queue_name: str) -> None:
        store = _messages_of(self.get_queue(queue_name))
        with store.cond:
            purge(self, queue_name)  # its checks, then `_messages = []`: a clear store

    backend_patches: dict[str, Any] = {
        "purge_queue": purge_queue,
        "receive_message": _receive_message,
        "change_message_visibility": _change_message_visibility,
    }
    for name, value in backend_patches.items():
        setattr(SQSBackend, name, value)


# -- Queue


def _all_messages(queue: Any) -> list[Any]:
    store = _messages_of(queue)
    with store.cond:
        return store.messages(_now_ms())


def _reset_messages(queue: Any, value: Iterable[Any]) -> None:
    # moto's __init__ (and its purge) assign an empty list: that is a new, or a clear, store.
    if list(value):
        raise ValueError("a queue's messages are only ever reset to none")
    store = queue.__dict__.get(_STORE_ATTRIBUTE)
    if store is None:
        queue.__dict__[_STORE_ATTRIBUTE] = _QueueMessages()
    else:
        with store.cond:
            store.clear()


def _reader(state: _State, kind: Callable[[list[Any]], Any]) -> Callable[[Any], Any]:
    def read(queue: Any) -> Any:
        store = _messages_of(queue)
        with store.cond:
            return kind(store.messages(_now_ms(), state))

    return read


def _counter(state: _State) -> Callable[[Any], int]:
    def read(queue: Any) -> int:
        store = _messages_of(queue)
        with store.cond:
            return store.count(state, _now_ms())

    return read


def _in_flight_groups(queue: Any) -> set[str]:
    store = _messages_of(queue)
    with store.cond:
        return store.in_flight_groups()


def _add_message(queue: Any, message: Any) -> None:
    store = _messages_of(queue)
    with store.cond:
        dedup_id = message.deduplication_id
        if (
            queue.fifo_queue
            and dedup_id
            and store.duplicate(dedup_id, float(message.sent_timestamp))
        ):
            return  # SQS accepts the send and delivers nothing
        store.insert(message, _now_ms())


def _delete_message(queue: Any, receipt_handle: str) -> None:
    from moto.sqs.exceptions import ReceiptHandleIsInvalid

    if receipt_handle in queue.deleted_messages:
        return  # deleted already: SQS accepts the repeat
    store = _messages_of(queue)
    with store.cond:
        if not store.delete(receipt_handle, queue.deleted_messages):
            raise ReceiptHandleIsInvalid()


def _wait_for_messages(queue: Any, timeout: float) -> None:
    """Return once a message is visible, or after ``timeout`` seconds; woken by a send, or
    by the next delayed or in-flight message's time."""
    store = _messages_of(queue)
    deadline = time.monotonic() + timeout
    with store.cond:
        while not store.has_ready(now := _now_ms()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            due_in = store.next_due_in_s(now)
            store.cond.wait(left if due_in is None else min(left, max(due_in, 0.001)))


# -- SQSBackend


def _receive_message(  # noqa: PLR0917 - moto's signature
    backend: Any,
    queue_name: str,
    count: int,
    wait_seconds_timeout: int,
    visibility_timeout: int,
    message_attribute_names: list[str] | None = None,
) -> list[Any]:
    queue = backend.get_queue(queue_name)
    deadline = time.monotonic() + wait_seconds_timeout
    while True:
        copies, to_dlq = _receive_once(queue, count, visibility_timeout, message_attribute_names)
        # Outside this queue's lock: its dead-letter queue has its own.
        for message in to_dlq:
            target = _messages_of(queue.dead_letter_queue)
            with target.cond:
                target.insert(message, _now_ms())
        left = deadline - time.monotonic()
        if copies or left <= 0:
            return copies
        if not to_dlq:
            _wait_for_messages(queue, left)


def _receive_once(
    queue: Any, count: int, visibility_timeout: int, attribute_names: list[str] | None
) -> tuple[list[Any], list[Any]]:
    from moto.sqs.models import _filter_message_attributes

    store = _messages_of(queue)
    copies: list[Any] = []
    with store.cond:
        taken, to_dlq = store.take(queue, count, _now_ms())
        for entry in taken:
            entry.message.mark_received(visibility_timeout=visibility_timeout)
            store.received(entry, _now_ms())
            # A copy, so that filtering its attributes leaves the message whole.
            message = copy.deepcopy(entry.message)
            _filter_message_attributes(message, attribute_names or [])
            copies.append(message)
    return copies, to_dlq


def _change_message_visibility(
    backend: Any, queue_name: str, receipt_handle: str, visibility_timeout: int
) -> None:
    from moto.sqs.exceptions import InvalidParameterValue, ReceiptHandleIsInvalid

    store = _messages_of(backend.get_queue(queue_name))
    with store.cond:
        try:
            changed = store.change_visibility(receipt_handle, int(visibility_timeout), _now_ms())
        except ValueError:
            raise InvalidParameterValue(
                f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid."
                " Reason: Total VisibilityTimeout for the message is beyond the limit"
                " [43200 seconds]"
            ) from None
    if not changed:
        raise ReceiptHandleIsInvalid


class _RecentSet(set[str]):
    """A set that keeps only the latest ``size`` members added (moto calls ``in`` and
    ``update`` on a queue's deleted receipt handles)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._order: OrderedDict[str, None] = OrderedDict()

    def add(self, member: str) -> None:
        self._order[member] = None
        self._order.move_to_end(member)
        super().add(member)
        while len(self._order) > self._size:
            oldest, _ = self._order.popitem(last=False)
            self.discard(oldest)

    def update(self, *members: Iterable[str]) -> None:
        for group in members:
            for member in group:
                self.add(member)
