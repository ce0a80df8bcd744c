"""Loop-bound clients (redis.asyncio, aiohttp) survive from one invocation to the next."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lambdaloop.clients import aclose_clients, redis_client
from lambdaloop.runtime import get_loop, lambda_handler
from lambdaloop.settings import reset_settings
from lambdaloop.ssrf import Policy, aclose_sessions, guarded_session
from lambdaloop_local.stack import LocalStack
from support import LoopbackHttpServer, lambda_context


@pytest.fixture
def redis_env(local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import redis

    with redis.Redis.from_url(local_stack.redis_url) as sync_client:
        sync_client.delete("test:invocations")
    monkeypatch.setenv("REDIS_URL", local_stack.redis_url)
    reset_settings()
    yield
    get_loop().run_until_complete(aclose_clients())
    get_loop().run_until_complete(aclose_sessions())
    reset_settings()


@pytest.mark.usefixtures("redis_env")
def test_second_and_third_invocations_reuse_the_clients() -> None:
    clients: list[tuple[int, int]] = []

    with LoopbackHttpServer() as server:

        @lambda_handler
        async def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
            cache, http = redis_client(), guarded_session(Policy.for_user_urls(True))
            clients.append((id(cache), id(http)))
            count = await cache.incr("test:invocations")
            async with http.get(f"{server.url}/hello", params={"name": event["name"]}) as r:
                greeting = await r.json()
            return {"count": count, "greeting": greeting["hello"]}

        results = [handler({"name": f"n{i}"}, lambda_context()) for i in range(3)]

    assert results == [
        {"count": 1, "greeting": "n0"},
        {"count": 2, "greeting": "n1"},
        {"count": 3, "greeting": "n2"},
    ]
    assert len(set(clients)) == 1, "each invocation built new clients"
    assert server.requests == 3
