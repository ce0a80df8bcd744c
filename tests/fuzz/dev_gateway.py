"""The dev stack as ``make dev`` runs it, for the fuzzer: moto and Redis (a LocalStack), the
API function in its own execution environment (a worker process), behind the emulator's
local API Gateway with its JWT authorizer, on a free loopback port.

The event source pollers do not run: the fuzzer's jobs and notifications stay queued, so
its work is the API's alone (and a compute job never burns the machine's CPU).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lambdaloop_local.apigw import http_api_routes, make_server
from lambdaloop_local.auth import JwtAuthorizer, SigningKey, template_scopes
from lambdaloop_local.stack import LocalStack, StackConfig
from support import CI_AWS_TIMEOUTS, CI_REDIS_TIMEOUTS

__all__ = ["DevGateway", "dev_gateway", "rss_kib"]

#: What the API function gets over the template's environment: the suite's generous
#: timeouts (a loaded CI machine must not look like an outage), and a per-tenant job limit
#: the fuzzer's never-ending jobs cannot reach.
FUZZ_ENV = {**CI_REDIS_TIMEOUTS, **CI_AWS_TIMEOUTS, "JOBS_IN_FLIGHT_LIMIT": "1000"}


@dataclass(frozen=True)
class DevGateway:
    url: str
    #: A bearer token with every scope of the template, for tenant ``fuzz``.
    token: str
    stack: LocalStack

    def memory_kib(self) -> tuple[str, int | None]:
        """What holds the stack's AWS state, and its resident memory: moto's own process
        when it runs as one (it has a ``pid``), else this process (moto inside it)."""
        moto = self.stack.moto
        pid = getattr(moto, "pid", None)
        if isinstance(pid, int):
            return f"moto (pid {pid})", rss_kib(pid)
        return f"test process (pid {os.getpid()}, moto inside)", rss_kib(os.getpid())


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, from /proc (None where there is no /proc or no such pid)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


@contextmanager
def dev_gateway(env_vars: Mapping[str, str] = FUZZ_ENV) -> Iterator[DevGateway]:
    stack = LocalStack(
        StackConfig(aws_port=0, redis_port=0, env_vars={"ApiFunction": dict(env_vars)})
    )
    stack.start()
    try:
        stack.create_resources()
        key = SigningKey.generate()
        loop = asyncio.new_event_loop()
        started: asyncio.Future[Any] = loop.create_future()
        stop = asyncio.Event()

        async def serve() -> None:
            from aiohttp import web

            routes = http_api_routes(stack.template)

            async def invoke(function: str, event: dict[str, Any]) -> Any:
                return (await stack.pool(function).invoke(event)).result

            # The server `lambdaloop dev` runs: API Gateway's JSON answers to what aiohttp's
            # parser refuses, too.
            runner = web.ServerRunner(make_server(routes, invoke, JwtAuthorizer(key)))
            try:
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                port = runner.addresses[0][1]
                started.set_result(f"http://127.0.0.1:{port}")
                await stop.wait()
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                raise
            finally:
                await runner.cleanup()
                await stack.aclose_functions()

        thread = threading.Thread(
            target=loop.run_until_complete, args=(serve(),), name="dev-gateway", daemon=True
        )
        thread.start()
        try:
            url = asyncio.run_coroutine_threadsafe(_wait(started), loop).result(timeout=300)
            token = key.mint("fuzz", scopes=template_scopes(stack.template))
            yield DevGateway(url=url, token=token, stack=stack)
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(timeout=300)
            loop.close()
    finally:
        stack.stop()


async def _wait(started: asyncio.Future[Any]) -> Any:
    return await started
