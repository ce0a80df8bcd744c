"""The Users API's cache paths, measured in-process through the Lambda handler, beside their peers.

One run starts the local stack (moto in server mode + a real redis-server + the template's
resources), gives this process the API function's environment, builds the real handler
(``asgi_handler(create_app())``: Mangum, the middleware, the routes, the users service, the
cache) and creates 100 users through it (``POST /users/batch``, which writes the cache through).
Every request is an API Gateway HTTP API (v2) event built by the local emulator's own code,
carrying the claims API Gateway's JWT authorizer puts there (tenant ``bench-tenant``: the users
and their cache keys are that tenant's), and is timed with ``time.perf_counter`` around the
handler call; every answer must be 200.

- (a) ``GET /users/{id}``, a cache hit, against a bare FastAPI + Mangum route returning a user
  dict plus one Redis GET (redis.asyncio, same server): goal p50 <= 1.25 x (bare + GET).
- (b) ``GET /users/batch`` with 100 cached ids, against a bare route returning the 100 dicts
  plus one MGET of the same 100 keys: goal p50 <= 1.3 x (bare + MGET).
- (c) 100 sequential Redis GETs against one MGET of the same 100 keys (shown, no goal).
- (d) ``GET /users/{id}`` while Redis is down (killed) and the circuit breaker is open, against
  the same handler configured without a cache (``LAMBDALOOP_CACHE_ENABLED=false``): both read
  DynamoDB (moto); goal p50 <= 1.2 x no-cache. Redis is restarted afterwards.
- (e) ``GET /users/{id}``, a cache hit, with claims and tenancy (this working tree) against the
  same request without claims through the API function and layer as of commit 00191af, the
  last without tenancy (``--baseline REV``): goal p50 <= 1.05 x (issue 11). ``git archive``
  extracts that commit's ``functions/api`` and ``shared`` into a temporary folder, and both
  trees are byte-compiled. Each side runs in a child process of its own, the same harness for
  both (``users.py --child CODE [--tenant T]``: that checkout's function and layer alone on
  ``sys.path``, beside the venv's site-packages and the emulator's event builder) with this
  process's environment (the API function's, on the same moto and redis-server); each child
  creates its own 100 users through its own handler (this tree's in tenant ``bench-e``), then
  times its handler calls itself, a block at a time when this process asks over a pipe.

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
stdout (JSON logs, EMF metrics) is captured, in the children too, and shown only when the run
fails.

Run it with ``.venv/bin/python bench/users.py``, from any directory (``--iterations N`` for the
single-user calls of (a), ``--batch-iterations N`` for the 100-user ones of (b) and (c),
``--down-iterations N`` for (d), ``--tenancy-iterations N`` for (e), ``--json`` to print the
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
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from benchkit import (
    API_CODE_URI,
    ROOT,
    BenchError,
    api_event,
    checked,
    import_paths,
    lambda_context,
    with_handler_output_captured,
)

if TYPE_CHECKING:
    import asyncio

    import redis.asyncio

    from lambdaloop_local.stack import LocalStack


#: lambdaloop's p50 over its peer's, at most.
GOAL_HIT = 1.25
GOAL_BATCH = 1.3
GOAL_DOWN = 1.2
GOAL_TENANCY = 1.05

#: The last commit without claims and tenancy (issue 11): (e) measures its API function.
BASELINE = "00191af"

USERS = 100
#: Users per ``POST /users/batch`` when creating them: moto deep-copies the whole table for
#: each operation of a transaction, so 100 users at once on a table that already holds the
#: other sides' users can outlast the API's DynamoDB read timeout (3 s).
CREATE_BATCH = 10
#: The caller of every request (the ``sub`` claim API Gateway's JWT authorizer verified).
TENANT = "bench-tenant"
#: The tenant of this tree's child in (e): its own users, ids from 1 as in the baseline's.
CHILD_TENANT = "bench-e"
BLOCKS = 10
#: Uncounted calls before the blocks, and after each configuration switch in (d).
WARMUP = 50
SWITCH_WARMUP = 20

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
#: Runs ``n`` timed calls and returns their durations in seconds.
Sampler = Callable[[int], list[float]]


# ------------------------------------------------------------------------------ events, handlers


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


def create_users(handler: Handler, context: Any, tenant: str | None) -> dict[int, dict[str, Any]]:
    """:data:`USERS` new users of ``tenant``, created through ``handler`` (which writes them
    to the cache), each read back once: a warm-up, and a check of what the cache answers."""
    tag = uuid.uuid4().hex[:8]
    users: dict[int, dict[str, Any]] = {}
    for start in range(0, USERS, CREATE_BATCH):
        batch = [
            {"name": f"Bench User {n}", "email": f"bench-{tag}-{n}@example.com"}
            for n in range(start, min(start + CREATE_BATCH, USERS))
        ]
        body = json.dumps({"users": batch}).encode()
        created = handler(api_event("POST", "/users/batch", tenant, body=body), context)
        users |= {u["id"]: u for u in checked(created, 201, "POST /users/batch")["users"]}
    for user_id, user in users.items():
        response = handler(api_event("GET", f"/users/{user_id}", tenant), context)
        got = checked(response, 200, f"GET /users/{user_id}")
        if got != user:
            raise BenchError(f"GET /users/{user_id} answered {got}, created {user}")
    return users


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


# ----------------------------------------------------------- (e): a tree's handler in a child


@contextlib.contextmanager
def baseline_tree(revision: str) -> Iterator[Path]:
    """The API function, the layer and the template as of ``revision`` (``git archive``),
    extracted into a temporary folder laid out as the repository is."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "functions/api", "shared", "template.yaml"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise BenchError(f"git archive {revision}: {archive.stderr.decode().strip()}")
    with tempfile.TemporaryDirectory(prefix="lambdaloop-baseline-") as folder:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(folder, filter="data")
        yield Path(folder)


def compile_bytecode(*trees: Path) -> None:
    """Byte-compile each tree's function and layer, so no child compiles what it imports (this
    step writes the bytecode even where the environment says PYTHONDONTWRITEBYTECODE)."""
    folders = [str(tree / part) for tree in trees for part in ("functions/api", "shared")]
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *folders],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"compileall {' '.join(folders)}:\n{done.stdout}{done.stderr}")


class HandlerChild:
    """The API handler of the tree at ``code`` in a child process (``users.py --child``), as a
    :data:`Sampler`: each call asks the child over a pipe for a block of ``n`` cache hits,
    which it times itself, and returns their durations."""

    def __init__(
        self, code: Path, tenant: str | None, what: str, environment: dict[str, str]
    ) -> None:
        """``environment``: the API function's variables, as ``code``'s own template gives
        them (a tree of another revision may read others)."""
        self.what = what
        # The child's stderr, shown if it fails; closed by close().
        self.log: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115
        command = [sys.executable, str(Path(__file__).resolve()), "--child", str(code)]
        if tenant is not None:
            command += ["--tenant", tenant]
        env = {**os.environ, **environment, "LAMBDA_TASK_ROOT": str(code / "functions" / "api")}
        env.pop("PYTHONPATH", None)
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            text=True,
        )
        if self.process.stdin is None or self.process.stdout is None:
            raise BenchError(f"{what}: the child has no pipes")
        self.commands, self.replies = self.process.stdin, self.process.stdout
        try:
            self._reply()  # ready: the handler built, its users created and read back
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> HandlerChild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, n: int) -> list[float]:
        self.commands.write(f"run {n}\n")
        self.commands.flush()
        samples: list[float] = self._reply()["samples"]
        return samples

    def _reply(self) -> dict[str, Any]:
        line = self.replies.readline()
        if not line:
            self.process.wait(10)
            raise BenchError(
                f"{self.what}: the child exited ({self.process.returncode}); "
                f"its stderr:\n{self._stderr()}"
            )
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise BenchError(
                f"{self.what}: {reply['error']}\nits handler's last output:\n{reply['output']}"
                f"\nits stderr:\n{self._stderr()}"
            )
        return reply

    def _stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def close(self) -> None:
        self.commands.close()  # the child ends when its stdin does
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.replies.close()
        self.log.close()


def child_sys_path(code: Path) -> None:
    """Import the API function and the layer from ``code`` alone: its folders first, the
    project's copies dropped (the editable install's .pth puts shared/ on the path). The
    venv's site-packages and the emulator (``infra``: events, contexts) stay."""
    project = {ROOT / "shared", ROOT / "functions" / "api"}
    kept = [path for path in sys.path if Path(path or ".").resolve() not in project]
    sys.path[:] = [
        str(code / "functions" / "api"),
        str(code / "shared"),
        str(ROOT / "infra"),
        *kept,
    ]


def check_imported_from(code: Path) -> None:
    import api
    import lambdaloop

    for module in (api, lambdaloop):
        origin = Path(module.__file__ or "?").resolve()
        if not origin.is_relative_to(code.resolve()):
            raise BenchError(f"{module.__name__} was imported from {origin}, not from {code}")


def child_sampler(code: Path, tenant: str | None) -> Sampler:
    """The tree's handler as (a) builds it, with its own users (of ``tenant``, or without
    claims), timed on ``GET /users/{id}`` cache hits."""
    from api.app import create_app
    from lambdaloop.asgi import asgi_handler

    check_imported_from(code)
    handler = asgi_handler(create_app())
    context = lambda_context("ApiFunction")
    users = create_users(handler, context, tenant)
    events = [api_event("GET", f"/users/{i}", tenant) for i in sorted(users)]
    return handler_sampler(handler, events, context, what=f"GET /users/{{id}} ({code})")


def child_main(code: Path, tenant: str | None) -> int:
    """The child side of (e): build the handler and create the users, answer ``ready``, then
    time a block for each ``run N`` line on stdin, answering one JSON line each (``samples``,
    or ``error`` with the handler's last output), until stdin closes."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever writes to fd 1 goes to stderr, not into the replies
    child_sys_path(code)
    quiet_logs()
    captured = io.StringIO()  # the handler's JSON logs and EMF metrics, as in the parent

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")

    try:
        with contextlib.redirect_stdout(captured):
            sample = child_sampler(code, tenant)
            reply({"ready": True})
            for line in sys.stdin:
                command, _, n = line.partition(" ")
                if command != "run":
                    raise BenchError(f"unknown command {line!r}")
                reply({"samples": sample(int(n))})
    except Exception as exc:
        reply({"error": f"{type(exc).__name__}: {exc}", "output": captured.getvalue()[-4000:]})
        return 1
    return 0


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
        self.users = create_users(self.handler, self.context, TENANT)
        ids = sorted(self.users)
        self.one_events = [api_event("GET", f"/users/{i}", TENANT) for i in ids]
        query = "&".join(f"user_ids={i}" for i in ids)
        self.batch_events = [api_event("GET", "/users/batch", TENANT, query=query)]
        self.key_of = {i: self._service().cache.key("user", TENANT, i) for i in ids}
        self.keys = list(self.key_of.values())
        self.redis: redis.asyncio.Redis = self.loop.run_until_complete(self._peer_client())

    def _service(self) -> Any:
        from api.users.dependencies import get_users_service

        return get_users_service()

    async def _peer_client(self) -> redis.asyncio.Redis:
        import redis.asyncio

        return redis.asyncio.Redis.from_url(self.stack.redis_url)

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

    # -- (e): claims and tenancy, against the API function without them, each in a child

    def tenancy_cost(self) -> dict[str, list[float]]:
        baseline = self.args.baseline
        with baseline_tree(baseline) as old:
            compile_bytecode(ROOT, old)
            with (
                HandlerChild(ROOT, CHILD_TENANT, "this tree", self._api_environment(ROOT)) as ours,
                HandlerChild(old, None, baseline, self._api_environment(old)) as theirs,
            ):
                misses = self._redis_misses()
                samples = interleave(
                    {"tenancy": ours, "no_tenancy": theirs}, self.args.tenancy_iterations
                )
        if (missed := self._redis_misses() - misses) != 0:
            raise BenchError(f"(e): {missed} Redis read(s) missed: not every read was a hit")
        return samples

    def _api_environment(self, code: Path) -> dict[str, str]:
        """The API function's variables on this stack, as ``code``'s template declares them
        (its resources have the names this tree's template gives them)."""
        from lambdaloop_local.stack import LocalStack, StackConfig

        config = StackConfig(
            template_path=code / "template.yaml",
            aws_endpoint=self.stack.aws_endpoint,
            redis_url=self.stack.redis_url,
        )
        with LocalStack(config) as attached:
            return attached.function_environment("ApiFunction")

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
        Row(
            "(e) GET /users/{id}, hit, tenancy",
            "tenancy",
            "no-tenancy",
            p50("no_tenancy"),
            GOAL_TENANCY,
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
        f"{args.batch_iterations} batch, {args.down_iterations} Redis down, "
        f"{args.tenancy_iterations} tenancy)",
        f"{'path':<36}{'p50 us':>9}{'p99 us':>9}   {'peer p50 us':<20}{'ratio':>7}   goal",
    ]
    for row in table_rows(stats):
        ours, ratio = stats[row.series], row.ratio(stats)
        peer = f"{row.peer_label} {row.peer_us:.1f}"
        lines.append(
            f"{row.path:<36}{ours.p50_us:>9.1f}{ours.p99_us:>9.1f}   {peer:<20}"
            f"{ratio:>6.2f}x   {goal_text(ratio, row.goal)}"
        )
    lines.extend(footnotes(stats, args.baseline))
    return lines


def footnotes(stats: dict[str, Stats], baseline: str) -> list[str]:
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
        f"  (e) {baseline}, no claims {us('no_tenancy')}; each side in a child process of one",
        f"  harness (this tree's in tenant {CHILD_TENANT}), timed there, on the same moto + Redis",
        "a bare route that awaits the read itself (the peer's redis.asyncio client, from_json):",
        f"  (a) {floor('bare_inline_get', ('bare_get', 'redis_get'), 'lambdaloop_get')}",
        f"  (b) {floor('bare_inline_batch', ('bare_batch', 'redis_mget'), 'lambdaloop_batch')}",
        "every answer 200; (a)-(c) and (e) with 0 Redis misses; (d) with the breaker open",
        "throughout and DynamoDB on moto (a thread of this process). Redis peers: redis.asyncio",
        f"awaited on the same loop. {BLOCKS} interleaved blocks per comparison, warm-up discarded.",
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
        "tenancy_iterations": args.tenancy_iterations,
        "baseline": args.baseline,
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
            samples |= bench.tenancy_cost()
            samples |= bench.redis_down()  # last: it restarts Redis, empty
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
    parser.add_argument(
        "--tenancy-iterations",
        type=int,
        default=4000,
        help="timed cache hits per side in (e) (4000)",
    )
    parser.add_argument(
        "--baseline",
        default=BASELINE,
        help=f"the commit without tenancy whose API function (e) runs ({BASELINE})",
    )
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    # (e)'s children: users.py --child CODE [--tenant T] serves the handler of the tree CODE.
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tenant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("iterations", "batch_iterations", "down_iterations", "tenancy_iterations"):
        if getattr(args, name) < BLOCKS * 10:
            parser.error(f"--{name.replace('_', '-')} must be at least {BLOCKS * 10}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child_main(args.child, args.tenant)
    import_paths(API_CODE_URI)
    quiet_logs()
    measured = with_handler_output_captured("users", lambda: measure(args))
    if measured is None:
        return 1
    samples, redis_kind = measured
    stats = {name: Stats.of(values) for name, values in samples.items()}
    print("\n".join(render_table(stats, args, redis_kind)))
    if args.json:
        print(json.dumps(raw_numbers(stats, args, redis_kind), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
