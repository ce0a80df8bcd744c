"""Helpers shared by the test folders (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from lambdaloop_local.apigw import HttpRoute, build_event
from lambdaloop_local.context import LocalContext
from lambdaloop_local.functions import LocalFunction
from lambdaloop_local.template import FunctionSpec

if TYPE_CHECKING:
    from aiohttp import web

    from api.settings import ApiSettings
    from lambdaloop.jobs import JobStore
    from lambdaloop_local.stack import LocalStack

T = TypeVar("T")

HAS_REDIS_SERVER = shutil.which("redis-server") is not None
requires_redis_server: pytest.MarkDecorator = pytest.mark.skipif(
    not HAS_REDIS_SERVER, reason="needs the redis-server binary (.ci/run installs it)"
)


def lambda_context(timeout_s: float = 10.0, name: str = "test-function") -> LocalContext:
    """A Lambda context whose deadline is ``timeout_s`` from now."""
    return LocalContext(
        function_name=name,
        memory_limit_in_mb=1024,
        aws_request_id=str(uuid.uuid4()),
        deadline_ms=int(time.time() * 1000 + timeout_s * 1000),
    )


def http_event(
    method: str = "GET",
    path: str = "/",
    *,
    query: str = "",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, built by the local emulator's own code."""
    route = HttpRoute.parse("ANY", "/{proxy+}", "ApiFunction")
    return build_event(
        route,
        {"proxy": path.lstrip("/")} if path != "/" else {},
        method=method,
        path=path,
        raw_query=query,
        headers={"host": "api.test", "user-agent": "pytest", **(headers or {})},
        body=body,
        source_ip="127.0.0.1",
    )


class LoopbackHttpServer:
    """A real aiohttp server on 127.0.0.1, on its own loop in a thread (the code under test
    runs on the runtime's loop, which only turns during an invocation).

    ``routes`` adds the handlers to the app's router (by default ``GET /hello``, counted in
    ``requests``). A handler that must hang until the test ends awaits ``closing``, which
    is set before the server shuts down.
    """

    def __init__(self, routes: Callable[[web.UrlDispatcher], object] | None = None) -> None:
        import asyncio
        import threading

        self._routes = routes
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.requests = 0
        self.port = 0

    def __enter__(self) -> LoopbackHttpServer:
        import asyncio

        from aiohttp import web

        async def hello(request: web.Request) -> web.Response:
            self.requests += 1
            return web.json_response({"hello": request.query.get("name", "world")})

        async def start() -> web.AppRunner:
            self.closing = asyncio.Event()
            app = web.Application()
            if self._routes is None:
                app.router.add_get("/hello", hello)
            else:
                self._routes(app.router)
            runner = web.AppRunner(app, shutdown_timeout=0.1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            return runner

        self._thread.start()
        self._runner = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        import asyncio

        self._loop.call_soon_threadsafe(self.closing.set)
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ApiResponse:
    def __init__(self, raw: dict[str, Any]) -> None:
        import json

        self.raw = raw
        self.status: int = raw["statusCode"]
        self.headers: dict[str, str] = raw.get("headers") or {}
        self.text: str = raw.get("body") or ""
        self.json: Any = json.loads(self.text) if self.text else None


#: The tenant (``sub``) of requests that name none.
TENANT = "tenant-a"


def with_claims(event: dict[str, Any], tenant: str) -> dict[str, Any]:
    """``event`` as API Gateway's JWT authorizer passes it on once it verified a token of
    ``tenant`` (the claims' shape of a payload 2.0 event)."""
    event["requestContext"]["authorizer"] = {
        "jwt": {
            "claims": {"sub": tenant, "iss": "https://issuer.test/", "scope": "all"},
            "scopes": None,
        }
    }
    return event


class InProcessApi:
    """Calls a Lambda handler with API Gateway HTTP API events, as the gateway would: with
    the claims of ``tenant`` (:data:`TENANT` unless a request names another; None sends
    none, as a route without an authorizer would)."""

    def __init__(self, handler: Any, timeout_s: float = 10.0) -> None:
        self.handler = handler
        self.timeout_s = timeout_s

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        body: bytes | None = None,
        query: str = "",
        headers: dict[str, str] | None = None,
        tenant: str | None = TENANT,
    ) -> ApiResponse:
        import json as jsonlib

        all_headers = dict(headers or {})
        if json is not None:
            body = jsonlib.dumps(json).encode()
            all_headers.setdefault("content-type", "application/json")
        event = http_event(method, path, query=query, headers=all_headers, body=body or b"")
        if tenant is not None:
            with_claims(event, tenant)
        return ApiResponse(self.handler(event, lambda_context(self.timeout_s)))


#: Production's Redis timeouts (0.1 s per call, 0.25 s to connect) are tight for a shared CI
#: machine: a stalled test process must not look like a Redis outage in tests that count
#: calls (outages are tested by killing Redis).
CI_REDIS_TIMEOUTS = {
    "LAMBDALOOP_REDIS_TIMEOUT_S": "1.0",
    "LAMBDALOOP_REDIS_CONNECT_TIMEOUT_S": "2.0",
    "LAMBDALOOP_REDIS_POOL_TIMEOUT_S": "2.0",
}
#: moto copies a table for each item of a transaction: on a loaded machine a 50-user
#: transaction takes seconds, and production's 3 s read timeout would make the suite's load
#: look like a DynamoDB outage (503). Outages are tested with servers that are down.
CI_AWS_TIMEOUTS = {"LAMBDALOOP_AWS_READ_TIMEOUT_S": "20"}
#: The in-process invocations' timeout. Their calls get 60 % of it (the request budget):
#: a 100-user batch (two transactions, and their undo when one fails) took 30 s on a
#: machine loaded with two busy loops and a second suite, so they get 90 s.
CI_API_TIMEOUT_S = 90.0


@contextlib.contextmanager
def in_process_api(
    stack: LocalStack, env_vars: dict[str, str] | None = None
) -> Iterator[InProcessApi]:
    """The API function's handler in this process, with the function's environment on
    ``stack`` (and :data:`CI_REDIS_TIMEOUTS` and :data:`CI_AWS_TIMEOUTS`, and ``env_vars``
    over them)."""
    from api.app import create_app
    from lambdaloop.asgi import asgi_handler

    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            **stack.function_environment("ApiFunction"),
            **CI_REDIS_TIMEOUTS,
            **CI_AWS_TIMEOUTS,
            # No consumer runs in this process, so the jobs the suite queues never end: the
            # per-tenant limit would fill as tests are added (test_tenancy sets its own).
            "JOBS_IN_FLIGHT_LIMIT": "1000",
            **(env_vars or {}),
        }.items():
            env.setenv(name, value)
        forget_environment()
        try:
            yield InProcessApi(asgi_handler(create_app()), timeout_s=CI_API_TIMEOUT_S)
        finally:
            forget_environment()


def forget_environment() -> None:
    """Drop what the API and the layer read from the environment and built from it (settings,
    clients, the users service), so a test can point them at other endpoints."""
    from api.jobs.dependencies import jobs_service_cache_clear
    from api.notifications.dependencies import notifications_service_cache_clear
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
    notifications_service_cache_clear()
    jobs_service_cache_clear()


def function_in_folder(
    code: Path, handler: str, *, timeout: int = 3, environment: dict[str, str] | None = None
) -> LocalFunction:
    """A LocalFunction for a handler module written by a test into the folder ``code``."""
    spec = FunctionSpec(
        logical_id="TestFunction",
        code_uri=code,
        handler=handler,
        runtime="python3.13",
        timeout=timeout,
        memory_size=256,
        environment={},
        layers=[],
        events={},
        architectures=["arm64"],
        properties={},
    )
    return LocalFunction(spec, dict(environment or {}), ())


def api_settings(**overrides: str) -> ApiSettings:
    """The API's settings for an app no request of which reaches AWS (unit tests): names for
    the tables and queue the template would give, and ``overrides`` (variables) over them."""
    from api.settings import ApiSettings

    return ApiSettings.from_env(
        {
            "USERS_TABLE": "users",
            "NOTIFICATIONS_TABLE": "notifications",
            "NOTIFY_QUEUE_URL": "http://sqs.local/queue",
            "JOBS_TABLE": "jobs",
            "IDEMPOTENCY_TABLE": "idempotency",
            **overrides,
        }
    )


def handlers_folder(root: Path, handlers: str) -> Path:
    """A function's code folder under ``root``, with ``handlers`` as its handlers.py."""
    folder = root / "code"
    folder.mkdir()
    (folder / "handlers.py").write_text(handlers)
    return folder


def logging_function(code: Path, log_dir: Path, handler: str, timeout: int) -> LocalFunction:
    """``handlers.<handler>`` of ``code``, told where to write what it saw (``LOG_DIR``)."""
    return function_in_folder(
        code, f"handlers.{handler}", timeout=timeout, environment={"LOG_DIR": str(log_dir)}
    )


def job_store(stack: LocalStack) -> JobStore:
    """The stack's jobs table, as the functions reach it."""
    from lambdaloop.jobs import JobStore
    from lambdaloop.store import Table

    return JobStore(Table(stack.resources.refs["JobsTable"], client=stack.aws_client("dynamodb")))


def run(work: Awaitable[T]) -> T:
    """Await ``work`` on the layer's loop (the one every invocation runs on)."""
    from lambdaloop.runtime import get_loop

    async def wrapped() -> T:
        return await work

    return get_loop().run_until_complete(wrapped())


def run_event_source(stack: LocalStack, queue: str | None, done: Callable[[], bool]) -> None:
    """Run the relay (the template's DynamoDB stream event sources, which bring the work the
    API stored to its queue) and the SQS event source of ``queue`` (a logical id; None: the
    relay alone) until ``done()``, in the functions' real execution environments; then stop
    them. The relay goes on where the last run left it."""
    import asyncio

    async def consume() -> None:
        sources: list[Any] = [
            s
            for s in stack.sqs_event_sources()
            if queue is not None and s.config.queue_url == stack.resources.refs[queue]
        ]
        if queue is not None and not sources:
            raise AssertionError(f"no event source reads {queue}")
        sources += stack.stream_event_sources()
        stop = asyncio.Event()
        pollers = [asyncio.create_task(source.run(stop)) for source in sources]
        try:
            for _ in range(1200):  # bounded: about a minute
                if await asyncio.to_thread(done):
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"the work on {queue or 'the streams'} did not finish")
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*pollers), 30)
            await stack.aclose_functions()

    asyncio.run(consume())


def attached_stack(
    stack: LocalStack,
    env_vars: dict[str, dict[str, str]],
    parameters: dict[str, str] | None = None,
) -> LocalStack:
    """A stack on ``stack``'s running services whose functions get ``env_vars`` over the
    template's (sam local's --env-vars shape), and with other ``parameters`` if given."""
    from lambdaloop_local.stack import LocalStack, StackConfig

    attached = LocalStack(
        StackConfig(
            aws_endpoint=stack.aws_endpoint,
            redis_url=stack.redis_url,
            env_vars=env_vars,
            parameters=parameters or {},
        )
    )
    attached.start()
    return attached


def sha256_chain_reference(seed: str, chains: int, rounds: int) -> list[str]:
    """What the ``sha256_chain`` compute kind gives, the plain way."""
    import hashlib

    digests = []
    for index in range(chains):
        digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
        for _ in range(rounds):
            digest = hashlib.sha256(digest).digest()
        digests.append(digest.hex())
    return digests
