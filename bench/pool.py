"""CPU-bound chunks on the layer's process pool, beside a sequential loop, threads and the
stdlib's ProcessPoolExecutor.

The kernel is a pure-Python loop (the sum of i*i over a range), so threads share one GIL
and only processes run it in parallel. It is cut into 4 x CPUs chunks, each calibrated to
take at least 100 ms on this machine. Peers, in the same run, taking turns:

- ``sequential``: the chunks one after the other, in this process;
- ``ThreadPoolExecutor``: one thread per CPU (the GIL's reference point);
- ``ProcessPoolExecutor``: one forked process per CPU, warmed up before timing; reported
  as unavailable where it cannot start (on Lambda: no /dev/shm for its semaphores);
- ``lambdaloop ProcessPool``: ``await pool.map(kernel, chunks, chunksize=1)``, warm.

On a shared VM two processes do not always get two whole CPUs: compare the pool with the
ProcessPoolExecutor of the same run rather than with the goal alone.

Goals: parallel efficiency (speed-up over sequential / CPUs) >= 0.9 for the pool; pool
start-up (a new pool until every worker has answered a no-op) <= 20 ms. Also printed: the
round trip of a no-op through ``run`` and the cost per item of ``map`` over 10,000 no-op
items with the default chunking.

Run it with ``.venv/bin/python bench/pool.py`` (``--runs N``, ``--chunk-ms M``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from typing import TYPE_CHECKING

from benchkit import import_paths, p90

if TYPE_CHECKING:
    from lambdaloop.compute.pool import ProcessPool

GOAL_EFFICIENCY = 0.9
GOAL_STARTUP_MS = 20.0
STARTUPS = 10
ROUND_TRIPS = 1_000
MAP_ITEMS = 10_000
PEERS = ("sequential", "threads", "executor", "lambdaloop")
LABELS = {
    "sequential": "sequential",
    "threads": "ThreadPoolExecutor",
    "executor": "ProcessPoolExecutor",
    "lambdaloop": "lambdaloop ProcessPool",
}

Chunk = tuple[int, int]


def kernel(chunk: Chunk) -> int:
    start, stop = chunk
    total = 0
    for i in range(start, stop):
        total += i * i
    return total


def noop(item: object = None) -> object:
    return item


def calibrate(chunk_ms: float) -> int:
    """The range length for which one chunk takes ``chunk_ms`` here (rounded up)."""
    size = 100_000
    while True:
        started = time.perf_counter()
        kernel((0, size))
        elapsed = time.perf_counter() - started
        if elapsed >= 0.05:
            return int(size * chunk_ms / 1e3 / elapsed * 1.05)
        size *= 2


def chunks_of(count: int, size: int) -> list[Chunk]:
    return [(i * size, (i + 1) * size) for i in range(count)]


class Peers:
    """Each peer as ``chunks -> results``, ready (warmed) before any timing."""

    def __init__(self, cpus: int, loop: asyncio.AbstractEventLoop, pool: ProcessPool) -> None:
        self.cpus = cpus
        self.loop = loop
        self.pool = pool
        self.threads = ThreadPoolExecutor(cpus)
        self.executor: Executor | None = None
        self.executor_error = ""
        try:
            self.executor = ProcessPoolExecutor(cpus, mp_context=get_context("fork"))
            list(self.executor.map(noop, range(cpus * 4)))
        except Exception as exc:  # no /dev/shm (Lambda), or no processes at all
            self.executor = None
            self.executor_error = f"{type(exc).__name__}: {exc}"
        loop.run_until_complete(pool.start())

    def runner(self, peer: str) -> Callable[[list[Chunk]], list[int]] | None:
        executor = self.executor
        if peer == "sequential":
            return lambda chunks: [kernel(c) for c in chunks]
        if peer == "threads":
            return lambda chunks: list(self.threads.map(kernel, chunks))
        if peer == "executor":
            return None if executor is None else lambda c: list(executor.map(kernel, c))
        return lambda chunks: self.loop.run_until_complete(
            self.pool.map(kernel, chunks, chunksize=1)
        )

    def close(self) -> None:
        self.threads.shutdown()
        if self.executor is not None:
            self.executor.shutdown()


def measure_kernel(peers: Peers, chunks: list[Chunk], runs: int) -> dict[str, list[float]]:
    expected = [kernel(c) for c in chunks[:1]]
    samples: dict[str, list[float]] = {}
    for run in range(runs):
        order = PEERS[run % len(PEERS) :] + PEERS[: run % len(PEERS)]
        for peer in order:
            runner = peers.runner(peer)
            if runner is None:
                continue
            started = time.perf_counter()
            results = runner(chunks)
            samples.setdefault(peer, []).append(time.perf_counter() - started)
            if results[:1] != expected or len(results) != len(chunks):
                raise RuntimeError(f"{peer} returned wrong results")
    return samples


def measure_startup(loop: asyncio.AbstractEventLoop, cpus: int) -> list[float]:
    from lambdaloop.compute.pool import ProcessPool

    times = []
    for _ in range(STARTUPS):
        started = time.perf_counter()
        pool = ProcessPool(cpus)
        loop.run_until_complete(pool.start())
        times.append(time.perf_counter() - started)
        loop.run_until_complete(pool.aclose())
    return times


def measure_dispatch(peers: Peers, runs: int) -> tuple[list[float], list[float], list[float]]:
    """Round trips of a no-op through ``run`` (and the executor's ``submit``), and the time
    per item of ``map`` over many no-op items."""

    async def round_trips() -> list[float]:
        times = []
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            await peers.pool.run(noop)
            times.append(time.perf_counter() - started)
        return times

    async def map_per_item() -> float:
        started = time.perf_counter()
        await peers.pool.map(noop, range(MAP_ITEMS))
        return (time.perf_counter() - started) / MAP_ITEMS

    ours = peers.loop.run_until_complete(round_trips())
    theirs = []
    if peers.executor is not None:
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            peers.executor.submit(noop).result()
            theirs.append(time.perf_counter() - started)
    per_item = [peers.loop.run_until_complete(map_per_item()) for _ in range(runs)]
    return ours, theirs, per_item


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def render(
    samples: dict[str, list[float]], peers: Peers, chunks: int, chunk_ms: float, runs: int
) -> list[str]:
    cpus = peers.cpus
    sequential = statistics.median(samples["sequential"])
    lines = [
        f"CPU kernel (pure-Python sum of i*i), {chunks} chunks of ~{chunk_ms:.0f} ms = 4 x "
        f"{cpus} CPUs; {runs} runs, medians; python {platform.python_version()}",
        f"{'peer':<24}{'median s':>9}{'p90 s':>8}{'speed-up':>10}{'efficiency':>12}   goal",
    ]
    for peer in PEERS:
        if peer not in samples:
            lines.append(f"{LABELS[peer]:<24}unavailable: {peers.executor_error}")
            continue
        median = statistics.median(samples[peer])
        speedup = sequential / median
        efficiency = speedup / cpus
        note = ""
        if peer == "lambdaloop":
            note = f">= {GOAL_EFFICIENCY} {met(efficiency >= GOAL_EFFICIENCY)}"
            if "executor" in samples:
                executor = statistics.median(samples["executor"])
                note += f" ({executor / median:.2f}x the executor's speed-up)"
        lines.append(
            f"{LABELS[peer]:<24}{median:>9.3f}{p90(samples[peer]):>8.3f}{speedup:>9.2f}x"
            f"{efficiency:>12.2f}   {note}"
        )
    return lines


def render_overheads(
    startup: list[float], ours: list[float], theirs: list[float], per_item: list[float]
) -> list[str]:
    startup_ms = statistics.median(startup) * 1e3
    lines = [
        f"pool start-up (new pool until every worker answered), median of {STARTUPS}: "
        f"{startup_ms:.1f} ms (p90 {p90(startup) * 1e3:.1f})   goal <= {GOAL_STARTUP_MS:.0f} ms "
        f"{met(startup_ms <= GOAL_STARTUP_MS)}",
        f"no-op round trip, median of {ROUND_TRIPS}: lambdaloop run "
        f"{statistics.median(ours) * 1e6:.0f} us (p90 {p90(ours) * 1e6:.0f})",
    ]
    if theirs:
        lines[-1] += (
            f"; ProcessPoolExecutor submit().result() {statistics.median(theirs) * 1e6:.0f} us"
            f" (p90 {p90(theirs) * 1e6:.0f})"
        )
    lines.append(
        f"map over {MAP_ITEMS:,} no-op items (default chunking): "
        f"{statistics.median(per_item) * 1e6:.2f} us per item"
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per peer (5)")
    parser.add_argument(
        "--chunk-ms", type=float, default=120.0, help="time per chunk, at least 100 (120)"
    )
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    if args.chunk_ms < 100:
        parser.error("--chunk-ms must be at least 100")
    import_paths()
    from lambdaloop.compute.pool import ProcessPool
    from lambdaloop.runtime import get_loop

    cpus = len(os.sched_getaffinity(0))
    chunks = chunks_of(4 * cpus, calibrate(args.chunk_ms))
    loop = get_loop()
    # Timed first, with no other pool or executor around.
    startup = measure_startup(loop, cpus)
    pool = ProcessPool(cpus)
    peers = Peers(cpus, loop, pool)
    try:
        samples = measure_kernel(peers, chunks, args.runs)
        ours, theirs, per_item = measure_dispatch(peers, args.runs)
    finally:
        peers.close()
        loop.run_until_complete(pool.aclose())
    print("\n".join(render(samples, peers, len(chunks), args.chunk_ms, args.runs)))
    print("\n".join(render_overheads(startup, ours, theirs, per_item)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
