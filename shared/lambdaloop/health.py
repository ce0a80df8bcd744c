"""Dependency health checks: each probe runs concurrently under its own short timeout.

A probe is any ``async () -> object`` that raises when its dependency is unhealthy; the
adapters below are the real ones, and tests pass fakes with the same shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from lambdaloop.clients import aws_client, redis_client, run_blocking

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
        logger.warning("health check %s failed: %s", name, type(exc).__name__, exc_info=exc)
        return CheckResult("error", elapsed(), type(exc).__name__)
    return CheckResult("ok", elapsed())


def dynamodb_probe(table_name: str) -> Probe:
    """A GetItem on a key that never exists: the data plane, with read permissions only."""

    async def probe() -> object:
        client = aws_client("dynamodb")
        return await run_blocking(
            client.get_item,
            TableName=table_name,
            Key={"pk": {"S": "health#probe"}, "sk": {"S": "health#probe"}},
            ProjectionExpression="pk",
        )

    return probe


def redis_probe() -> Probe:
    async def probe() -> object:
        return await redis_client().ping()

    return probe


def sqs_probe(queue_url: str) -> Probe:
    async def probe() -> object:
        client = aws_client("sqs")
        return await run_blocking(
            client.get_queue_attributes,
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages"],
        )

    return probe
