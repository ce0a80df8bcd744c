"""The cache layer over a fake Redis (fakeredis, behind redis.asyncio's own interface)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from typing import Any

import pytest

from fakes import CountingRedis
from lambdaloop.breaker import CircuitBreaker
from lambdaloop.cache import MISS, Cache, CacheAside, stable_key
from support import run


def state_of(breaker: CircuitBreaker) -> str:
    return breaker.state


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis() -> CountingRedis:
    return CountingRedis()


def make_cache(redis: CountingRedis, **kwargs: Any) -> Cache:
    return Cache("users", client=redis, **kwargs)


def test_keys_are_stable_across_processes_and_versioned() -> None:
    here = stable_key("users", 1, "user", 42)
    code = "from lambdaloop.cache import stable_key; print(stable_key('users', 1, 'user', 42))"
    elsewhere = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()

    assert here == elsewhere
    assert here.startswith("users:v1:")
    assert stable_key("users", 2, "user", 42) != here
    assert stable_key("users", 1, "user", 43) != here
    assert stable_key("users", 1, {"b": 1, "a": 2}) == stable_key("users", 1, {"a": 2, "b": 1})


def test_values_round_trip_and_none_is_not_a_miss(redis: CountingRedis) -> None:
    cache = make_cache(redis)

    async def scenario() -> tuple[Any, Any, Any]:
        await cache.set("a", {"id": 1, "tags": ["x"]})
        await cache.set("absent", None)
        return await cache.get("a"), await cache.get("absent"), await cache.get("never")

    value, absent, never = run(scenario())

    assert value == {"id": 1, "tags": ["x"]}
    assert absent is None
    assert never is MISS


def test_ttl_has_jitter_within_bounds(redis: CountingRedis) -> None:
    lows = make_cache(redis, ttl_s=100, jitter=0.1, random=lambda: 0.0)
    highs = make_cache(redis, ttl_s=100, jitter=0.1, random=lambda: 0.999)

    async def scenario() -> tuple[int, int]:
        await lows.set("low", 1)
        await highs.set("high", 1)
        return await redis.pttl("low"), await redis.pttl("high")

    low, high = run(scenario())

    assert 89_000 <= low <= 90_000
    assert 109_000 < high <= 110_000


def test_a_fill_never_overwrites_a_write(redis: CountingRedis) -> None:
    cache = make_cache(redis)

    async def scenario() -> Any:
        await cache.set("k", "written")
        await cache.set("k", "stale read", only_if_absent=True)
        return await cache.get("k")

    assert run(scenario()) == "written"


def test_many_keys_take_one_mget_and_one_pipeline(redis: CountingRedis) -> None:
    cache = make_cache(redis)
    keys = [f"k{i}" for i in range(100)]

    async def scenario() -> list[Any]:
        await cache.set_many({k: i for i, k in enumerate(keys[:60])})
        return await cache.get_many(keys)

    values = run(scenario())

    assert values[:60] == list(range(60))
    assert all(v is MISS for v in values[60:])
    assert redis.commands["MGET"] == 1
    assert redis.commands["GET"] == 0


def test_redis_faults_are_misses_and_open_the_circuit(redis: CountingRedis) -> None:
    clock = Clock()
    breaker = CircuitBreaker("test", failure_threshold=3, reset_timeout_s=5, clock=clock)
    cache = make_cache(redis, breaker=breaker)
    redis.down = True

    async def gets(n: int) -> list[Any]:
        return [await cache.get("k") for _ in range(n)]

    # Three failures open the circuit; after that Redis is not called at all.
    assert run(gets(10)) == [MISS] * 10
    assert breaker.state == "open"
    assert breaker.failures == 3

    # After the cool-down one probe goes through; Redis is back, so the circuit closes.
    redis.down = False
    run(cache.set("k", "v"))  # refused: still open
    clock.now += 5
    assert run(cache.get("k")) is MISS  # the probe: answered (nothing was stored)
    assert state_of(breaker) == "closed"
    run(cache.set("k", "v"))
    assert run(cache.get("k")) == "v"


def test_a_failed_probe_opens_the_circuit_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker("test", failure_threshold=1, reset_timeout_s=5, clock=clock)

    assert breaker.allow()
    assert breaker.record_failure() is True
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # and only one
    assert breaker.record_failure() is True
    assert breaker.state == "open"


def test_a_disabled_cache_never_calls_redis(redis: CountingRedis) -> None:
    cache = make_cache(redis, enabled=False)

    async def scenario() -> Any:
        await cache.set("k", 1)
        return await cache.get("k")

    assert run(scenario()) is MISS
    assert sum(redis.commands.values()) == 0


def test_single_flight_one_source_read_for_200_concurrent_misses(redis: CountingRedis) -> None:
    aside = CacheAside(make_cache(redis))
    reads = 0
    release = asyncio.Event()

    async def load() -> dict[str, int]:
        nonlocal reads
        reads += 1
        await release.wait()  # hold the load open until every caller has missed
        return {"id": 7}

    async def scenario() -> list[Any]:
        redis.gets_target = 200
        callers = [asyncio.ensure_future(aside.get_or_load("user-7", load)) for _ in range(200)]
        # Every caller has looked in the cache and missed (the bound only guards a hang).
        await asyncio.wait_for(redis.gets_reached.wait(), 30)
        release.set()
        return await asyncio.gather(*callers)

    results = run(scenario())

    assert reads == 1
    assert results == [{"id": 7}] * 200
    assert run(aside.cache.get("user-7")) == {"id": 7}


class StragglerCache(Cache):
    """A cache whose first read answers late: it reads (a miss) at once, then holds the
    answer until ``answer`` is set, as a slow Redis reply would."""

    def __init__(self, redis: CountingRedis) -> None:
        super().__init__("test", client=redis)
        self.answer = asyncio.Event()
        self.read = asyncio.Event()
        self._first = True

    async def get(self, key: str) -> Any:
        value = await super().get(key)
        if self._first:
            self._first = False
            self.read.set()
            await self.answer.wait()
        return value


def test_a_straggler_of_a_stampede_takes_the_load_that_landed_during_its_request(
    redis: CountingRedis,
) -> None:
    cache = StragglerCache(redis)
    aside = CacheAside(cache)
    reads = 0

    async def load() -> dict[str, int]:
        nonlocal reads
        reads += 1
        return {"id": reads}

    async def scenario() -> tuple[Any, Any, Any]:
        # Given a caller whose miss is read before a load, but answered after it landed
        straggler = asyncio.ensure_future(aside.get_or_load("user-7", load))
        await asyncio.wait_for(cache.read.wait(), 10)
        first = await aside.get_or_load("user-7", load)
        cache.answer.set()
        late = await straggler
        # And a caller that begins after that load, when the entry is gone again
        await cache.delete("user-7")
        after = await aside.get_or_load("user-7", load)
        return first, late, after

    first, late, after = run(scenario())

    # Then the straggler shares the landed load; the later caller loads afresh
    assert (first, late, after) == ({"id": 1}, {"id": 1}, {"id": 2})
    assert reads == 2


def test_a_probe_cancelled_midway_does_not_wedge_the_circuit(redis: CountingRedis) -> None:
    clock = Clock()
    breaker = CircuitBreaker("test", failure_threshold=1, reset_timeout_s=5, clock=clock)
    cache = make_cache(redis, breaker=breaker)
    redis.down = True
    run(cache.get("k"))  # opens the circuit
    redis.down = False
    clock.now += 5

    async def cancelled_probe() -> None:
        redis.hold = asyncio.Event()  # Redis takes its time ...
        probe = asyncio.ensure_future(cache.get("k"))
        await asyncio.wait_for(redis.held.wait(), 10)  # ... the probe is in flight
        probe.cancel()  # and its request is cancelled (a deadline, say)
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        redis.hold = None

    run(cancelled_probe())

    assert run(cache.get("k")) is MISS  # the next caller probes, Redis answers ...
    assert state_of(breaker) == "closed"  # ... and the circuit closes
