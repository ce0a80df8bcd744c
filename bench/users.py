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

Beside (a) and (b), a bare route that awaits the same GET or MGET itself (and parses the JSON)
is shown too: the least a cache-backed route costs. It comes out above the sum of its parts
(bare route + read, timed apart), which the goals are set against.

Everything runs on the execution environment's one loop (``lambdaloop.runtime.get_loop()``),
the peers included. The Redis peers are awaited inside a running coroutine, so they cost only
the round trip (the bare route already pays for entering the loop). Peers are interleaved in
blocks (10 rounds, alternating who goes first) after an uncounted warm-up, so machine noise
hits them alike. (d) switches configuration between blocks the way the tests do (settings,
clients and the users service are forgotten, the environment is changed, the breaker is opened
again by real failing requests) and discards a warm-up after each switch. The handler's own
stdout (JSON logs, EMF metrics) is captured and shown only when the run fails.

Run it with ``.venv/bin/python bench/users.py``, from any directory (``--iterations N`` for the
single-user calls of (a), ``--batch-iterations N`` for the 100-user ones of (b) and (c),
``--down-iterations N`` for (d), ``--json`` to print the numbers as JSON too).
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from benchkit import ROOT, import_paths, lambda_context

if TYPE_CHECKING:
    import asyncio

    import redis.asyncio

    from lambdaloop_local.stack import LocalStack

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


def checked(response: dict[str, Any], expected: int, what: str) -> Any:
    """The decoded JSON body; BenchError when the status is not ``expected``."""
    if response.get("statusCode") != expected:
        raise BenchError(
            f"{what} answered {response.get('statusCode')}, not {expected}: "
            f"{str(response.get('body'))[:500]}"
        )
    body = response.get("body")
    return json.loads(body) if body else None


def bare_handler(
    users: dict[int, dict[str, Any]],
    redis: redis.asyncio.Redis | None = None,
    keys: dict[int, str] | None = None,
) -> Handler:
    """A bare FastAPI + Mangum app with the same two reads, on the environment's loop.

    Given a Redis client (and the users' keys), its routes await the GET or MGET themselves
    and parse the JSON: the least a cache-backed route costs. Else they answer from memory.
    """
    from fastapi import FastAPI, Query
    from mangum import Mangum
    from pydantic_core import from_json

    from lambdaloop.runtime import get_loop

    app = FastAPI()
    key = (keys or {}).__getitem__

    def parse(raw: bytes | str | None) -> Any:
        if raw is None:
            raise BenchError("a cached user is missing")  # a 500, reported by the sampler
        return from_json(raw)

    @app.get("/users/batch", response_model=None)
    async def get_many(user_ids: list[int] = Query()) -> dict[str, Any]:  # noqa: B008
        # (Annotated[..., Query()] would not resolve here: the annotations are strings and
        # FastAPI looks their names up in the module.)
        if redis is None:
            return {"users": [users[i] for i in user_ids], "missing": []}
        raws = await redis.mget([key(i) for i in user_ids])
        return {"users": [parse(raw) for raw in raws], "missing": []}

    @app.get("/users/{user_id}", response_model=None)
    async def get_one(user_id: int) -> dict[str, Any]:
        if redis is None:
            return users[user_id]
        user: dict[str, Any] = parse(await redis.get(key(user_id)))
        return user

    get_loop()  # made current first, so Mangum runs on it
    adapter: Handler = Mangum(app, lifespan="off")
    return adapter


# ------------------------------------------------------------------------------------- samplers


def handler_sampler(
    handler: Handler,
    events: Sequence[dict[str, Any]],
    context: Any,
    *,
    what: str,
    prepare: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
) -> Sampler:
    """Times ``handler`` on ``events`` in turn. ``prepare`` runs (untimed) before each block,
    followed by :data:`SWITCH_WARMUP` uncounted calls; ``after`` checks the state after it."""
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
        samples = [call() for _ in range(n)]
        if after is not None:
            after()
        return samples

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


def interleave(
    samplers: dict[str, Sampler], n: int, warmup: int = WARMUP
) -> dict[str, list[float]]:
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


class Bench:
    def __init__(self, stack: LocalStack, args: argparse.Namespace) -> None:
        from api.app import create_app
        from lambdaloop.asgi import asgi_handler
        from lambdaloop.runtime import get_loop

        self.stack = stack
        self.args = args
        self.loop = get_loop()
        self.context = lambda_context("ApiFunction")
        self.handler = asgi_handler(create_app())
        self.users = self._create_users()
        ids = sorted(self.users)
        self.one_events = [api_event("GET", f"/users/{i}") for i in ids]
        query = "&".join(f"user_ids={i}" for i in ids)
        self.batch_events = [api_event("GET", "/users/batch", query=query)]
        self.key_of = {i: self._service().cache.key("user", i) for i in ids}
        self.keys = list(self.key_of.values())
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
            response = self.handler(api_event("GET", f"/users/{user_id}"), self.context)
            got = checked(response, 200, f"GET /users/{user_id}")
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
        inline = bare_handler(self.users, self.redis, self.key_of)
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
                    self.handler, self.one_events, self.context, what="lambdaloop"
                ),
                "bare_get": handler_sampler(bare, self.one_events, self.context, what="bare"),
                "bare_inline_get": handler_sampler(
                    inline, self.one_events, self.context, what="bare + GET inline"
                ),
                "redis_get": redis_sampler(self.loop, get),
            },
            n,
        )
        samples |= interleave(
            {
                "lambdaloop_batch": handler_sampler(
                    self.handler, self.batch_events, self.context, what="lambdaloop"
                ),
                "bare_batch": handler_sampler(bare, self.batch_events, self.context, what="bare"),
                "bare_inline_batch": handler_sampler(
                    inline, self.batch_events, self.context, what="bare + MGET inline"
                ),
                "redis_mget": redis_sampler(self.loop, mget),
            },
            batch_n,
            warmup=WARMUP // 5,
        )
        samples |= interleave(
            {
                "redis_100_gets": redis_sampler(self.loop, gets),
                "redis_1_mget": redis_sampler(self.loop, mget),
            },
            batch_n,
            warmup=WARMUP // 5,
        )
        if (missed := self._redis_misses() - misses) != 0:
            raise BenchError(f"{missed} Redis read(s) missed: not every read was a cache hit")
        return samples

    # -- (d): Redis down, breaker open, against no cache at all

    def redis_down(self) -> dict[str, list[float]]:
        from api.app import create_app
        from lambdaloop.asgi import asgi_handler

        server = self.stack.redis
        if server is None or not server.is_real:
            raise BenchError("(d) needs a real redis-server to kill")
        # Opened, the breaker stays open for the whole measurement (no half-open probes).
        os.environ["LAMBDALOOP_BREAKER_RESET_S"] = "3600"
        server.kill()
        try:
            self._no_cache()
            no_cache_handler = asgi_handler(create_app())
            return interleave(
                {
                    "lambdaloop_down": handler_sampler(
                        self.handler,
                        self.one_events,
                        self.context,
                        what="lambdaloop, Redis down",
                        prepare=self._open_breaker,
                        after=self._check_open,
                    ),
                    "no_cache": handler_sampler(
                        no_cache_handler,
                        self.one_events,
                        self.context,
                        what="no cache",
                        prepare=self._no_cache,
                        after=self._check_off,
                    ),
                },
                self.args.down_iterations,
                warmup=0,  # each block warms up after its switch
            )
        finally:
            server.restart()
            for name in ("LAMBDALOOP_CACHE_ENABLED", "LAMBDALOOP_BREAKER_RESET_S"):
                os.environ.pop(name, None)
            forget_environment()

    @staticmethod
    def _configure(*, cache_enabled: bool) -> None:
        forget_environment()
        os.environ["LAMBDALOOP_CACHE_ENABLED"] = "true" if cache_enabled else "false"

    def _open_breaker(self) -> None:
        self._configure(cache_enabled=True)
        for _ in range(10):  # each fails fast (refused) and is served from DynamoDB
            response = self.handler(self.one_events[0], self.context)
            checked(response, 200, "GET /users/{id} with Redis down")
            if self._service().cache.breaker.state == "open":
                return
        raise BenchError(f"the breaker did not open: {self._service().cache.breaker.state}")

    def _no_cache(self) -> None:
        self._configure(cache_enabled=False)

    def _check_open(self) -> None:
        if (state := self._service().cache.breaker.state) != "open":
            raise BenchError(f"the breaker left 'open' during (d): it is {state!r}")

    def _check_off(self) -> None:
        if self._service().cache.enabled:
            raise BenchError("the no-cache configuration has its cache enabled")

    def close(self) -> None:
        self.loop.run_until_complete(self.redis.aclose())


# ------------------------------------------------------------------------------------- report


def table_rows(stats: dict[str, Stats]) -> list[Row]:
    def p50(name: str) -> float:
        return stats[name].p50_us

    return [
        Row(
            "(a) GET /users/{id}, cache hit",
            "lambdaloop_get",
            "bare+GET",
            p50("bare_get") + p50("redis_get"),
            GOAL_HIT,
        ),
        Row(
            "(b) GET /users/batch, 100 cached",
            "lambdaloop_batch",
            "bare+MGET",
            p50("bare_batch") + p50("redis_mget"),
            GOAL_BATCH,
        ),
        Row("(c) 100 x GET vs 1 x MGET(100)", "redis_100_gets", "MGET", p50("redis_1_mget"), None),
        Row(
            "(d) GET /users/{id}, Redis down",
            "lambdaloop_down",
            "no-cache",
            p50("no_cache"),
            GOAL_DOWN,
        ),
    ]


def goal_text(ratio: float, goal: float | None) -> str:
    if goal is None:
        return "(shown)"
    return f"<={goal}x {'met' if ratio <= goal else 'NOT met'}"


def render_table(stats: dict[str, Stats], args: argparse.Namespace, redis_kind: str) -> list[str]:
    lines = [
        f"users API cache paths (in-process Lambda handler, moto + {redis_kind}; "
        f"python {platform.python_version()}; N={args.iterations} single, "
        f"{args.batch_iterations} batch, {args.down_iterations} Redis down)",
        f"{'path':<36}{'p50 us':>9}{'p99 us':>9}   {'peer p50 us':<20}{'ratio':>7}   goal",
    ]
    for row in table_rows(stats):
        ours, ratio = stats[row.series], row.ratio(stats)
        peer = f"{row.peer_label} {row.peer_us:.1f}"
        lines.append(
            f"{row.path:<36}{ours.p50_us:>9.1f}{ours.p99_us:>9.1f}   {peer:<20}"
            f"{ratio:>6.2f}x   {goal_text(ratio, row.goal)}"
        )
    lines.extend(footnotes(stats))
    return lines


def footnotes(stats: dict[str, Stats]) -> list[str]:
    def us(name: str) -> str:
        return f"{stats[name].p50_us:.1f}/{stats[name].p99_us:.1f}"

    def floor(inline: str, parts: tuple[str, str], ours: str) -> str:
        inline_us = stats[inline].p50_us
        summed = stats[parts[0]].p50_us + stats[parts[1]].p50_us
        return (
            f"{inline_us:.1f} us = {inline_us / summed:.2f}x the sum; "
            f"lambdaloop {stats[ours].p50_us / inline_us:.2f}x it"
        )

    return [
        f"peers p50/p99 us: bare GET /users/{{id}} {us('bare_get')}, redis GET {us('redis_get')};",
        f"  bare GET /users/batch {us('bare_batch')}, MGET(100) {us('redis_mget')};",
        f"  no-cache GET /users/{{id}} {us('no_cache')}",
        "a bare route that awaits the read itself (the peer's redis.asyncio client, from_json):",
        f"  (a) {floor('bare_inline_get', ('bare_get', 'redis_get'), 'lambdaloop_get')}",
        f"  (b) {floor('bare_inline_batch', ('bare_batch', 'redis_mget'), 'lambdaloop_batch')}",
        "every answer 200; (a)-(c) with 0 Redis misses; (d) with the breaker open throughout and",
        "DynamoDB on moto (a thread of this process). Redis peers: redis.asyncio awaited on the",
        f"same loop. {BLOCKS} interleaved blocks per comparison, warm-up discarded.",
    ]


def raw_numbers(
    stats: dict[str, Stats], args: argparse.Namespace, redis_kind: str
) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "redis": redis_kind,
        "iterations": args.iterations,
        "batch_iterations": args.batch_iterations,
        "down_iterations": args.down_iterations,
        "series": {
            name: {
                "n": s.n,
                "p50_us": round(s.p50_us, 2),
                "p90_us": round(s.p90_us, 2),
                "p99_us": round(s.p99_us, 2),
                "mean_us": round(s.mean_us, 2),
            }
            for name, s in stats.items()
        },
        "rows": [
            {
                "path": row.path,
                "p50_us": round(stats[row.series].p50_us, 2),
                "p99_us": round(stats[row.series].p99_us, 2),
                "peer": row.peer_label,
                "peer_p50_us": round(row.peer_us, 2),
                "ratio": round(row.ratio(stats), 3),
                "goal": row.goal,
                "met": None if row.goal is None else row.ratio(stats) <= row.goal,
            }
            for row in table_rows(stats)
        ],
    }


# --------------------------------------------------------------------------------------- main


def quiet_logs() -> None:
    """No INFO lines from the handler (Powertools reads this when it builds its Logger) nor
    from moto's server, so the table stays readable."""
    os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
    for name in ("werkzeug", "moto", "botocore", "lambdaloop_local"):
        logging.getLogger(name).setLevel(logging.WARNING)


def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], str]:
    from lambdaloop_local.stack import LocalStack, StackConfig

    stack = LocalStack(StackConfig(aws_port=0, redis_port=0))
    stack.start()
    try:
        os.environ.update(stack.function_environment("ApiFunction"))
        forget_environment()
        bench = Bench(stack, args)
        try:
            samples = bench.cache_paths()
            samples |= bench.redis_down()
        finally:
            bench.close()
        return samples, stack.redis_kind
    finally:
        stack.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--iterations", type=int, default=2000, help="timed single-user calls per peer (2000)"
    )
    parser.add_argument(
        "--batch-iterations", type=int, default=500, help="timed 100-user calls per peer (500)"
    )
    parser.add_argument(
        "--down-iterations",
        type=int,
        default=1000,
        help="timed calls per peer with Redis down (1000; each reads DynamoDB)",
    )
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = parser.parse_args(argv)
    for name in ("iterations", "batch_iterations", "down_iterations"):
        if getattr(args, name) < BLOCKS * 10:
            parser.error(f"--{name.replace('_', '-')} must be at least {BLOCKS * 10}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import_paths(API_CODE_URI)
    quiet_logs()
    captured = io.StringIO()  # the handler's JSON logs and EMF metrics
    try:
        with contextlib.redirect_stdout(captured):
            samples, redis_kind = measure(args)
    except BenchError as exc:
        print(
            f"users: {exc}\nthe handler's last output:\n{captured.getvalue()[-4000:]}",
            file=sys.stderr,
        )
        return 1
    except BaseException:
        print(f"the handler's last output:\n{captured.getvalue()[-4000:]}", file=sys.stderr)
        raise
    stats = {name: Stats.of(values) for name, values in samples.items()}
    print("\n".join(render_table(stats, args, redis_kind)))
    if args.json:
        print(json.dumps(raw_numbers(stats, args, redis_kind), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
