"""The FastAPI application: routes, problem+json handlers, request context."""

from __future__ import annotations

from fastapi import FastAPI

import lambdaloop
from api import system
from api.jobs import routes as jobs_routes
from api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from api.notifications import routes as notifications_routes
from api.problems import install_problem_handlers
from api.settings import ApiSettings, get_api_settings
from api.users import routes as users_routes

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
    # Added last = outermost: the request context wraps everything, the body limit included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    return app
