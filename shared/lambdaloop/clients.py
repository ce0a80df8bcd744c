"""Lazily built clients, one set per execution environment, reused by warm invocations.

Nothing here connects or imports an SDK at import time: boto3 (~130 ms) and redis.asyncio
(~110 ms) are imported by the first call that needs them, so a function pays only for the
clients it uses. (aiohttp sessions are the SSRF guard's: :func:`lambdaloop.ssrf.guarded_session`.)

boto3 is blocking, so its calls run in a bounded thread pool (:func:`run_blocking`) whose
size matches botocore's connection pool: more threads would only queue on the pool.
redis.asyncio clients are bound to the loop that made them; they are built on
the environment's loop and rebuilt only if a different loop asks (a test harness).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from lambdaloop.settings import get_aws_settings, get_redis_settings

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    import redis.asyncio

__all__ = [
    "aclose_clients",
    "aws_client",
    "redis_client",
    "run_blocking",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)

_aws_lock = threading.Lock()
_aws_clients: dict[str, Any] = {}  # cache: service name -> boto3 client
# cache: kind ("redis") -> (the loop it is bound to, client)
_loop_clients: dict[str, tuple[asyncio.AbstractEventLoop, Any]] = {}


def aws_client(service: str) -> Any:
    """A boto3 client for ``service`` with short timeouts and adaptive retries.

    boto3 honours ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>``, which is how local
    mode points every client at moto without special code.
    """
    client = _aws_clients.get(service)
    if client is None:
        with _aws_lock:  # boto3 client creation is not thread-safe
            client = _aws_clients.get(service)
            if client is None:
                client = _aws_clients[service] = _session().client(
                    service, config=_aws_config(service)
                )
    return client


@functools.cache
def _session() -> Any:
    import boto3

    return boto3.session.Session(region_name=get_aws_settings().region)


def _aws_config(service: str) -> Any:
    from botocore.config import Config

    settings = get_aws_settings()
    return Config(
        # Presigned S3 URLs would otherwise be signed with SigV2 in some regions (deprecated,
        # and refused by buckets in newer regions).
        signature_version="s3v4" if service == "s3" else None,
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        # total_max_attempts counts the first call; botocore's max_attempts would not.
        retries={"mode": "adaptive", "total_max_attempts": settings.max_attempts},
        max_pool_connections=settings.max_pool_connections,
        tcp_keepalive=True,
    )


@functools.cache
def _blocking_pool() -> ThreadPoolExecutor:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(
        max_workers=get_aws_settings().max_pool_connections, thread_name_prefix="lambdaloop-io"
    )


async def run_blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a blocking call (boto3) in the bounded pool, keeping the caller's context vars."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_blocking_pool(), call)


def _on_this_loop(kind: str, build: Callable[[], T]) -> T:
    loop = asyncio.get_running_loop()
    cached = _loop_clients.get(kind)
    if cached is not None and cached[0] is loop:
        return cached[1]  # type: ignore[no-any-return]
    client = build()
    _loop_clients[kind] = (loop, client)
    return client


def redis_client() -> redis.asyncio.Redis:
    """The environment's Redis client: fail-fast timeouts, no retries, a bounded pool.

    A cache must never make a request slower than its source of truth: with redis-py's
    defaults a dead Redis costs 4-59 s per call; here it costs one short timeout.
    """
    return _on_this_loop("redis", _build_redis)


def _build_redis() -> redis.asyncio.Redis:
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    settings = get_redis_settings()
    # A blocking pool: a burst of concurrent calls (a batch, a stampede) waits briefly for a
    # connection instead of failing with "Too many connections" (and tripping the breaker).
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.url,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout_s,
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )
    return redis.asyncio.Redis.from_pool(pool)


async def aclose_clients() -> None:
    """Close the clients built so far (their connections with them) and forget them: the
    next call builds new ones.

    For tests that change the environment between cases, and after a SnapStart restore
    (:mod:`lambdaloop.snapstart`), where every connection from before the snapshot is stale
    and, copied into each restored environment, shared. Loop-bound clients of another loop
    are left alone (they are rebuilt when this loop asks for them).
    """
    # Everything is forgotten before anything is awaited: cancelled half-way (a restore's
    # time limit), nothing old is left to be reused.
    with _aws_lock:
        aws_clients = list(_aws_clients.values())
        _aws_clients.clear()
    _session.cache_clear()
    if _blocking_pool.cache_info().currsize:
        # Never wait for its threads: the emulator's stand-in for a restore (a forked copy
        # of the environment) has none.
        _blocking_pool().shutdown(wait=False)
        _blocking_pool.cache_clear()
    loop = asyncio.get_running_loop()
    ours = [(kind, client) for kind, (owner, client) in _loop_clients.items() if owner is loop]
    for kind, _ in ours:
        del _loop_clients[kind]
    for client in aws_clients:
        client.close()  # botocore closes its connection pool (no request made)
    for kind, client in ours:
        try:
            await client.aclose()
        except Exception:
            logger.warning("could not close the %s client", kind, exc_info=True)
