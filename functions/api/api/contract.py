"""The OpenAPI schema as the API's contract: every status an operation can answer, with the
one Problem schema, and the links a client (or a stateful fuzzer) follows from what a POST
created to where it lives.

The statuses every operation of a kind shares are added here from what the code does (the
middlewares, the validation handler, API Gateway's authorizer); the statuses a route's own
logic answers (404, 409, 429) are declared with the route by :func:`problems`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.identity import caller
from api.problems import PROBLEM_JSON

__all__ = ["document", "links", "problems"]

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_GATEWAY_REF = {"$ref": "#/components/schemas/GatewayError"}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
    }
}

#: What each status means in this API, wherever it is answered.
_MEANINGS: dict[int, str] = {
    400: "Malformed request: the body is not JSON, the Idempotency-Key header is not 1 to "
    "255 printable ASCII characters, or a cursor is not one the listing gave.",
    401: "No verified caller. API Gateway answers a missing, expired or forged token "
    '(`{"message": "Unauthorized"}`, with `WWW-Authenticate`); the app answers a '
    "request that reached it without the authorizer's claims (problem+json).",
    403: 'The token lacks the operation\'s scope: API Gateway\'s `{"message": "Forbidden"}`.',
    404: "No such resource in the caller's tenant (another tenant's looks exactly the same).",
    409: "A conflict with the current state: an email address in use, a record changed "
    "concurrently, or a request with the same Idempotency-Key still running (with "
    "Retry-After).",
    413: "The body is over the API's limit (256 KiB by default): the app's problem+json. "
    "Over API Gateway's own 10 MB, the gateway answers with its JSON.",
    414: "The URL is over API Gateway's 10240-byte quota: the gateway's `{\"message\": ...}`.",
    422: "The request is well-formed but invalid: `errors` names each field at fault "
    "(`body.email`, `query.user_ids.0`, `path.user_id`, ...). Also: the Idempotency-Key "
    "was used for another request.",
    431: "The request line and header values are over API Gateway's 10240-byte quota: the "
    'gateway\'s `{"message": ...}`.',
    429: "Too many jobs of the caller are queued or running; Retry-After says when to retry.",
    503: "A dependency did not answer, or the request ran out of its time budget; safe to "
    "retry after Retry-After.",
}
_GATEWAY_TOO: frozenset[int] = frozenset({401, 413})
_GATEWAY_ONLY: frozenset[int] = frozenset({403, 414, 431})
_WITH_RETRY_AFTER: frozenset[int] = frozenset({409, 429, 503})


def _response(status: int) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if status not in _GATEWAY_ONLY:
        content[PROBLEM_JSON] = {"schema": _PROBLEM_REF}
    if status in _GATEWAY_TOO | _GATEWAY_ONLY:
        content["application/json"] = {"schema": _GATEWAY_REF}
    response: dict[str, Any] = {"description": _MEANINGS[status], "content": content}
    if status in _WITH_RETRY_AFTER:
        response["headers"] = _RETRY_AFTER
    return response


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route for the problems its own logic answers."""
    return {status: _response(status) for status in statuses}


def links(value: str, *operations: str, parameter: str = "user_id") -> dict[str, dict[str, Any]]:
    """OpenAPI links from a response to ``operations`` (operation ids), passing ``value``
    (a runtime expression) as their path ``parameter``."""
    return {
        operation: {"operationId": operation, "parameters": {parameter: value}}
        for operation in operations
    }


def _shared_statuses(route: APIRoute) -> set[int]:
    """What the middlewares, the validation handler and the gateway may answer for
    ``route``, whatever it does."""
    methods = route.methods or set()
    statuses: set[int] = set()
    dependant = route.dependant
    if _secured(route):
        statuses |= {401, 403}
    has_body = route.body_field is not None
    if has_body:
        statuses |= {400, 413, 422}
    if "POST" in methods:  # the Idempotency-Key: malformed, still running, reused
        statuses |= {400, 409, 422}
    if dependant.path_params or dependant.query_params or dependant.header_params:
        statuses.add(422)
    # The gateway's quotas, which a long enough value reaches before any rule of the app.
    if dependant.path_params or dependant.query_params:
        statuses.add(414)
    if "POST" in methods or dependant.header_params:
        statuses.add(431)
    if route.path != "/":  # everything else calls a dependency within the time budget
        statuses.add(503)
    return statuses


def _secured(route: APIRoute) -> bool:
    """Whether the route takes its caller from the gateway's authorizer (and so has one)."""
    stack = list(route.dependant.dependencies)
    while stack:
        dependency = stack.pop()
        if dependency.call is caller:
            return True
        stack += dependency.dependencies
    return False


def _components() -> dict[str, Any]:
    field_error = {
        "type": "object",
        "required": ["field", "message", "type"],
        "properties": {
            "field": {
                "type": "string",
                "description": "Where: `body.<name>`, `query.<name>`, `path.<name>`, dotted "
                "into nested values and lists.",
            },
            "message": {"type": "string"},
            "type": {"type": "string", "description": "A stable code for the rule."},
        },
    }
    problem = {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "description": "Always about:blank here."},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "request_id": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/FieldError"},
                "description": "Each field at fault (422).",
            },
            "field": {
                "type": "string",
                "description": "The one field at fault, when a rule of the logic names it.",
            },
        },
        # Some problems carry what they are about (emails in use, a limit).
        "additionalProperties": True,
    }
    gateway = {
        "type": "object",
        "description": "API Gateway's own answer, before the function runs.",
        "required": ["message"],
        "properties": {"message": {"type": "string"}},
    }
    return {"Problem": problem, "FieldError": field_error, "GatewayError": gateway}


_BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})


def _integral_bounds(node: Any) -> Any:
    """The schema with an integer's bounds written as integers: pydantic writes ``ge=1`` as
    ``1.0``, which some generators (schemathesis 4.32) then ignore for ``integer``."""
    if isinstance(node, dict):
        return {
            key: int(value)
            if key in _BOUNDS and isinstance(value, float) and value.is_integer()
            else _integral_bounds(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_integral_bounds(value) for value in node]
    return node


def document(app: FastAPI) -> None:
    """Give each route of ``app`` the shared statuses, and its schema the components they
    name. Call once every route is installed."""
    for route in app.router.routes:
        if not isinstance(route, APIRoute):
            continue
        responses: dict[int | str, dict[str, Any]] = {
            status: _response(status) for status in _shared_statuses(route)
        }
        for status, declared in route.responses.items():
            shared = responses.get(int(status), {})
            # A route's own answer for a shared status (/health's 503) comes with the shared one.
            content = {**shared.get("content", {}), **declared.get("content", {})}
            responses[int(status)] = {**shared, **declared, "content": content}
        route.responses = responses

    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = _integral_bounds(generate())
            schema.setdefault("components", {}).setdefault("schemas", {}).update(_components())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
