"""The FastAPI application: routes, problem+json handlers, request context."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Route

import lambdaloop
from api import docs, system
from api.contract import document
from api.idempotency import OPENAPI_PARAMETER, IdempotencyMiddleware
from api.jobs import routes as jobs_routes
from api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from api.notifications import routes as notifications_routes
from api.problems import install_problem_handlers
from api.settings import ApiSettings, get_api_settings
from api.users import routes as users_routes

if TYPE_CHECKING:
    from lambdaloop.idempotency import IdempotencyGuard

__all__ = ["create_app"]


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The app; ``settings`` default to the environment's (tests pass their own)."""
    settings = settings or get_api_settings()
    _check_for_pydantic_v1_only_once_loaded()
    app = FastAPI(
        title="lambdaloop",
        version=lambdaloop.__version__,
        redoc_url=None,
        docs_url=None,  # docs.install: Swagger UI offline in local mode
        # Operation ids are the route functions' names: the schema's links name them.
        generate_unique_id_function=lambda route: route.name,
    )
    install_problem_handlers(app)
    docs.install(app)
    system.install(app.router)
    users_routes.install(app.router)
    notifications_routes.install(app.router)
    jobs_routes.install(app.router)
    for route in app.router.routes:  # every POST takes an Idempotency-Key (the middleware's)
        if isinstance(route, APIRoute) and "POST" in (route.methods or ()):
            route.openapi_extra = {"parameters": [OPENAPI_PARAMETER]}
    _literal_paths_are_their_own(app)
    document(app)

    @functools.cache
    def guard() -> IdempotencyGuard:
        # Built (and the store imported) by the first POST with an Idempotency-Key.
        from lambdaloop.idempotency import IdempotencyGuard
        from lambdaloop.store import Table

        return IdempotencyGuard(
            Table(settings.idempotency_table, key_schema=("id",)),
            expires_after_s=settings.idempotency_expires_s,
        )

    # Added last = outermost: the request context wraps everything, the body limit included,
    # and the body limit comes before an idempotent POST is claimed.
    app.add_middleware(IdempotencyMiddleware, guard=guard)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, budget_share=settings.request_budget_share)
    return app


def _literal_paths_are_their_own(app: FastAPI) -> None:
    """A literal path is a resource of its own, as OpenAPI reads paths: every method on it
    is answered by its routes, and one it does not have is 405 with their methods in Allow.
    Starlette would let ``PUT /users/batch`` fall through to ``PUT /users/{user_id}`` (a 422
    for the id "batch"), and ``GET /jobs/fetch`` to ``GET /jobs/{job_id}``: a route with
    parameters is made not to match the literal paths that share its shape."""
    routes = [route for route in app.router.routes if isinstance(route, Route)]
    literal = {route.path for route in routes if not route.param_convertors}
    for route in routes:
        shadowed = sorted(
            path for path in literal if route.param_convertors and route.path_regex.match(path)
        )
        if shadowed:
            others = "|".join(re.escape(path) for path in shadowed)
            route.path_regex = re.compile(f"^(?!(?:{others})$){route.path_regex.pattern[1:]}")


def _check_for_pydantic_v1_only_once_loaded() -> None:
    """Spare the cold start FastAPI's pydantic.v1 probe (~20 ms: pydantic.v1 brings pickle,
    its own dataclasses and validators).

    FastAPI refuses pydantic.v1 models, and finds them by importing pydantic.v1 at the first
    typed field of the first route and comparing classes. A pydantic.v1 model cannot exist
    before pydantic.v1 is imported, so while nothing has imported it the answer is "no"
    without looking; once something has, FastAPI's own check runs as before. The checks are
    FastAPI internals: if a release renames them this does nothing, and the cold-start test
    that asserts pydantic.v1 stays unimported says so.
    """
    from fastapi import encoders
    from fastapi._compat import shared

    for module, name in (
        (shared, "is_pydantic_v1_model_class"),  # annotation_is_pydantic_v1 calls it by name
        (shared, "is_pydantic_v1_model_instance"),
        (encoders, "is_pydantic_v1_model_instance"),  # imported by name into encoders
    ):
        check = getattr(module, name, None)
        if check is not None and not getattr(check, "_lambdaloop_guarded", False):
            setattr(module, name, _once_pydantic_v1_is_loaded(check))


def _once_pydantic_v1_is_loaded(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    @functools.wraps(check)
    def guarded(value: Any) -> bool:
        return "pydantic.v1" in sys.modules and check(value)

    guarded._lambdaloop_guarded = True  # type: ignore[attr-defined]
    return guarded
