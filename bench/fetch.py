"""The fetcher's fan-out against a local server with 50 ms latency, beside plain aiohttp.

A server in a separate process (its own interpreter, so it neither shares the client's loop
nor its GIL) answers every GET after 50 ms with 1 KiB. N URLs fetched C at a time ideally
take ceil(N / C) x 50 ms. Peers, in the same run, on the layer's loop:

- ``lambdaloop``: :meth:`~lambdaloop.fetch.Fetcher.stream` with ``concurrency`` = C on the
  guarded session (connector limit 200, SSRF policy allowing the loopback server);
- ``aiohttp + semaphore``: one ``aiohttp.ClientSession()`` with the default connector
  (limit 100), a ``Semaphore(C)`` and a ``gather`` reading every body;
- ``floor``: the same with the connector limit raised to 200 and nothing else (no SSRF
  checks, hashing, timeouts, retries or streaming of results): what aiohttp itself costs on
  this machine, a reference for the goals rather than a peer.

"cold" is a new session (every connection opened during the run); "warm" reuses the session
of an uncounted run before it (connections pooled). Peers take turns within each run.

Goals: lambdaloop <= 1.3x ideal warm and <= 1.5x cold at every C up to 200 (N = 200), and
the same at N = 1,000, C = 200.

Run it with ``make bench`` or ``.venv/bin/python bench/fetch.py`` (``--runs N``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

from benchkit import import_paths, p90

LATENCY_S = 0.05
CASES = ((200, 10), (200, 50), (200, 200), (1_000, 200))  # (N URLs, concurrency C)
MAX_LIMIT = 200
GOAL_WARM = 1.3
GOAL_COLD = 1.5
PEERS = ("lambdaloop", "plain", "floor")
LABELS = {
    "lambdaloop": "lambdaloop Fetcher",
    "plain": "aiohttp + semaphore",
    "floor": "floor: limit raised",
}

SERVER = f"""
import asyncio, sys
from aiohttp import web

BODY = b"x" * 1024

async def handle(request):
    await asyncio.sleep({LATENCY_S})
    return web.Response(body=BODY)

async def main():
    app = web.Application()
    app.router.add_get("/{{tail:.*}}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@contextmanager
def server() -> Iterator[int]:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(10)


async def lambdaloop_run(urls: list[str], concurrency: int, port: int, fresh: bool) -> float:
    from lambdaloop.fetch import Fetcher, FetchOptions
    from lambdaloop.ssrf import Policy, aclose_sessions

    if fresh:
        await aclose_sessions()
    policy = Policy(allow_loopback=True, ports=frozenset({port}))
    options = FetchOptions(concurrency=concurrency, policy=policy, max_attempts=1)
    started = time.perf_counter()
    async for result in Fetcher().stream(urls, options):
        if not result.ok:
            raise RuntimeError(f"{result.url}: {result.error}")
    return time.perf_counter() - started


class Plain:
    """The baseline: a default session, a semaphore and a gather; ``limit`` only for the
    floor (the same loop with the connector limit raised: what aiohttp itself costs)."""

    def __init__(self, limit: int | None = None) -> None:
        self.session: Any = None
        self.limit = limit

    async def run(self, urls: list[str], concurrency: int, port: int, fresh: bool) -> float:
        import aiohttp

        if fresh or self.session is None:
            await self.close()
            connector = None if self.limit is None else aiohttp.TCPConnector(limit=self.limit)
            self.session = aiohttp.ClientSession(connector=connector)
        gate = asyncio.Semaphore(concurrency)

        async def one(url: str) -> None:
            async with gate, self.session.get(url) as response:
                await response.read()
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(url) for url in urls))
        return time.perf_counter() - started

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


Samples = dict[tuple[int, int, str, str], list[float]]  # (N, C, peer, cold|warm) -> seconds


def measure(port: int, runs: int) -> Samples:
    from lambdaloop.runtime import get_loop
    from lambdaloop.ssrf import aclose_sessions

    loop = get_loop()
    plain, floor = Plain(), Plain(limit=MAX_LIMIT)
    peers: dict[str, Callable[[list[str], int, int, bool], Awaitable[float]]] = {
        "lambdaloop": lambdaloop_run,
        "plain": plain.run,
        "floor": floor.run,
    }
    samples: Samples = {}
    try:
        for n, c in CASES:
            urls = [f"http://127.0.0.1:{port}/item/{i}" for i in range(n)]
            for run in range(runs):
                order = PEERS[run % 3 :] + PEERS[: run % 3]
                for peer in order:
                    fetch = peers[peer]
                    cold = loop.run_until_complete(fetch(urls, c, port, True))
                    warm = loop.run_until_complete(fetch(urls, c, port, False))
                    samples.setdefault((n, c, peer, "cold"), []).append(cold)
                    samples.setdefault((n, c, peer, "warm"), []).append(warm)
    finally:
        loop.run_until_complete(plain.close())
        loop.run_until_complete(floor.close())
        loop.run_until_complete(aclose_sessions())
    return samples


def ideal(n: int, c: int) -> float:
    return math.ceil(n / c) * LATENCY_S


def render(samples: Samples, runs: int) -> list[str]:
    lines = [
        f"fetch fan-out, {LATENCY_S * 1e3:.0f} ms server latency (separate process), ideal = "
        f"ceil(N/C) x {LATENCY_S * 1e3:.0f} ms; {runs} runs, medians; python "
        f"{platform.python_version()}, aiohttp {version('aiohttp')}",
        f"{'N':>6}{'C':>5}  {'peer':<22}{'conn':<6}{'ideal ms':>9}{'median ms':>10}{'p90 ms':>8}"
        f"{'x ideal':>9}{'vs lambdaloop':>15}   goal",
    ]
    verdicts: list[tuple[str, float, float]] = []
    for n, c in CASES:
        for temp, goal in (("cold", GOAL_COLD), ("warm", GOAL_WARM)):
            ours = statistics.median(samples[n, c, "lambdaloop", temp])
            for peer in PEERS:
                values = samples[n, c, peer, temp]
                median = statistics.median(values)
                ratio = median / ideal(n, c)
                note = ""
                if peer == "lambdaloop":
                    note = f"<= {goal}x {met(ratio <= goal)}"
                    verdicts.append((f"{temp} N={n} C={c}", ratio, goal))
                lines.append(
                    f"{n:>6,}{c:>5}  {LABELS[peer]:<22}{temp:<6}{ideal(n, c) * 1e3:>9.0f}"
                    f"{median * 1e3:>10.1f}{p90(values) * 1e3:>8.1f}{ratio:>8.2f}x"
                    f"{median / ours:>14.2f}x   {note}"
                )
    all_met = all(ratio <= goal for _, ratio, goal in verdicts)
    worst = max(verdicts, key=lambda v: v[1] / v[2])
    lines.append(
        f"goal: lambdaloop <= {GOAL_WARM}x ideal warm and <= {GOAL_COLD}x cold at every C up to "
        f"200 (N=200, and N=1,000 at C=200) -> {met(all_met)} "
        f"(closest to its goal: {worst[0]} at {worst[1]:.2f}x)"
    )
    return lines


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per peer and case (5)")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    import_paths()
    with server() as port:
        samples = measure(port, args.runs)
    print("\n".join(render(samples, args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
