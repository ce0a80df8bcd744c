"""The lazily built clients carry the timeouts, retries and pool sizes from the settings."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from lambdaloop.clients import aclose_clients, aws_client, redis_client, run_blocking
from lambdaloop.runtime import get_loop
from lambdaloop.settings import reset_settings


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("LAMBDALOOP_REDIS_TIMEOUT_S", "0.05")
    monkeypatch.setenv("LAMBDALOOP_AWS_POOL_SIZE", "7")
    reset_settings()
    get_loop().run_until_complete(aclose_clients())
    yield
    get_loop().run_until_complete(aclose_clients())
    reset_settings()


def test_boto3_clients_are_built_once_with_short_timeouts_and_adaptive_retries() -> None:
    client = aws_client("dynamodb")

    config = client.meta.config
    assert aws_client("dynamodb") is client
    assert client.meta.region_name == "eu-west-1"
    assert (config.connect_timeout, config.read_timeout) == (1.0, 3.0)
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 3}
    assert config.max_pool_connections == 7


def test_blocking_calls_run_in_the_bounded_pool() -> None:
    names = get_loop().run_until_complete(
        asyncio.gather(*(run_blocking(lambda: threading.current_thread().name) for _ in range(20)))
    )

    assert all(name.startswith("lambdaloop-io") for name in names)
    assert len(set(names)) <= 7


def test_redis_fails_fast_without_retries() -> None:
    async def build() -> tuple[object, object, object]:
        client = redis_client()
        kwargs = client.connection_pool.connection_kwargs
        return kwargs["socket_timeout"], kwargs["retry"].get_retries(), redis_client() is client

    timeout, retries, same = get_loop().run_until_complete(build())

    assert timeout == 0.05
    assert retries == 0
    assert same is True


def test_loop_bound_clients_need_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match="no running event loop"):
        redis_client()
