"""Dependency health checks: each probe runs concurrently under its own short timeout.

A probe is any ``async () -> object`` that raises when its dependency is unhealthy; the
adapters below are the real ones, and tests pass fakes with the same shape.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from lambdaloop.clients import aws_client, redis_client, run_blocking

if TYPE_CHECKING:
    import redis.asyncio

__all__ = [
    "CheckResult",
    "CheckStatus",
    "Probe",
    "dynamodb_probe",
    "redis_probe",
    "run_checks",
    "sqs_probe",
]

logger = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[object]]
CheckStatus = Literal["ok", "timeout", "error"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    status: CheckStatus
    latency_ms: float
    #: The exception's type name: enough to act on, nothing an attacker can use.
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


async def run_checks(probes: Mapping[str, Probe], timeout_s: float) -> dict[str, CheckResult]:
    """Run every probe at once; a slow or failing one never delays or fails the others."""
    names = list(probes)
    results = await asyncio.gather(*(_check(n, probes[n], timeout_s) for n in names))
    return dict(zip(names, results, strict=True))


async def _check(name: str, probe: Probe, timeout_s: float) -> CheckResult:
    started = time.perf_counter()

    def elapsed() -> float:
        return round((time.perf_counter() - started) * 1000, 2)

    try:
        await asyncio.wait_for(probe(), timeout_s)
    except TimeoutError:
        logger.warning("health check %s timed out after %.2f s", name, timeout_s)
        return CheckResult("timeout", elapsed(), "TimeoutError")
    except Exception as exc:  # a probe reports any failure of its dependency as unhealthy
        status: CheckStatus = "timeout" if _is_timeout(exc) else "error"
        logger.warning("health check %s: %s: %s", name, type(exc).__name__, exc)
        return CheckResult(status, elapsed(), type(exc).__name__)
    return CheckResult("ok", elapsed())


def _is_timeout(exc: BaseException) -> bool:
    # SDKs have their own timeout types (redis.exceptions.TimeoutError, botocore's
    # ReadTimeoutError/ConnectTimeoutError), none of them the builtin TimeoutError.
    return any("Timeout" in cls.__name__ for cls in type(exc).__mro__)


# The probe factories build (or import) their client up front: a probe's timeout should
# measure its dependency, not a cold import of boto3 or redis-py on a busy loop.


def dynamodb_probe(table_name: str, client: Any = None) -> Probe:
    """A GetItem on a key that never exists: the data plane, with read permissions only."""
    dynamodb = client or aws_client("dynamodb")

    async def probe() -> object:
        return await run_blocking(
            dynamodb.get_item,
            TableName=table_name,
            Key={"pk": {"S": "health#probe"}, "sk": {"S": "health#probe"}},
            ProjectionExpression="pk",
        )

    return probe


def redis_probe(client: redis.asyncio.Redis | None = None) -> Probe:
    if client is None:
        importlib.import_module("redis.asyncio")

    async def probe() -> object:
        return await (client or redis_client()).ping()

    return probe


def sqs_probe(queue_url: str, client: Any = None) -> Probe:
    sqs = client or aws_client("sqs")

    async def probe() -> object:
        return await run_blocking(
            sqs.get_queue_attributes,
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages"],
        )

    return probe
