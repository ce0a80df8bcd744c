"""The FastAPI application: routes, problem+json handlers, request context."""

from __future__ import annotations

from fastapi import FastAPI

import lambdaloop
from api import system
from api.middleware import RequestContextMiddleware
from api.problems import install_problem_handlers

__all__ = ["create_app"]


def create_app() -> FastAPI:
    app = FastAPI(
        title="lambdaloop",
        version=lambdaloop.__version__,
        redoc_url=None,
    )
    install_problem_handlers(app)
    app.include_router(system.router)
    app.add_middleware(RequestContextMiddleware)
    return app
