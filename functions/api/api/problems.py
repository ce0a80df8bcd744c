"""RFC 9457 problem details: the one place where errors become HTTP statuses."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import ApiError, DomainError, EmailTaken, IdsExhausted, InvalidCursor
from lambdaloop.errors import DeadlineExceeded, DependencyError, LambdaloopError

__all__ = [
    "PROBLEM_JSON",
    "install_problem_handlers",
    "internal_error",
    "out_of_time",
    "problem",
    "request_id_var",
]

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

#: The current request's id, set by the request-context middleware, echoed in problems.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "api_request_id", default=None
)


def problem(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """A problem+json response; ``type`` is about:blank, so the title is the status phrase."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    request_id = request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    body.update(extensions or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _field(location: Sequence[int | str]) -> str:
    return ".".join(str(part) for part in location)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if exc.detail != HTTPStatus(exc.status_code).phrase else None
    headers = getattr(exc, "headers", None)
    if exc.status_code == HTTPStatus.NOT_FOUND and detail is None:
        detail = f"No resource at {request.url.path}"
    elif exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        allowed = _allowed_methods(request)
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        detail = (
            f"{request.method} is not allowed on {request.url.path} (allowed: {headers['Allow']})"
        )
    return problem(exc.status_code, detail, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """The methods of every route whose path matches the request's: Starlette's 405 names
    only the first such route's (``HEAD /users/1`` would say GET, though PUT, PATCH and
    DELETE answer there too, each its own route)."""
    path = request.scope["path"]
    methods: set[str] = set()
    for route in request.app.router.routes:
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and regex.match(path):
            methods |= set(route_methods)
    return sorted(methods)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": _field(error.get("loc", ())),
            "message": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        for error in exc.errors()
    ]
    if any(error["type"] == "json_invalid" for error in errors):
        return problem(400, "The request body is not valid JSON", title="Malformed request body")
    return _unprocessable(errors)


def _unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(422, detail, title="Request validation failed", extensions={"errors": errors})


def out_of_time() -> JSONResponse:
    """The request ran out of its time: 503, as for a dependency that did not answer, since
    a retry may well succeed."""
    return problem(
        503, "The request did not finish in its time budget", headers={"Retry-After": "1"}
    )


async def _layer_error(request: Request, exc: Exception) -> JSONResponse:
    from lambdaloop.compute.kinds.base import ParamsError  # loaded by the compute route

    if isinstance(exc, DeadlineExceeded):
        return out_of_time()
    if isinstance(exc, ParamsError):  # a compute kind's own checks, reported as the model's
        field = _field(("body", *exc.field.split(".")))
        return _unprocessable([{"field": field, "message": exc.message, "type": "value_error"}])
    if isinstance(exc, DependencyError):
        logger.warning("dependency failure: %s", exc)
        return problem(
            503, f"A dependency is unavailable: {exc.dependency}", headers={"Retry-After": "1"}
        )
    return internal_error(request.method, request.url.path, exc)


def internal_error(method: str, path: str, exc: BaseException) -> JSONResponse:
    """500 without a traceback in the body; the traceback goes to the log, once."""
    logger.error("unhandled error on %s %s", method, path, exc_info=exc)
    return problem(500, "The server could not complete the request")


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return problem(exc.status, exc.detail, headers=exc.headers, extensions=exc.extensions)


#: What each domain error means in HTTP; any other (a race the service failed to settle in
#: its retries, say) is a conflict with the current state.
_DOMAIN_STATUS: dict[type[DomainError], int] = {
    EmailTaken: 409,
    IdsExhausted: 409,
    InvalidCursor: 400,
}


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    status = next((s for kind, s in _DOMAIN_STATUS.items() if isinstance(exc, kind)), 409)
    return problem(status, exc.detail, extensions=exc.extensions)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(LambdaloopError, _layer_error)
