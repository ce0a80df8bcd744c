"""The Users API's cache paths, measured in-process through the Lambda handler, beside their peers.

One run starts the local stack (moto in server mode + a real redis-server + the template's
resources), gives this process the API function's environment, builds the real handler
(``asgi_handler(create_app())``: Mangum, the middleware, the routes, the users service, the
cache) and creates 100 users through it (``POST /users/batch``, which writes the cache through).
Every request is an API Gateway HTTP API (v2) event built by the local emulator's own code and
is timed with ``time.perf_counter`` around the handler call; every answer must be 200.

- (a) ``GET /users/{id}``, a cache hit, against a bare FastAPI + Mangum route returning a user
  dict plus one Redis GET (redis.asyncio, same server): goal p50 <= 1.25 x (bare + GET).
- (b) ``GET /users/batch`` with 100 cached ids, against a bare route returning the 100 dicts
  plus one MGET of the same 100 keys: goal p50 <= 1.3 x (bare + MGET).
- (c) 100 sequential Redis GETs against one MGET of the same 100 keys (shown, no goal).
- (d) ``GET /users/{id}`` while Redis is down (killed) and the circuit breaker is open, against
  the same handler configured without a cache (``LAMBDALOOP_CACHE_ENABLED=false``): both read
  DynamoDB (moto); goal p50 <= 1.2 x no-cache. Redis is restarted afterwards.

Everything runs on the execution environment's one loop (``lambdaloop.runtime.get_loop()``),
the peers included. The Redis peers are awaited inside a running coroutine, so they cost only
the round trip (the bare route already pays for entering the loop). Peers are interleaved in
blocks (10 rounds, alternating who goes first) after an uncounted warm-up, so machine noise
hits them alike. (d) switches configuration between blocks the way the tests do (settings,
clients and the users service are forgotten, the environment is changed, the breaker is opened
again by real failing requests) and discards a warm-up after each switch. The handler's own
stdout (JSON logs, EMF metrics) is captured and shown only when the run fails.

Run it with ``.venv/bin/python bench/users.py`` from the repository (``--iterations N`` for the
single-user calls, ``--batch-iterations N`` for the 100-user ones, ``--json`` to print the
numbers as JSON too).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    import redis.asyncio

    from lambdaloop_local.context import LocalContext
    from lambdaloop_local.stack import LocalStack

ROOT = Path(__file__).resolve().parent.parent
API_CODE_URI = ROOT / "functions" / "api"

#: lambdaloop's p50 over its peer's, at most.
GOAL_HIT = 1.25
GOAL_BATCH = 1.3
GOAL_DOWN = 1.2

USERS = 100
BLOCKS = 10
#: Uncounted calls before the blocks, and after each configuration switch in (d).
WARMUP = 50
SWITCH_WARMUP = 20

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
#: Runs ``n`` timed calls and returns their durations in seconds.
Sampler = Callable[[int], list[float]]


class BenchError(RuntimeError):
    """A request did not answer as expected, or the stack is not in the state measured."""


# ------------------------------------------------------------------------------ events, handlers


def api_event(method: str, path: str, *, query: str = "", body: bytes = b"") -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, built by the local emulator's own code."""
    from lambdaloop_local.apigw import HttpRoute, build_event

    headers = {"host": "bench.local", "user-agent": "lambdaloop-bench/1"}
    if body:
        headers["content-type"] = "application/json"
    return build_event(
        HttpRoute.parse("ANY", "/{proxy+}", "ApiFunction"),
        {"proxy": path.lstrip("/")},
        method=method,
        path=path,
        raw_query=query,
        headers=headers,
        body=body,
        source_ip="127.0.0.1",
    )


def lambda_context(timeout_s: float = 3600.0) -> LocalContext:
    """One context for the whole run: its deadline is far beyond it."""
    from lambdaloop_local.context import LocalContext

    return LocalContext(
        function_name="ApiFunction",
        memory_limit_in_mb=1024,
        aws_request_id=str(uuid.uuid4()),
        deadline_ms=int(time.time() * 1000 + timeout_s * 1000),
    )


def checked(response: dict[str, Any], expected: int, what: str) -> Any:
    """The decoded JSON body; BenchError when the status is not ``expected``."""
    if response.get("statusCode") != expected:
        raise BenchError(
            f"{what} answered {response.get('statusCode')}, not {expected}: "
            f"{str(response.get('body'))[:500]}"
        )
    body = response.get("body")
    return json.loads(body) if body else None


def bare_handler(users: dict[int, dict[str, Any]]) -> Handler:
    """A bare FastAPI + Mangum app with the same two reads, on the environment's loop."""
    from typing import Annotated

    from fastapi import FastAPI, Query
    from mangum import Mangum

    from lambdaloop.runtime import get_loop

    app = FastAPI()

    @app.get("/users/batch", response_model=None)
    async def get_many(user_ids: Annotated[list[int], Query()]) -> dict[str, Any]:
        return {"users": [users[i] for i in user_ids], "missing": []}

    @app.get("/users/{user_id}", response_model=None)
    async def get_one(user_id: int) -> dict[str, Any]:
        return users[user_id]

    get_loop()  # made current first, so Mangum runs on it
    adapter: Handler = Mangum(app, lifespan="off")
    return adapter


# ------------------------------------------------------------------------------------- samplers


def handler_sampler(
    handler: Handler,
    events: Sequence[dict[str, Any]],
    context: Any,
    what: str,
    prepare: Callable[[], None] | None = None,
) -> Sampler:
    """Times ``handler`` on ``events`` in turn; ``prepare`` runs (untimed) before each block,
    followed by :data:`SWITCH_WARMUP` uncounted calls."""
    position = 0

    def call() -> float:
        nonlocal position
        event = events[position % len(events)]
        position += 1
        started = time.perf_counter()
        response = handler(event, context)
        elapsed = time.perf_counter() - started
        if response.get("statusCode") != 200:
            checked(response, 200, f"{what} ({event['rawPath']})")
        return elapsed

    def run(n: int) -> list[float]:
        if prepare is not None:
            prepare()
            for _ in range(SWITCH_WARMUP):
                call()
        return [call() for _ in range(n)]

    return run


def redis_sampler(loop: asyncio.AbstractEventLoop, op: Callable[[int], Awaitable[None]]) -> Sampler:
    """Times ``await op(i)`` inside one running coroutine per block."""

    async def timed(n: int) -> list[float]:
        samples = []
        for i in range(n):
            started = time.perf_counter()
            await op(i)
            samples.append(time.perf_counter() - started)
        return samples

    return lambda n: loop.run_until_complete(timed(n))


def interleave(samplers: dict[str, Sampler], n: int, warmup: int = WARMUP) -> dict[str, list[float]]:
    """An uncounted warm-up, then :data:`BLOCKS` rounds of ``n / BLOCKS`` calls per peer,
    alternating which peer goes first."""
    names = list(samplers)
    for name in names:
        samplers[name](warmup)
    per_block = max(1, n // BLOCKS)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for block in range(BLOCKS):
        for name in names if block % 2 == 0 else names[::-1]:
            samples[name].extend(samplers[name](per_block))
    return samples


# ---------------------------------------------------------------------------------- the bench


@dataclass(frozen=True, slots=True)
class Row:
    path: str
    series: str
    peer_label: str
    peer_us: float
    goal: float | None

    def ratio(self, stats: dict[str, Stats]) -> float:
        return stats[self.series].p50_us / self.peer_us


@dataclass(frozen=True, slots=True)
class Stats:
    n: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        us = [s * 1e6 for s in seconds]
        cuts = statistics.quantiles(us, n=100, method="inclusive")
        return cls(len(us), statistics.median(us), cuts[89], cuts[98], statistics.fmean(us))


def forget_environment() -> None:
    """What ``tests/support.forget_environment`` does: drop the settings, clients and users
    service built from the environment, so the next request builds them from the new one."""
    from api.settings import get_api_settings
    from api.system import health_probes
    from api.users.dependencies import users_service_cache_clear
    from lambdaloop.clients import aclose_clients
    from lambdaloop.runtime import get_loop
    from lambdaloop.settings import reset_settings

    get_loop().run_until_complete(aclose_clients())
    reset_settings()
    get_api_settings.cache_clear()
    health_probes.cache_clear()
    users_service_cache_clear()


def breaker_state() -> str:
    from api.users.dependencies import users_service
    from lambdaloop.runtime import get_loop

    return get_loop().run_until_complete(users_service()).cache.breaker.state


class Bench:
    def __init__(self, stack: LocalStack, args: argparse.Namespace) -> None:
        from api.app import create_app
        from lambdaloop.asgi import asgi_handler
        from lambdaloop.runtime import get_loop

        self.stack = stack
        self.args = args
        self.loop = get_loop()
        self.context = lambda_context()
        self.handler = asgi_handler(create_app())
        self.users = self._create_users()
        ids = sorted(self.users)
        self.one_events = [api_event("GET", f"/users/{i}") for i in ids]
        query = "&".join(f"user_ids={i}" for i in ids)
        self.batch_events = [api_event("GET", "/users/batch", query=query)]
        self.keys = [self._service().cache.key("user", i) for i in ids]
        self.redis: redis.asyncio.Redis = self.loop.run_until_complete(self._peer_client())

    def _service(self) -> Any:
        from api.users.dependencies import users_service

        return self.loop.run_until_complete(users_service())

    async def _peer_client(self) -> redis.asyncio.Redis:
        import redis.asyncio

        return redis.asyncio.Redis.from_url(self.stack.redis_url)

    def _create_users(self) -> dict[int, dict[str, Any]]:
        tag = uuid.uuid4().hex[:8]
        batch = [
            {"name": f"Bench User {n}", "email": f"bench-{tag}-{n}@example.com"}
            for n in range(USERS)
        ]
        body = json.dumps({"users": batch}).encode()
        created = self.handler(api_event("POST", "/users/batch", body=body), self.context)
        users = {u["id"]: u for u in checked(created, 201, "POST /users/batch")["users"]}
        for user_id, user in users.items():  # warm up and check what the cache answers
            got = checked(self.handler(api_event("GET", f"/users/{user_id}"), self.context), 200, "")
            if got != user:
                raise BenchError(f"GET /users/{user_id} answered {got}, created {user}")
        return users

    def _redis_misses(self) -> int:
        stats = self.loop.run_until_complete(self.redis.info("stats"))
        return int(stats["keyspace_misses"])

    # -- (a), (b), (c): Redis up, every read a hit

    def cache_paths(self) -> dict[str, list[float]]:
        n, batch_n = self.args.iterations, self.args.batch_iterations
        bare = bare_handler(self.users)
        keys, redis = self.keys, self.redis

        async def get(i: int) -> None:
            if await redis.get(keys[i % len(keys)]) is None:
                raise BenchError(f"redis GET {keys[i % len(keys)]}: no such key")

        async def mget(_: int) -> None:
            if None in await redis.mget(keys):
                raise BenchError("redis MGET: a key is missing")

        async def gets(_: int) -> None:
            for key in keys:
                if await redis.get(key) is None:
                    raise BenchError(f"redis GET {key}: no such key")

        batch = checked(self.handler(self.batch_events[0], self.context), 200, "GET /users/batch")
        if len(batch["users"]) != USERS or batch["missing"]:
            raise BenchError(f"GET /users/batch: {len(batch['users'])} users, {batch['missing']}")
        misses = self._redis_misses()
        samples = interleave(
            {
                "lambdaloop_get": handler_sampler(
                    self.handler, self.one_events, self.context, "lambdaloop"
                ),
                "bare_get": handler_sampler(bare, self.one_events, self.context, "bare"),
                "redis_get": redis_sampler(self.loop, get),
            },
            n,
        )
        samples |= interleave(
            {
                "lambdaloop_batch": handler_sampler(
                    self.handler, self.batch_events, self.context, "lambdaloop"
                ),
                "bare_batch": handler_sampler(bare, self.batch_events, self.context, "bare"),
                "redis_mget": redis_sampler(self.loop, mget),
            },
            batch_n,
            warmup=WARMUP // 5,
        )
        samples |= interleave(
            {"redis_100_gets": redis_sampler(self.loop, gets), "redis_mget_c": samples_of(mget)}
            if False
            else {
                "redis_100_gets": redis_sampler(self.loop, gets),
                "redis_1_mget": redis_sampler(self.loop, mget),
            },
            batch_n,
            warmup=WARMUP // 5,
        )
        if (missed := self._redis_misses() - misses) != 0:
            raise BenchError(f"{missed} Redis read(s) missed: not every read was a cache hit")
        return samples
