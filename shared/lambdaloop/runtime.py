"""One event loop per execution environment, invocation scopes, deadlines and task tracking.

Lambda reuses a process for many invocations and freezes it between them. Clients bound to
a loop (redis.asyncio, aiohttp) must therefore live on one loop for the life of the process,
and nothing started by an invocation may still be running when its response is returned.

- :func:`get_loop` creates the environment's loop once and makes it current; every
  invocation runs on it (``asyncio.run`` per invocation would close it and kill the clients).
- :func:`lambda_handler` turns ``async def handler(event, context)`` into a Lambda handler.
- :func:`invocation` is the scope both use: it builds the :class:`Deadline` from the Lambda
  context and a :class:`TaskRegistry`; every task created during the invocation, by our code
  or a library, is tracked. When the handler is done, whatever is still running is
  cancelled, so nothing leaks into the next invocation.
- :func:`budget` bounds the calls made inside it (the layer's AWS adapters ask
  :func:`call_deadline`) more tightly than the invocation, so a request answers "try again"
  itself instead of running into Lambda's timeout; :func:`beyond_budget` lifts the bound for
  cleanup that must still run (an undo), up to the invocation's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import gc
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from lambdaloop import snapstart
from lambdaloop.errors import DeadlineExceeded
from lambdaloop.observability import flush_metrics
from lambdaloop.settings import get_runtime_settings

__all__ = [
    "Deadline",
    "Invocation",
    "LambdaContext",
    "TaskRegistry",
    "beyond_budget",
    "budget",
    "call_deadline",
    "current_deadline",
    "current_invocation",
    "discard_loop",
    "get_loop",
    "invocation",
    "lambda_handler",
    "pause_gc_for_init",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E")

#: How long cancelled tasks get to run their cleanup before they are abandoned.
_CANCEL_GRACE_S = 0.25
#: Tracked tasks are not pruned below this many.
_COMPACT_MIN = 64


class LambdaContext(Protocol):
    """The part of the Lambda context object the runtime relies on."""

    aws_request_id: str

    def get_remaining_time_in_millis(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Deadline:
    """A point on the monotonic clock by which the work must be done.

    Built from the Lambda context minus a safety margin, so that there is still time to
    cancel, report and return before Lambda kills the environment.
    """

    expires_at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def never(cls) -> Deadline:
        return cls(math.inf)

    @classmethod
    def from_context(cls, context: object, margin_s: float) -> Deadline:
        remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
        if remaining_ms is None:
            return cls.never()
        return cls.after(max(0.0, remaining_ms() / 1000 - margin_s))

    def remaining(self) -> float:
        """Seconds left (0 when expired, ``inf`` for :meth:`never`)."""
        return max(0.0, self.expires_at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.expires_at

    def timeout(self, cap: float | None = None) -> float | None:
        """The time left, capped, in the form asyncio's timeouts take (``None`` = no limit)."""
        left = self.remaining()
        if cap is not None:
            left = min(left, cap)
        return None if math.isinf(left) else left


class TaskRegistry:
    """The tasks created during one invocation (the loop's task factory records them).

    Whatever is still running when the handler is done (a forgotten ``create_task``, a
    library's helper) is cancelled at once, so it never runs on in the next invocation:
    work the response depends on is awaited by the handler itself.
    """

    def __init__(self) -> None:
        # A list, not a set with a done callback per task: tracking is on the path of every
        # task (a 10,000-record batch makes 10,000), and a callback costs a loop turn each.
        # Finished tasks are dropped when the list doubles, so it stays proportional to the
        # tasks still running.
        self._tasks: list[asyncio.Task[Any]] = []
        self._compact_at = _COMPACT_MIN

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.append(task)
        if len(self._tasks) >= self._compact_at:
            self._tasks = [t for t in self._tasks if not t.done()]
            self._compact_at = max(_COMPACT_MIN, 2 * len(self._tasks))

    @property
    def pending(self) -> frozenset[asyncio.Task[Any]]:
        return frozenset(t for t in self._tasks if not t.done())

    @property
    def running(self) -> bool:
        return any(not t.done() for t in self._tasks)

    async def cancel_pending(self) -> tuple[str, ...]:
        """Cancel the tasks still running and wait (briefly) for them to end; their names."""
        cancelled = list(self.pending - {asyncio.current_task()})
        for task in cancelled:
            task.cancel()
        if cancelled:
            await asyncio.wait(cancelled, timeout=_CANCEL_GRACE_S)
            logger.warning(
                "cancelled %d task(s) still running at the end of the invocation: %s",
                len(cancelled),
                ", ".join(t.get_name() for t in cancelled),
            )
        self._tasks.clear()
        return tuple(t.get_name() for t in cancelled)


@dataclass(slots=True)
class Invocation:
    """What the runtime knows about the invocation in progress."""

    request_id: str
    deadline: Deadline
    tasks: TaskRegistry = field(default_factory=TaskRegistry)

    async def run(self, work: Awaitable[T]) -> T:
        """Await ``work``, cancelling it if it runs into the deadline."""
        try:
            return await asyncio.wait_for(work, timeout=self.deadline.timeout())
        except TimeoutError:
            raise DeadlineExceeded(f"invocation {self.request_id} ran into its deadline") from None


_current: contextvars.ContextVar[Invocation] = contextvars.ContextVar("lambdaloop_invocation")
_loop: asyncio.AbstractEventLoop | None = None
_init_frozen = False
_gc_paused = False


def _task_factory(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
    **kwargs: Any,
) -> asyncio.Task[Any]:
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
    # The factory runs in the creator's context, so this finds the creator's invocation.
    current = _current.get(None)
    if current is not None:
        current.tasks.track(task)
    return task


def pause_gc_for_init() -> None:
    """Keep the garbage collector off for the rest of init; the first invocation turns it
    back on, once it has frozen what init built (see :func:`invocation`).

    Init builds what lives as long as the environment (modules, classes, settings, the
    app), and makes enough objects to trigger a collection every few hundred: each one
    traverses what init built so far and frees next to nothing (the API's init leaves ~700
    objects of cyclic garbage in all). Called first thing by a handler module, it spares
    about 4 % of the API's init. Nothing to do if the collector is off already.
    """
    global _gc_paused  # noqa: PLW0603 - once per execution environment
    if not _init_frozen and gc.isenabled():
        gc.disable()
        _gc_paused = True


def get_loop() -> asyncio.AbstractEventLoop:
    """The execution environment's event loop: created once, then reused by every invocation.

    It is also made the current loop of the calling thread, for libraries that look it up
    with ``asyncio.get_event_loop()`` (Mangum does, and warns on 3.13 when none is set).
    """
    global _loop  # noqa: PLW0603 - the one loop of the execution environment
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        _loop.set_task_factory(_task_factory)
    asyncio.set_event_loop(_loop)
    return _loop


def discard_loop() -> asyncio.AbstractEventLoop | None:
    """Forget the environment's loop (the next :func:`get_loop` makes a new one) and return
    it, not closed: the caller may still run it, to close what is bound to it, and closes it.

    For a SnapStart restore (:mod:`lambdaloop.snapstart`): the loop's selector and
    self-pipe were made before the snapshot.
    """
    global _loop
    old, _loop = _loop, None
    return old


def current_invocation() -> Invocation:
    """The invocation in progress; ``RuntimeError`` outside one."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("not inside a lambdaloop invocation") from None


def current_deadline() -> Deadline:
    """The deadline of the invocation in progress, or :meth:`Deadline.never` outside one."""
    found = _current.get(None)
    return found.deadline if found is not None else Deadline.never()


_budget: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "lambdaloop_budget", default=None
)


@contextlib.contextmanager
def budget(seconds: float) -> Iterator[Deadline]:
    """Calls made inside get at most ``seconds`` from now (and never past the invocation's
    deadline); the budget's own deadline is yielded."""
    bound = Deadline.after(seconds)
    token = _budget.set(bound)
    try:
        yield bound
    finally:
        _budget.reset(token)


@contextlib.contextmanager
def beyond_budget() -> Iterator[None]:
    """Calls made inside are bounded by the invocation's deadline only."""
    token = _budget.set(None)
    try:
        yield
    finally:
        _budget.reset(token)


def call_deadline() -> Deadline:
    """When a call made now must be done: the budget's deadline or the invocation's, the
    earlier."""
    bound, invocation_deadline = _budget.get(), current_deadline()
    if bound is None or invocation_deadline.expires_at < bound.expires_at:
        return invocation_deadline
    return bound


@contextlib.contextmanager
def invocation(context: object) -> Iterator[Invocation]:
    """The scope of one invocation, entered from the (synchronous) Lambda handler.

    On exit, tasks the invocation left behind are cancelled on the loop before the handler
    returns: after that the environment may be frozen at any moment.

    The first invocation also ends the cold start for the garbage collector: what init
    built (modules, clients, settings) lives as long as the process, so it is moved out of
    the collector's sight (``gc.freeze``) instead of being traversed by every full
    collection (a 10,000-record batch ran about 20 % faster with it).
    """
    global _init_frozen, _gc_paused  # noqa: PLW0603 - once per execution environment
    if not _init_frozen:
        gc.freeze()
        _init_frozen = True
        if _gc_paused:
            gc.enable()
            _gc_paused = False
    loop = get_loop()
    margin = get_runtime_settings().deadline_margin_s
    request_id = str(getattr(context, "aws_request_id", "") or "local")
    current = Invocation(request_id, Deadline.from_context(context, margin))
    token = _current.set(current)
    try:
        yield current
    finally:
        try:
            if current.tasks.running:  # the common case: none, so no extra loop run
                loop.run_until_complete(current.tasks.cancel_pending())
            flush_metrics()
        finally:
            _current.reset(token)


def lambda_handler(
    fn: Callable[[E, Any], Awaitable[T]],
) -> Callable[[E, Any], T]:
    """Turn ``async def handler(event, context)`` into a Lambda handler on the environment loop.

    The coroutine is cancelled with :class:`~lambdaloop.errors.DeadlineExceeded` if it runs
    past the deadline, leaving the safety margin to report instead of being killed.
    """

    @functools.wraps(fn)
    def handler(event: E, context: Any) -> T:
        with invocation(context) as current:
            return get_loop().run_until_complete(current.run(fn(event, context)))

    return handler


# With SnapStart, a restored environment must not reuse the loop or the connections of the
# one that was snapshotted: every handler of the layer imports this module at init.
snapstart.install()
