"""Service routes: identity and dependency health."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import lambdaloop
from api.settings import ApiSettings, get_api_settings
from lambdaloop.health import (
    CheckResult,
    CheckStatus,
    Probe,
    dynamodb_probe,
    redis_probe,
    run_checks,
    sqs_probe,
)
from lambdaloop.settings import get_runtime_settings

__all__ = ["Health", "health_probes", "install"]

#: Without its source of truth the API cannot answer; without the others it can, slower.
_ESSENTIAL = "dynamodb"


class Service(BaseModel):
    service: str
    version: str


class Health(BaseModel):
    status: Literal["ok", "degraded", "down"]
    checks: dict[str, CheckStatus]
    latency_ms: dict[str, float]


@functools.cache
def health_probes() -> Mapping[str, Probe]:
    """The real probes; tests override this dependency with fakes of the same shape."""
    settings = get_api_settings()
    return {
        "dynamodb": dynamodb_probe(settings.users_table),
        "redis": redis_probe(),
        "queue": sqs_probe(settings.notify_queue_url),
    }


async def service() -> Service:
    return Service(service=get_runtime_settings().service, version=lambdaloop.__version__)


async def health(
    probes: Annotated[Mapping[str, Probe], Depends(health_probes)],
    settings: Annotated[ApiSettings, Depends(get_api_settings)],
) -> JSONResponse:
    results = await run_checks(probes, settings.health_timeout_s)
    body = Health(
        status=_overall(results),
        checks={name: result.status for name, result in results.items()},
        latency_ms={name: result.latency_ms for name, result in results.items()},
    )
    code = 503 if body.status == "down" else 200
    return JSONResponse(body.model_dump(), status_code=code, headers={"Cache-Control": "no-store"})


def _overall(results: Mapping[str, CheckResult]) -> Literal["ok", "degraded", "down"]:
    essential = results.get(_ESSENTIAL)
    if essential is not None and not essential.ok:
        return "down"
    return "ok" if all(result.ok for result in results.values()) else "degraded"


def install(router: APIRouter) -> None:
    """Add the service routes to ``router`` (the app's)."""
    router.add_api_route("/", service, methods=["GET"], response_model=Service)
    router.add_api_route(
        "/health",
        health,
        methods=["GET"],
        response_model=Health,
        responses={503: {"model": Health, "description": "DynamoDB is unreachable"}},
    )
