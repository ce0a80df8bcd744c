"""The process pool: results, failures carried back with their item, worker deaths and
timeouts that leave the pool whole, cancellation without stale results, in-process mode.

The functions the workers run are defined here, at module level: the workers are forked
from this process, so they find them by reference. Tasks that must stay in flight while a
test acts block on a pipe (the *gate*) the test writes to, and tell the test they started
through another (*started*); both are created before the pool forks its workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from lambdaloop.compute import pool as pool_module
from lambdaloop.compute.pool import (
    ComputeError,
    ProcessPool,
    TaskFailed,
    TaskTimeout,
    WorkerDied,
    get_pool,
)
from support import run

T = TypeVar("T")
SAFETY_S = 30.0  # bounds a wait that should end at once, so a bug fails instead of hanging


# -- what the workers run -------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def add(x: int, y: int, z: int = 0) -> int:
    return x + y + z


def pid_of_worker(_: object = None) -> int:
    return os.getpid()


def fail_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError(f"seven is not allowed (got {x})")
    return x


class PickyError(Exception):
    """Pickles, but cannot be rebuilt: ``__reduce__`` passes one arg to a two-arg init."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def raise_picky(a: int) -> None:
    raise PickyError(a, a + 1)


def lock_on_two(x: int) -> object:
    return threading.Lock() if x == 2 else x


def blob(size: int) -> bytes:
    return b"x" * size


def total(data: bytes) -> int:
    return sum(data[::4096]) + len(data)


def kill_self(_: object = None) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_on_three(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def exit_hard(code: int) -> None:
    os._exit(code)


def hang(_: object = None) -> None:
    time.sleep(3600)  # the workload of a hung task: only the pool's timeout ends it


def gated(gate: int, started: int, value: str) -> str:
    os.write(started, b"s")
    os.read(gate, 1)
    return value


def gated_item(args: tuple[int, int, str]) -> str:
    return gated(*args)


# -- helpers --------------------------------------------------------------------------------


@dataclass
class Gate:
    read: int
    write: int
    started_read: int
    started_write: int

    def open(self, tasks: int) -> None:
        os.write(self.write, b"g" * tasks)

    async def started(self, tasks: int) -> None:
        """Wait, on the loop, until ``tasks`` gated tasks have started."""
        loop = asyncio.get_running_loop()
        seen = bytearray()
        done: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            seen.extend(os.read(self.started_read, tasks - len(seen)))
            if len(seen) >= tasks and not done.done():
                done.set_result(None)

        loop.add_reader(self.started_read, on_readable)
        try:
            await asyncio.wait_for(done, SAFETY_S)
        finally:
            loop.remove_reader(self.started_read)


@pytest.fixture
def gate() -> Iterator[Gate]:
    read, write = os.pipe()
    started_read, started_write = os.pipe()
    yield Gate(read, write, started_read, started_write)
    for fd in (read, write, started_read, started_write):
        os.close(fd)


@pytest.fixture
def pool() -> Iterator[ProcessPool]:
    pool = ProcessPool(2)
    yield pool
    pool.close()


def run_on_fresh_loop(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` on a loop of its own, whose executor threads are joined after: the
    in-process mode's threads must not outlive the test (later tests fork)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(work)
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- results --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 7, 1_000, 5_000])
def test_map_gives_the_sequential_results_in_input_order(
    pool: ProcessPool, chunksize: int | None
) -> None:
    items = list(range(1_000))
    assert run(pool.map(square, items, chunksize=chunksize)) == [square(x) for x in items]


def test_map_of_many_small_items_runs_in_the_workers(pool: ProcessPool) -> None:
    pids = run(pool.map(pid_of_worker, range(10_000)))
    assert len(pids) == 10_000
    assert set(pids) <= set(pool.pids)
    assert os.getpid() not in pids


def test_map_of_a_few_big_items_and_big_results(pool: ProcessPool) -> None:
    # Frames well past a socket buffer: the parent writes and reads them in pieces.
    items = [bytes(range(256)) * 4_000 * n for n in (1, 3, 5)]
    assert run(pool.map(total, items)) == [total(item) for item in items]
    sizes = [3_000_000, 10, 1_500_000]
    assert run(pool.map(blob, sizes, chunksize=1)) == [blob(size) for size in sizes]


def test_map_of_nothing_is_empty_and_starts_nothing(pool: ProcessPool) -> None:
    assert run(pool.map(square, [])) == []
    assert pool.pids == []


def test_map_rejects_a_chunksize_below_one(pool: ProcessPool) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        run(pool.map(square, [1], chunksize=0))


def test_run_calls_fn_with_the_args_in_a_worker(pool: ProcessPool) -> None:
    assert run(pool.run(add, 1, 2, 3)) == 6
    assert run(pool.run(pid_of_worker)) in pool.pids


def test_the_pool_is_reused_across_calls(pool: ProcessPool) -> None:
    run(pool.start())
    pids = pool.pids
    assert len(pids) == 2
    for _ in range(3):
        run(pool.map(square, range(100)))
        run(pool.run(square, 3))
    assert pool.pids == pids


def test_the_pool_moves_to_a_new_event_loop_with_the_same_workers(pool: ProcessPool) -> None:
    assert run(pool.map(square, range(10))) == [square(x) for x in range(10)]
    pids = pool.pids
    assert run_on_fresh_loop(pool.map(square, range(10))) == [square(x) for x in range(10)]
    assert run(pool.run(square, 5)) == 25
    assert pool.pids == pids


def test_the_shared_pool_keeps_the_size_it_was_built_with() -> None:
    try:
        first = get_pool(1)
        assert get_pool(1) is first
        assert get_pool() is first
        with pytest.raises(ValueError, match="1 worker"):
            get_pool(2)
    finally:
        pool_module.close()


def test_the_shared_pool_is_built_once_until_closed() -> None:
    try:
        first = get_pool()
        assert get_pool() is first
        assert first.size == len(os.sched_getaffinity(0))
        pool_module.close()
        assert get_pool() is not first
    finally:
        pool_module.close()


def test_pool_size_is_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ProcessPool(0)


# -- failures -------------------------------------------------------------------------------


def test_an_exception_in_map_names_its_item_and_keeps_the_remote_traceback(
    pool: ProcessPool,
) -> None:
    with pytest.raises(TaskFailed) as caught:
        run(pool.map(fail_on_seven, range(20), chunksize=3))
    failure = caught.value
    assert failure.item == 7
    assert failure.exc_type == "ValueError"
    assert failure.message == "seven is not allowed (got 7)"
    assert "7" in str(failure)
    assert "ValueError: seven is not allowed" in str(failure)
    assert "fail_on_seven" in failure.remote_traceback
    assert "Traceback" not in str(failure)
    assert isinstance(failure.exception, ValueError)
    # The pool carries on.
    assert run(pool.map(square, range(5))) == [0, 1, 4, 9, 16]


def test_an_exception_in_run_names_the_args(pool: ProcessPool) -> None:
    with pytest.raises(TaskFailed) as caught:
        run(pool.run(fail_on_seven, 7))
    assert caught.value.item == (7,)


def test_an_exception_that_cannot_be_rebuilt_is_still_reported(pool: ProcessPool) -> None:
    with pytest.raises(TaskFailed) as caught:
        run(pool.run(raise_picky, 1))
    assert caught.value.exc_type == "PickyError"
    assert caught.value.message == "1/2"
    assert caught.value.exception is None


def test_a_result_that_does_not_pickle_fails_its_item_and_the_worker_lives(
    pool: ProcessPool,
) -> None:
    run(pool.start())
    pids = pool.pids
    with pytest.raises(TaskFailed) as caught:
        run(pool.map(lock_on_two, [1, 2, 3], chunksize=3))
    assert caught.value.item == 2
    assert "pickle" in caught.value.message
    assert run(pool.map(square, range(4))) == [0, 1, 4, 9]
    assert pool.pids == pids


def test_an_argument_that_does_not_pickle_raises_here_and_frees_the_worker() -> None:
    pool = ProcessPool(2)
    try:
        for _ in range(3):  # more attempts than workers: none of them stays taken
            with pytest.raises(TypeError, match="pickle"):
                run(pool.run(square, threading.Lock()))  # type: ignore[arg-type]
        assert run(pool.run(square, 4)) == 16
    finally:
        pool.close()


def test_a_worker_killed_mid_task_fails_that_task_and_is_replaced(pool: ProcessPool) -> None:
    run(pool.start())
    before = pool.pids
    with pytest.raises(WorkerDied) as caught:
        run(pool.run(kill_self))
    assert caught.value.exitcode == -signal.SIGKILL
    assert caught.value.signal_name == "SIGKILL"
    assert "SIGKILL" in str(caught.value)
    assert caught.value.items == [()]
    after = pool.pids
    assert len(after) == 2
    assert len(set(before) & set(after)) == 1
    assert all(gone(pid) for pid in set(before) - set(after))
    assert run(pool.run(square, 3)) == 9
    assert run(pool.map(square, range(100))) == [square(x) for x in range(100)]


def test_a_worker_dying_in_map_fails_the_map_with_its_chunk(pool: ProcessPool) -> None:
    with pytest.raises(WorkerDied) as caught:
        run(pool.map(die_on_three, range(10), chunksize=2))
    assert caught.value.items == [2, 3]
    assert run(pool.map(die_on_three, [1, 2, 4])) == [1, 2, 4]
    assert len(pool.pids) == 2


def test_a_worker_exiting_mid_task_reports_its_exit_code(pool: ProcessPool) -> None:
    with pytest.raises(WorkerDied) as caught:
        run(pool.run(exit_hard, 3))
    assert caught.value.exitcode == 3
    assert caught.value.signal_name is None
    assert run(pool.run(square, 2)) == 4


def test_a_timeout_kills_the_worker_and_the_pool_keeps_working(pool: ProcessPool) -> None:
    run(pool.start())
    before = pool.pids
    with pytest.raises(TaskTimeout) as caught:
        run(pool.run(hang, "x", timeout=0.2))
    assert caught.value.items == [("x",)]
    assert caught.value.timeout == 0.2
    after = pool.pids
    assert len(after) == 2
    assert len(set(before) & set(after)) == 1
    assert all(gone(pid) for pid in set(before) - set(after))
    assert run(pool.map(square, range(50), timeout=SAFETY_S)) == [x * x for x in range(50)]


def test_a_timeout_in_map_names_the_chunk(pool: ProcessPool) -> None:
    with pytest.raises(TaskTimeout) as caught:
        run(pool.map(hang, ["a", "b", "c"], chunksize=3, timeout=0.2))
    assert caught.value.items == ["a", "b", "c"]
    assert run(pool.map(square, range(3))) == [0, 1, 4]


# -- cancellation and the loop --------------------------------------------------------------


def test_the_loop_turns_while_the_workers_compute(pool: ProcessPool, gate: Gate) -> None:
    async def scenario() -> tuple[str, int]:
        task = asyncio.ensure_future(pool.run(gated, gate.read, gate.started_write, "done"))
        await gate.started(1)  # only possible if awaiting the task left the loop free
        ticks = 0
        for _ in range(10):
            await asyncio.sleep(0)
            ticks += 1
        assert not task.done()
        gate.open(1)
        return await asyncio.wait_for(task, SAFETY_S), ticks

    assert run(scenario()) == ("done", 10)


def test_cancelling_a_map_does_not_leak_stale_results_into_the_next_call(
    pool: ProcessPool, gate: Gate
) -> None:
    async def scenario() -> list[str]:
        items = [(gate.read, gate.started_write, f"stale-{i}") for i in range(2)]
        task = asyncio.ensure_future(pool.map(gated_item, items, chunksize=1))
        await gate.started(2)  # both workers are busy with the map
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.open(2)  # the stale chunks finish now
        fresh = [(gate.read, gate.started_write, f"fresh-{i}") for i in range(4)]
        gate.open(4)
        return await asyncio.wait_for(pool.map(gated_item, fresh, chunksize=1), SAFETY_S)

    run(pool.start())
    pids = pool.pids
    assert run(scenario()) == [f"fresh-{i}" for i in range(4)]
    assert run(pool.run(square, 6)) == 36
    assert pool.pids == pids  # cancelling kills nothing


def test_cancelling_a_run_does_not_leak_its_result(pool: ProcessPool, gate: Gate) -> None:
    async def scenario() -> list[str]:
        task = asyncio.ensure_future(pool.run(gated, gate.read, gate.started_write, "stale"))
        await gate.started(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.open(3)
        return [
            await asyncio.wait_for(
                pool.run(gated, gate.read, gate.started_write, f"fresh-{i}"), SAFETY_S
            )
            for i in range(2)
        ]

    assert run(scenario()) == ["fresh-0", "fresh-1"]


def test_a_failure_in_map_leaves_no_chunk_behind(pool: ProcessPool, gate: Gate) -> None:
    async def scenario() -> list[str]:
        # One worker is held by a gated chunk while the other fails: the map raises at
        # once, the held chunk's result is dropped when it comes.
        held = asyncio.ensure_future(pool.run(gated, gate.read, gate.started_write, "held"))
        await gate.started(1)
        with pytest.raises(TaskFailed):
            await pool.map(fail_on_seven, [6, 7, 8], chunksize=1)
        gate.open(1)
        assert await asyncio.wait_for(held, SAFETY_S) == "held"
        return await pool.map(str, range(4))

    assert run(scenario()) == ["0", "1", "2", "3"]


def test_workers_ignore_sigint(pool: ProcessPool) -> None:
    run(pool.start())
    pids = pool.pids
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    assert run(pool.map(square, range(10), chunksize=1)) == [square(x) for x in range(10)]
    assert pool.pids == pids


def test_workers_hold_no_copy_of_each_others_parent_end(pool: ProcessPool) -> None:
    # A copy would keep a pipe open after the parent is gone: its worker would never read
    # EOF and would outlive the execution environment. Checked after a replacement too.
    with pytest.raises(WorkerDied):
        run(pool.run(kill_self))
    run(pool.start())
    parent_ends = {f"socket:[{os.fstat(w.conn.fileno()).st_ino}]" for w in pool._workers}
    for pid in pool.pids:
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert not held & parent_ends


# -- closing --------------------------------------------------------------------------------


def test_close_terminates_the_workers_and_the_pool_can_start_again(pool: ProcessPool) -> None:
    run(pool.start())
    pids = pool.pids
    pool.close()
    assert pool.pids == []
    assert all(gone(pid) for pid in pids)
    assert run(pool.run(square, 7)) == 49
    assert not set(pool.pids) & set(pids)


def test_aclose_terminates_the_workers(pool: ProcessPool) -> None:
    run(pool.start())
    pids = pool.pids
    run(pool.aclose())
    assert pool.pids == []
    assert all(gone(pid) for pid in pids)


def test_closing_fails_the_calls_in_flight_and_waiting(pool: ProcessPool, gate: Gate) -> None:
    async def scenario() -> list[BaseException | str]:
        calls = [
            asyncio.ensure_future(pool.run(gated, gate.read, gate.started_write, str(i)))
            for i in range(3)
        ]
        await gate.started(2)  # two in flight, the third waits for a worker
        pool.close()
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = run(scenario())
    assert all(isinstance(o, ComputeError) for o in outcomes)
    assert all("closed" in str(o) for o in outcomes)


# -- in-process mode ------------------------------------------------------------------------


def test_one_worker_runs_in_process() -> None:
    pool = ProcessPool(1)
    assert pool.in_process

    async def scenario() -> tuple[list[int], int, list[int]]:
        await pool.start()
        return (
            await pool.map(square, range(100)),
            await pool.run(add, 2, 3),
            await pool.map(pid_of_worker, range(3)),
        )

    squares, added, pids = run_on_fresh_loop(scenario())
    assert squares == [square(x) for x in range(100)]
    assert added == 5
    assert pids == [os.getpid()] * 3
    assert pool.pids == []


def test_in_process_failures_are_task_failures_with_the_item() -> None:
    pool = ProcessPool(1)
    with pytest.raises(TaskFailed) as caught:
        run_on_fresh_loop(pool.map(fail_on_seven, range(10)))
    assert caught.value.item == 7
    assert "fail_on_seven" in caught.value.remote_traceback


def test_in_process_timeout_raises_but_cannot_stop_the_thread(gate: Gate) -> None:
    pool = ProcessPool(1)

    async def scenario() -> int:
        with pytest.raises(TaskTimeout):
            await pool.run(gated, gate.read, gate.started_write, "late", timeout=0.2)
        gate.open(1)  # let the thread that still runs it end
        return await pool.run(square, 3)

    assert run_on_fresh_loop(scenario()) == 9
