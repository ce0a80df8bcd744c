"""A process pool for CPU-bound work on AWS Lambda, awaited from asyncio.

``ProcessPoolExecutor`` and ``multiprocessing.Pool`` need POSIX semaphores in ``/dev/shm``,
which Lambda lacks; this pool uses only forked ``Process`` es (~15 ms each, kept for the
environment's life: :func:`get_pool`) and one duplex ``Pipe`` per worker, read with
``loop.add_reader`` so a wait never blocks the loop. One chunk per worker at a time.

Failures are :class:`ComputeError`: :class:`TaskFailed` (``fn`` raised; the item and the
remote traceback), :class:`TaskTimeout` (its worker is killed and replaced) and
:class:`WorkerDied` (replaced). A cancelled call lets the busy worker finish and drops its
stale reply. With one worker (one vCPU) the pool runs calls in a thread instead, with no
fork and no pickling. ``fn`` must be a module-level function imported before the fork;
the pool is not thread-safe.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import math
import os
import pickle
import reprlib
import signal
import struct
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar, TypeVarTuple, cast

from lambdaloop.errors import LambdaloopError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import ForkContext
    from multiprocessing.process import BaseProcess

__all__ = [
    "ComputeError",
    "ProcessPool",
    "TaskFailed",
    "TaskTimeout",
    "WorkerDied",
    "aclose",
    "close",
    "get_pool",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")
Ts = TypeVarTuple("Ts")

_HEADER = struct.Struct("!Q")
_READ_SIZE = 256 * 1024  # one read per loop turn: a huge reply cannot hog the loop
_JOIN_S = 1.0  # how long close() waits for a terminated worker before SIGKILL


class ComputeError(LambdaloopError):
    """Base class of the pool's errors."""


class TaskFailed(ComputeError):
    """``fn`` raised in the worker (or its result could not be sent back).

    ``item`` is the input that failed (for :meth:`ProcessPool.run`, the args tuple),
    ``exc_type`` the exception's class name, ``message`` its ``str()``,
    ``remote_traceback`` the worker's formatted traceback, and ``exception`` the exception
    itself when it survived pickling (``None`` otherwise).
    """

    def __init__(
        self,
        item: object,
        exc_type: str,
        message: str,
        remote_traceback: str = "",
        exception: BaseException | None = None,
    ) -> None:
        self.item = item
        self.exc_type = exc_type
        self.message = message
        self.remote_traceback = remote_traceback
        self.exception = exception
        super().__init__(f"task failed on item {reprlib.repr(item)}: {exc_type}: {message}")


class TaskTimeout(ComputeError):
    """A task (a chunk, for ``map``) ran longer than ``timeout`` seconds; ``items`` are its
    inputs. In process mode its worker was killed and replaced."""

    def __init__(self, items: Sequence[object], timeout: float) -> None:
        self.items = list(items)
        self.timeout = timeout
        super().__init__(f"task timed out after {timeout:g} s on items {reprlib.repr(items)}")


class WorkerDied(ComputeError):
    """The worker process exited while running a task (``items`` are its inputs).

    ``exitcode`` is the process's exit code, negative for a signal (``-9`` is SIGKILL,
    named in ``signal_name``); ``None`` if it could not be reaped.
    """

    def __init__(self, items: Sequence[object], exitcode: int | None) -> None:
        self.items = list(items)
        self.exitcode = exitcode
        self.signal_name: str | None = None
        if exitcode is not None and exitcode < 0:
            try:
                self.signal_name = signal.Signals(-exitcode).name
            except ValueError:
                self.signal_name = f"signal {-exitcode}"
        how = self.signal_name or f"exit code {exitcode}"
        super().__init__(f"worker died ({how}) while running items {reprlib.repr(items)}")


# -- wire format ---------------------------------------------------------------------------
# parent -> worker: (task_id, fn, items, star)
# worker -> parent: (task_id, True, results) | (task_id, False, _Failure)
# task_id is None when the worker could not even unpickle the task.


@dataclass(frozen=True, slots=True)
class _Failure:
    index: int | None  # which item of the chunk; None when it is not one item's fault
    exc_type: str
    message: str
    traceback: str
    exception: bytes | None  # the pickled exception, when it round-trips


_Reply: TypeAlias = tuple[int | None, bool, Any]


def _failure(index: int | None, exc: BaseException) -> _Failure:
    text = "".join(traceback.format_exception(exc))
    pickled: bytes | None
    try:
        pickled = pickle.dumps(exc)
        pickle.loads(pickled)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        pickled = None
    return _Failure(index, type(exc).__name__, str(exc), text, pickled)


def _execute(fn: Callable[..., Any], items: Sequence[Any], star: bool) -> tuple[bool, Any]:
    results = []
    for index, item in enumerate(items):
        try:
            results.append(fn(*item) if star else fn(item))
        except BaseException as exc:  # SystemExit from fn too: the worker must live on
            return False, _failure(index, exc)
    return True, results


def _encode(reply: _Reply) -> bytes:
    """The reply as one frame; a result that does not pickle becomes a failure of its item
    rather than killing the worker."""
    try:
        data = pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        task_id, ok, body = reply
        index = None
        if ok:
            index = next((i for i, r in enumerate(body) if not _pickles(r)), None)
        failure = _failure(index, exc)
        data = pickle.dumps((task_id, False, failure), pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _pickles(value: object) -> bool:
    try:
        pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    return True


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        data = os.read(fd, size - len(chunks))
        if not data:
            raise EOFError
        chunks += data
    return bytes(chunks)


def _worker_main(conn: Connection, inherited: Sequence[Connection]) -> None:
    """The child's whole life: read a task, run it, reply; return on EOF (parent gone or
    pool closed). No asyncio here: the loop object forked with us belongs to the parent."""
    for other in inherited:
        # Our copies of parent ends would keep those pipes open after the parent dies,
        # and our siblings would never see EOF.
        other.close()
    # Ctrl-C in a dev terminal reaches the whole process group: let the parent alone
    # decide, rather than every worker dying mid-task and reporting WorkerDied.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ValueError):
        # The parent's loop may have set a wakeup fd: our signals must not land on it.
        signal.set_wakeup_fd(-1)
    fd = conn.fileno()
    while True:
        try:
            (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
            frame = _read_exactly(fd, size)
        except (EOFError, OSError):
            return
        try:
            task_id, fn, items, star = pickle.loads(frame)
        except Exception as exc:
            reply: _Reply = (None, False, _failure(None, exc))
        else:
            reply = (task_id, *_execute(fn, items, star))
        try:
            _write_all(fd, _encode(reply))
        except OSError:
            return


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _noop() -> None:
    return None


# -- parent side ---------------------------------------------------------------------------

_Outcome: TypeAlias = tuple[Literal["ok", "failed", "died", "closed"], Any]


@dataclass(slots=True)
class _Flight:
    task_id: int
    items: Sequence[Any]
    future: asyncio.Future[_Outcome]


class _Worker:
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.pid = process.pid
        self.conn = conn
        self.fd = conn.fileno()
        os.set_blocking(self.fd, False)
        self.inbox = bytearray()
        self.outbox = memoryview(b"")
        self.flight: _Flight | None = None

    def frames(self) -> Iterable[bytes]:
        while len(self.inbox) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self.inbox)
            end = _HEADER.size + size
            if len(self.inbox) < end:
                return
            frame = bytes(self.inbox[_HEADER.size : end])
            del self.inbox[:end]
            yield frame


class ProcessPool:
    """Forked worker processes, awaited from asyncio; see the module's docstring.

    ``workers`` defaults to the CPUs this process may run on; ``1`` means in-process.
    ``context`` is a multiprocessing context that starts processes by fork (the default,
    ``get_context("fork")``): the workers get their pipes by inheritance, not pickling.
    """

    def __init__(self, workers: int | None = None, *, context: ForkContext | None = None) -> None:
        if workers is None:
            workers = _available_cpus()
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        context = context or get_context("fork")
        if context.get_start_method() != "fork":
            raise ValueError("the pool's workers must be started by fork")
        self.size = workers
        self._context = context
        self._workers: list[_Worker] = []
        self._idle: deque[_Worker] = deque()
        self._waiters: deque[asyncio.Future[_Worker]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        self._started = False

    @property
    def in_process(self) -> bool:
        """Calls run in a thread of this process (one worker), not in workers."""
        return self.size == 1

    @property
    def pids(self) -> list[int]:
        """The live workers' process ids (empty before the first use and in-process)."""
        return [w.pid for w in self._workers if w.pid is not None]

    async def start(self) -> None:
        """Start the workers now rather than on first use, and return once each has
        answered a no-op (a warm-up for the init phase, or a measure of start-up)."""
        if not self.in_process:
            await asyncio.gather(*(self.run(_noop) for _ in range(self.size)))

    async def run(
        self,
        fn: Callable[[*Ts], T],
        *args: *Ts,
        timeout: float | None = None,  # noqa: ASYNC109 - it kills the worker, asyncio.timeout cannot
    ) -> T:
        """``fn(*args)`` on a free worker (waiting for one if all are busy)."""
        results = await self._submit(fn, [args], star=True, limit=timeout)
        return cast("T", results[0])

    async def map(
        self,
        fn: Callable[[A], T],
        items: Iterable[A],
        *,
        chunksize: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - per chunk, and it kills the worker
    ) -> list[T]:
        """``[fn(x) for x in items]``, in input order, run in chunks on the workers.

        ``chunksize`` defaults to about four chunks per worker; ``timeout`` applies to each
        chunk. On the first failure (in completion order) the chunks not started are
        dropped, those in flight are abandoned (they finish, and their results are
        discarded), and that failure is raised.
        """
        todo = list(items)
        if not todo:
            return []
        if chunksize is None:
            chunksize = max(1, math.ceil(len(todo) / (4 * self.size)))
        if chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {chunksize}")
        chunks = [todo[i : i + chunksize] for i in range(0, len(todo), chunksize)]
        if self.in_process:  # one worker: the chunks take turns anyway
            return [r for chunk in chunks for r in await self._submit(fn, chunk, False, timeout)]
        tasks = [asyncio.ensure_future(self._submit(fn, c, False, timeout)) for c in chunks]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                failure = task.exception() if task.done() else None
                if failure is not None:
                    raise failure
            return [r for task in tasks for r in task.result()]
        finally:
            for task in tasks:
                task.cancel()
            # Each chunk that was waiting or in flight settles its worker on cancellation.
            await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Terminate the workers (SIGTERM, then SIGKILL after a second) and fail what is
        waiting. The pool may be used again: it starts new workers then."""
        workers, self._workers = self._workers, []
        self._idle.clear()
        for worker in workers:
            self._detach(worker)
            worker.conn.close()  # an idle worker reads EOF and returns
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in workers:
            _reap(worker.process, _JOIN_S)
        self._fail_pending(workers)
        self._started = False
        self._loop = None

    async def aclose(self) -> None:
        """:meth:`close`, waiting for the workers' exit without blocking the loop."""
        for worker in self._workers:
            self._detach(worker)  # their EOFs are expected now, not deaths to make up for
        processes = [w.process for w in self._workers]
        for process in processes:
            if process.is_alive():
                process.terminate()
        loop = asyncio.get_running_loop()
        exits = []
        for process in processes:
            if process.exitcode is None:
                exited = loop.create_future()
                loop.add_reader(process.sentinel, _settle, exited)
                exits.append((process.sentinel, exited))
        try:
            if exits:
                await asyncio.wait([f for _, f in exits], timeout=_JOIN_S)
        finally:
            for sentinel, _ in exits:
                loop.remove_reader(sentinel)
        self.close()

    # -- scheduling --

    async def _submit(
        self, fn: Callable[..., Any], items: Sequence[Any], star: bool, limit: float | None
    ) -> list[Any]:
        if self.in_process:
            return await self._submit_in_thread(fn, items, star, limit)
        worker = await self._acquire()
        loop = asyncio.get_running_loop()
        flight = _Flight(next(self._ids), items, loop.create_future())
        try:
            data = pickle.dumps((flight.task_id, fn, items, star), pickle.HIGHEST_PROTOCOL)
        except BaseException:
            self._release(worker)
            raise
        worker.flight = flight
        self._send(worker, _HEADER.pack(len(data)) + data)
        try:
            async with asyncio.timeout(limit):
                kind, body = await flight.future
        except TimeoutError:
            if worker.flight is flight:  # still running: the result did not win the race
                worker.flight = None
                self._replace(worker)
            raise TaskTimeout(items, limit or 0.0) from None
        # On cancellation the flight stays: its reply is dropped, then the worker is freed.
        return _unwrap(kind, body, items)

    async def _submit_in_thread(
        self, fn: Callable[..., Any], items: Sequence[Any], star: bool, limit: float | None
    ) -> list[Any]:
        try:
            async with asyncio.timeout(limit):
                ok, body = await asyncio.to_thread(_execute, fn, items, star)
        except TimeoutError:
            raise TaskTimeout(items, limit or 0.0) from None
        return _unwrap("ok" if ok else "failed", body, items)

    async def _acquire(self) -> _Worker:
        self._bind(asyncio.get_running_loop())
        if self._idle:
            return self._idle.popleft()
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a worker as we left
                self._release(waiter.result())
            raise

    def _release(self, worker: _Worker) -> None:
        if worker not in self._workers:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the workers on first use and watch them on ``loop`` (a new loop, in tests or
        after the old one closed, takes over; workers busy for the old one are replaced)."""
        if not self._started:
            self._started = True
            _live.add(self)
            for _ in range(self.size):
                self._workers.append(self._fork())
            self._idle.extend(self._workers)
        if loop is self._loop:
            return
        for worker in list(self._workers):
            self._detach(worker)
        self._loop = loop
        self._waiters.clear()  # futures of the old loop
        for worker in list(self._workers):
            if worker.flight is not None:
                worker.flight = None
                self._replace(worker)
            else:
                loop.add_reader(worker.fd, self._on_readable, worker)

    def _fork(self) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        inherited = [parent_end, *(w.conn for w in self._workers)]
        process = self._context.Process(
            target=_worker_main,
            args=(child_end, inherited),
            name="lambdaloop-pool-worker",
            daemon=True,
        )
        process.start()
        child_end.close()
        logger.debug("started pool worker %s", process.pid)
        worker = _Worker(process, parent_end)
        if self._loop is not None:
            self._loop.add_reader(worker.fd, self._on_readable, worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` (if it still lives), reap it, and put a fresh one in its place."""
        if worker not in self._workers:
            return
        self._detach(worker)
        worker.conn.close()
        worker.process.kill()
        _reap(worker.process, _JOIN_S)
        self._workers.remove(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        fresh = self._fork()
        self._workers.append(fresh)
        self._release(fresh)

    def _detach(self, worker: _Worker) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(worker.fd)
            self._loop.remove_writer(worker.fd)

    # -- I/O callbacks --

    def _send(self, worker: _Worker, data: bytes) -> None:
        worker.outbox = memoryview(data)
        self._on_writable(worker)
        if worker.outbox and self._loop is not None:
            self._loop.add_writer(worker.fd, self._on_writable, worker)

    def _on_writable(self, worker: _Worker) -> None:
        try:
            sent = os.write(worker.fd, worker.outbox)
        except BlockingIOError:
            return
        except OSError:  # the worker is gone: its EOF will be read and reported
            worker.outbox = memoryview(b"")
        else:
            worker.outbox = worker.outbox[sent:]
        if not worker.outbox and self._loop is not None:
            self._loop.remove_writer(worker.fd)

    def _on_readable(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        worker.inbox += data
        for frame in worker.frames():
            self._on_reply(worker, frame)
        if not data and worker in self._workers:
            self._on_death(worker)

    def _on_reply(self, worker: _Worker, frame: bytes) -> None:
        flight = worker.flight
        try:
            task_id, ok, body = pickle.loads(frame)
        except Exception as exc:  # e.g. a result class that cannot be rebuilt here
            task_id, ok, body = None, False, _failure(None, exc)
        if flight is None or task_id not in (None, flight.task_id):
            logger.warning("pool worker %s sent an unexpected reply", worker.pid)
            return
        worker.flight = None
        if flight.future.done():
            logger.debug("dropped the stale result of cancelled task %s", flight.task_id)
        else:
            flight.future.set_result(("ok" if ok else "failed", body))
        self._release(worker)

    def _on_death(self, worker: _Worker) -> None:
        flight, worker.flight = worker.flight, None
        self._detach(worker)
        exitcode = _reap(worker.process, _JOIN_S)
        logger.warning("pool worker %s died (exit code %s)", worker.pid, exitcode)
        self._replace(worker)
        if flight is not None and not flight.future.done():
            flight.future.set_result(("died", exitcode))

    def _fail_pending(self, workers: Iterable[_Worker]) -> None:
        for worker in workers:
            flight, worker.flight = worker.flight, None
            if flight is not None and _open(flight.future):
                flight.future.set_result(("closed", None))
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if _open(waiter):
                waiter.set_exception(ComputeError("the pool was closed"))


def _unwrap(kind: str, body: Any, items: Sequence[Any]) -> list[Any]:
    if kind == "ok":
        return body  # type: ignore[no-any-return]
    if kind == "died":
        raise WorkerDied(items, body)
    if kind == "closed":
        raise ComputeError(f"the pool was closed while running items {reprlib.repr(items)}")
    failure: _Failure = body
    item = items[failure.index] if failure.index is not None else list(items)
    exception = None
    if failure.exception is not None:
        with contextlib.suppress(Exception):
            exception = pickle.loads(failure.exception)
    raise TaskFailed(item, failure.exc_type, failure.message, failure.traceback, exception)


def _reap(process: BaseProcess, timeout: float) -> int | None:
    """The exit code once ``process`` has exited (SIGKILLed after ``timeout``)."""
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join(timeout)
    return process.exitcode


def _open(future: asyncio.Future[Any]) -> bool:
    """``future`` can still be given a result (callbacks cannot go to a closed loop)."""
    return not future.done() and not future.get_loop().is_closed()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# -- the execution environment's pool -----------------------------------------------------

_shared: ProcessPool | None = None
_live: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


def get_pool(workers: int | None = None) -> ProcessPool:
    """The execution environment's pool, built on first call with ``workers`` (default:
    the CPUs it may use); a later call asking for another size is a ``ValueError``."""
    global _shared  # noqa: PLW0603 - one pool per execution environment
    if _shared is None:
        _shared = ProcessPool(workers)
    elif workers is not None and workers != _shared.size:
        raise ValueError(f"the pool has {_shared.size} worker(s), not {workers}")
    return _shared


def close() -> None:
    """Close the shared pool (the next :func:`get_pool` builds a new one)."""
    global _shared
    pool, _shared = _shared, None
    if pool is not None:
        pool.close()


async def aclose() -> None:
    """:func:`close`, without blocking the loop while the workers exit."""
    global _shared
    pool, _shared = _shared, None
    if pool is not None:
        await pool.aclose()


@atexit.register
def _close_all() -> None:
    # Daemonic workers would be terminated by multiprocessing anyway; this also covers a
    # worker stuck in a blocking write to a parent that stopped reading.
    for pool in list(_live):
        pool.close()
