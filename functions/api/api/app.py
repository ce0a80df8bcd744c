"""The FastAPI application: routes, problem+json handlers, request context."""

from __future__ import annotations

import functools

from fastapi import FastAPI
from fastapi.routing import APIRoute

import lambdaloop
from api import system
from api.idempotency import OPENAPI_PARAMETER, IdempotencyMiddleware
from api.jobs import routes as jobs_routes
from api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from api.notifications import routes as notifications_routes
from api.problems import install_problem_handlers
from api.settings import ApiSettings, get_api_settings
from api.users import routes as users_routes
from lambdaloop.idempotency import IdempotencyGuard
from lambdaloop.store import Table

__all__ = ["create_app"]


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The app; ``settings`` default to the environment's (tests pass their own)."""
    settings = settings or get_api_settings()
    app = FastAPI(
        title="lambdaloop",
        version=lambdaloop.__version__,
        redoc_url=None,
    )
    install_problem_handlers(app)
    system.install(app.router)
    users_routes.install(app.router)
    notifications_routes.install(app.router)
    jobs_routes.install(app.router)
    for route in app.router.routes:  # every POST takes an Idempotency-Key (the middleware's)
        if isinstance(route, APIRoute) and "POST" in (route.methods or ()):
            route.openapi_extra = {"parameters": [OPENAPI_PARAMETER]}
    # Added last = outermost: the request context wraps everything, the body limit included,
    # and the body limit comes before an idempotent POST is claimed.
    guard = functools.cache(
        lambda: IdempotencyGuard(
            Table(settings.idempotency_table, key_schema=("id",)),
            expires_after_s=settings.idempotency_expires_s,
        )
    )
    app.add_middleware(IdempotencyMiddleware, guard=guard)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, budget_share=settings.request_budget_share)
    return app
