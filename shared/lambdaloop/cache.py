"""A cache-aside layer on Redis (ElastiCache) that never becomes a single point of failure.

- Values are JSON (pydantic-core's Rust encoder), stored with a TTL that has jitter so that
  entries written together do not expire together.
- Keys are ``namespace:v<version>:<sha256 of the canonical JSON of the parts>``: stable across
  processes (never ``hash()``, which is salted per process), and a version bump invalidates a
  whole namespace at once.
- Every Redis fault (refused, reset, timeout) is absorbed: the call reports a miss or does
  nothing, the error is counted in a metric, and a :class:`CircuitBreaker` stops calling Redis
  for a cool-down after repeated failures, then probes again. The source of truth answers.
- :class:`CacheAside` reads through the cache with single-flight: concurrent misses on one
  key in an environment cause one source read.
- ``None`` is a value: callers cache "known absent" with it. A miss is :data:`MISS`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random as _random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from pydantic_core import from_json, to_json

from lambdaloop.breaker import CircuitBreaker
from lambdaloop.clients import redis_client

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["MISS", "Cache", "CacheAside", "stable_key"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Miss:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"

    def __bool__(self) -> bool:
        return False


#: What a lookup returns when the key is not cached (or Redis is unavailable).
MISS: Final = _Miss()


def stable_key(namespace: str, version: int, *parts: Any) -> str:
    """``namespace:v<version>:<sha256 of canonical JSON>``, the same in every process."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    return f"{namespace}:v{version}:{digest}"


class Cache:
    """JSON values in Redis under one namespace, fault-tolerant (see the module docstring)."""

    def __init__(
        self,
        namespace: str,
        *,
        version: int = 1,
        ttl_s: float = 300.0,
        jitter: float = 0.1,
        client: redis.asyncio.Redis | None = None,
        breaker: CircuitBreaker | None = None,
        enabled: bool = True,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.namespace = namespace
        self.version = version
        self.ttl_s = ttl_s
        self.jitter = jitter
        self.enabled = enabled
        self.breaker = breaker or CircuitBreaker(f"redis cache {namespace!r}")
        self._client = client
        self._random = random

    def key(self, *parts: Any) -> str:
        return stable_key(self.namespace, self.version, *parts)

    def _ttl_ms(self, ttl_s: float | None) -> int:
        base = self.ttl_s if ttl_s is None else ttl_s
        spread = 1 - self.jitter + 2 * self.jitter * self._random()
        return max(1, int(base * spread * 1000))

    async def _call(
        self, operation: str, call: Callable[[redis.asyncio.Redis], Awaitable[T]], fallback: T
    ) -> T:
        """Run one Redis call, or return ``fallback`` when Redis is off, failing or fenced off."""
        if not self.enabled or not self.breaker.allow():
            return fallback
        try:
            result = await call(self._client or redis_client())
        except Exception as exc:
            if not _is_redis_fault(exc):
                self.breaker.release()
                raise
            self._record_failure(operation, exc)
            return fallback
        except BaseException:  # cancelled: no verdict on Redis
            self.breaker.release()
            raise
        self.breaker.record_success()
        return result

    def _record_failure(self, operation: str, exc: BaseException) -> None:
        from lambdaloop.observability import get_metrics

        # Logged once per outage (its first failure); every failure is counted in a metric.
        first = self.breaker.state == "closed" and self.breaker.failures == 0
        opened = self.breaker.record_failure()
        if first:
            logger.warning(
                "cache %s failed (%s: %s); serving from the source",
                operation,
                type(exc).__name__,
                exc,
            )
        metrics = get_metrics()
        metrics.add_metric(name="CacheErrors", unit="Count", value=1)
        if opened:
            metrics.add_metric(name="CacheCircuitOpened", unit="Count", value=1)

    async def get(self, key: str) -> Any:
        """The cached value, or :data:`MISS`."""
        raw = await self._call("GET", lambda r: r.get(key), None)
        return MISS if raw is None else from_json(raw)

    async def get_many(self, keys: Sequence[str]) -> list[Any]:
        """One MGET; each position holds the value or :data:`MISS`."""
        if not keys:
            return []
        raws: list[Any] = await self._call("MGET", lambda r: r.mget(keys), [None] * len(keys))
        return [MISS if raw is None else from_json(raw) for raw in raws]

    async def set(
        self, key: str, value: Any, *, ttl_s: float | None = None, only_if_absent: bool = False
    ) -> None:
        """Write through (``only_if_absent=False``) or fill after a read (``True``: a fill
        never overwrites a newer value that a writer put there meanwhile)."""
        payload = to_json(value)
        await self._call(
            "SET", lambda r: r.set(key, payload, px=self._ttl_ms(ttl_s), nx=only_if_absent), None
        )

    async def set_many(
        self, items: Mapping[str, Any], *, ttl_s: float | None = None, only_if_absent: bool = False
    ) -> None:
        """All the writes in one pipelined round trip (not a transaction)."""
        if not items:
            return

        async def pipeline(r: redis.asyncio.Redis) -> None:
            async with r.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, to_json(value), px=self._ttl_ms(ttl_s), nx=only_if_absent)
                await pipe.execute()

        await self._call("SET (pipeline)", pipeline, None)

    async def delete(self, *keys: str) -> None:
        if keys:
            await self._call("DEL", lambda r: r.delete(*keys), None)


def _is_redis_fault(exc: BaseException) -> bool:
    import redis.exceptions

    return isinstance(exc, redis.exceptions.RedisError | OSError | TimeoutError)


#: Keys whose last landed load is kept for stragglers of its stampede.
_LANDED_KEYS = 1024


class _SingleFlight:
    """Concurrent callers for one key share one in-flight load.

    A caller whose miss was read before a load started, but who asks only after that load
    has landed (its cache read was slow), takes the landed result: that load ran within the
    caller's own request, so it is as fresh as one of its own, and it saves a second load
    of a stampede's stragglers. The last landed load per key is kept for this (at most
    ``_LANDED_KEYS`` keys).
    """

    def __init__(self) -> None:
        self._flights: dict[str, tuple[float, asyncio.Task[Any]]] = {}
        self._landed: dict[str, tuple[float, asyncio.Task[Any]]] = {}

    async def do(self, key: str, load: Callable[[], Awaitable[T]], since: float) -> T:
        """``load`` once for ``key`` among concurrent callers; ``since`` is when this caller
        began (``loop.time()``, before its cache read)."""
        flight = self._flights.get(key)
        if flight is None:
            landed = self._landed.get(key)
            if landed is not None and landed[0] >= since and _succeeded(landed[1]):
                result: T = landed[1].result()
                return result
            flight = (asyncio.get_running_loop().time(), asyncio.ensure_future(load()))
            self._flights[key] = flight
            flight[1].add_done_callback(lambda _: self._land(key))
        # shield: one caller giving up (cancelled) must not cancel the others' load.
        shared: T = await asyncio.shield(flight[1])
        return shared

    def _land(self, key: str) -> None:
        flight = self._flights.pop(key, None)
        if flight is None:
            return
        self._landed.pop(key, None)
        if len(self._landed) >= _LANDED_KEYS:
            del self._landed[next(iter(self._landed))]  # the oldest
        self._landed[key] = flight


def _succeeded(task: asyncio.Task[Any]) -> bool:
    return not task.cancelled() and task.exception() is None


class CacheAside:
    """Read through ``cache``: hit, or one load from the source per key, then a fill."""

    def __init__(self, cache: Cache, *, ttl_s: float | None = None) -> None:
        self.cache = cache
        self.ttl_s = ttl_s
        self._flights = _SingleFlight()

    async def get_or_load(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        since = asyncio.get_running_loop().time()
        hit = await self.cache.get(key)
        if hit is not MISS:
            return hit  # type: ignore[no-any-return]
        return await self._flights.do(key, lambda: self._load(key, load), since)

    async def _load(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        value = await load()
        await self.cache.set(key, value, ttl_s=self.ttl_s, only_if_absent=True)
        return value
