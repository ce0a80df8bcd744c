"""API Gateway HTTP API, locally: HTTP requests become payload-2.0 events for the functions.

Routes come from the template's ``HttpApi`` events. The event has the shape of
``sam local generate-event apigateway http-api-proxy``; the function's answer is mapped back
the way API Gateway maps it (statusCode/headers/cookies/body, base64 when flagged; a result
without statusCode is a 200 JSON body; a failed invocation is a 500).

A route with a JWT authorizer (the event's ``Auth``, or the API's ``DefaultAuthorizer``) is
checked before its function is invoked (``lambdaloop_local.auth``): a missing or bad token is
API Gateway's 401, a token without the route's scopes its 403, and the function never runs;
an accepted token's claims are in ``requestContext.authorizer.jwt``.

What API Gateway does not pass on, it answers itself, in JSON (``lambdaloop_local.apigw_http``).
Where this gateway knowingly differs from API Gateway HTTP API:
- AWS documents the quotas (payload 10 MB, request line and header values 10240 bytes) but
  not the answers: here 413, 414 (the request line alone) or 431, as the RFCs name them. A
  method the HTTP parser does not know (``FOO``) is 501 (RFC 9110); a method it knows
  (``TRACE``) reaches an ``ANY`` route's function. A bare CR or another malformed head is 400.
- How header bytes that are not UTF-8 reach the function is not documented: here such a
  value is read as ISO-8859-1, so the event always holds text.
- Which bodies are base64-encoded is not documented either: as others observed on AWS, every
  body but ``text/*``, ``application/json``, ``application/xml`` and ``application/javascript``
  ones; and here a text body that is not UTF-8 too (JSON events cannot carry its bytes).
- HTTP API's client timeouts are not published: a head that is not complete within
  ``idle_timeout_s`` closes the connection silently, a body not complete within
  ``body_timeout_s`` gets 408 and the connection closed.
- Not emulated: Lambda's 6 MB invocation payload limit, more than 128 header lines (400 here),
  HTTP/2, TLS, custom domains and stages other than ``$default``.
"""

from __future__ import annotations

import base64
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from lambdaloop_local.apigw_http import (
    GatewayLimits,
    GatewayServer,
    gateway_error,
    head_too_large,
    read_body,
)
from lambdaloop_local.auth import Authorized, JwtAuthorizer, Refusal, RouteAuth, route_auth
from lambdaloop_local.context import ACCOUNT_ID
from lambdaloop_local.functions import InvocationError
from lambdaloop_local.template import Template

__all__ = [
    "HttpRoute",
    "authorize",
    "build_event",
    "find_route",
    "http_api_routes",
    "make_app",
    "make_server",
    "match_route",
]

logger = logging.getLogger(__name__)

Invoke = Callable[[str, dict[str, Any]], Awaitable[Any]]

#: The media types whose bodies HTTP API passes as text (besides ``text/*``), as observed
#: on AWS: every other one, form data included, arrives base64-encoded.
_TEXT_TYPES = frozenset({"application/json", "application/xml", "application/javascript"})
_API_ID = "local"


@dataclass(frozen=True, slots=True)
class HttpRoute:
    method: str  # "ANY" or an HTTP method
    path: str  # "/", "/users/{id}", "/{proxy+}"
    function: str
    pattern: re.Pattern[str]
    #: How specific the route is: literal segments beat parameters beat a greedy proxy.
    rank: tuple[int, int, int]
    #: The route's JWT authorizer; None for a public route.
    auth: RouteAuth | None = None

    @classmethod
    def parse(
        cls, method: str, path: str, function: str, auth: RouteAuth | None = None
    ) -> HttpRoute:
        pattern, rank = _compile(path)
        return cls(method.upper(), path, function, pattern, rank, auth)

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"


def _compile(path: str) -> tuple[re.Pattern[str], tuple[int, int, int]]:
    # DOTALL and \Z: a decoded path may hold a line feed (%0A), which API Gateway routes
    # like any other character; ``.`` and ``$`` would not match it, or match before it.
    parts, literal, params, greedy = [], 0, 0, 0
    for segment in path.strip("/").split("/") if path != "/" else []:
        if segment.startswith("{") and segment.endswith("+}"):
            parts.append(f"(?P<{segment[1:-2]}>.+)")
            greedy += 1
        elif segment.startswith("{") and segment.endswith("}"):
            parts.append(f"(?P<{segment[1:-1]}>[^/]+)")
            params += 1
        else:
            parts.append(re.escape(segment))
            literal += 1
    pattern = re.compile(r"\A/" + "/".join(parts) + r"\Z", re.DOTALL)
    return pattern, (-greedy, literal, -params)


def http_api_routes(template: Template) -> list[HttpRoute]:
    """Every ``HttpApi`` event of every function, most specific first."""
    routes = []
    for function in template.functions():
        for event in function.events.values():
            if event.get("Type") != "HttpApi":
                continue
            properties = event.get("Properties") or {}
            path = properties.get("Path", "/{proxy+}")
            method = str(properties.get("Method", "ANY"))
            auth = route_auth(template, properties)
            routes.append(HttpRoute.parse(method, path, function.logical_id, auth))
    return sorted(routes, key=lambda r: (r.rank, r.method != "ANY"), reverse=True)


def match_route(
    routes: list[HttpRoute], method: str, path: str
) -> tuple[HttpRoute, dict[str, str]] | None:
    for route in routes:
        if route.method not in ("ANY", method.upper()):
            continue
        found = route.pattern.match(path)
        if found:
            return route, found.groupdict()
    return None


def find_route(
    routes: list[HttpRoute], function: str, event: Mapping[str, Any]
) -> HttpRoute | None:
    """The route of ``function`` that a payload-2.0 event was sent for: by its ``routeKey``,
    else (``$default``, or a key the template does not have) by its method and path."""
    if event.get("version") != "2.0" or not isinstance(event.get("requestContext"), dict):
        return None
    own = [route for route in routes if route.function == function]
    for route in own:
        if route.route_key == event.get("routeKey"):
            return route
    http = event["requestContext"].get("http") or {}
    found = match_route(own, str(http.get("method", "")), str(event.get("rawPath", "")))
    return found[0] if found else None


def authorize(
    route: HttpRoute, event: dict[str, Any], authorizer: JwtAuthorizer | None
) -> Refusal | None:
    """Run the route's authorizer on ``event``: a refusal, or None after putting the token's
    claims in ``requestContext.authorizer`` (a public route's event is left as it is)."""
    if route.auth is None:
        return None
    if authorizer is None:  # fail closed: a protected route is never served unchecked
        raise RuntimeError(f"{route.route_key} has an authorizer, and no JwtAuthorizer is set")
    decision = authorizer.authorize(route.auth, event)
    if isinstance(decision, Authorized):
        event["requestContext"]["authorizer"] = decision.context()
        return None
    return decision


def _is_text(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type.startswith("text/") or media_type in _TEXT_TYPES


def _body_field(content_type: str, body: bytes) -> tuple[str, bool]:
    """The event's ``body`` and ``isBase64Encoded``: text as it came, anything else (a
    binary type, or text that is not UTF-8) base64-encoded."""
    if _is_text(content_type):
        try:
            return body.decode(), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode(), True


def _header_text(value: str) -> str:
    """A header value as text the event can carry: aiohttp keeps bytes that are not UTF-8
    as lone surrogates, which no JSON encoder writes; such a value is read as ISO-8859-1
    (a character per byte, RFC 9110's obs-text) instead."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("latin-1")
    return value


def build_event(
    route: HttpRoute,
    path_parameters: Mapping[str, str],
    *,
    method: str,
    path: str,
    raw_query: str,
    headers: Mapping[str, str] | list[tuple[str, str]],
    body: bytes,
    source_ip: str,
) -> dict[str, Any]:
    """A payload-2.0 event as API Gateway HTTP API sends it."""
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for name, raw_value in pairs:
        key, value = name.lower(), _header_text(raw_value)
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    query: dict[str, str] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    now = time.time()
    text, encoded = _body_field(merged.get("content-type", ""), body) if body else ("", False)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": merged,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": _API_ID,
            "domainName": merged.get("host", "127.0.0.1"),
            "domainPrefix": _API_ID,
            "http": {
                "method": method.upper(),
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": merged.get("user-agent", ""),
            },
            "requestId": uuid.uuid4().hex,
            "routeKey": route.route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": encoded,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if body:
        event["body"] = text
    return event


def to_response(result: Any) -> web.Response:
    """Map a function's result to HTTP the way API Gateway does for payload 2.0."""
    if not (isinstance(result, dict) and "statusCode" in result):
        return web.json_response(result)
    headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
    headers.pop("content-length", None)
    body = result.get("body") or ""
    payload = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
    response = web.Response(status=int(result["statusCode"]), body=payload, headers=headers)
    for cookie in result.get("cookies") or []:
        response.headers.add("Set-Cookie", cookie)
    for name, values in (result.get("multiValueHeaders") or {}).items():
        for value in values:
            response.headers.add(name, value)
    return response


def _handler(
    routes: list[HttpRoute],
    invoke: Invoke,
    authorizer: JwtAuthorizer | None,
    limits: GatewayLimits,
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    if authorizer is None and (guarded := [r.route_key for r in routes if r.auth]):
        raise ValueError(f"routes with an authorizer need a JwtAuthorizer: {guarded}")

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        refused = head_too_large(request, limits.head_bytes)
        if refused is not None:
            return refused
        found = match_route(routes, request.method, request.path)
        if found is None:
            return gateway_error(404, "Not Found")
        route, parameters = found
        body = await read_body(request, limits)
        if isinstance(body, web.StreamResponse):
            return body
        event = build_event(
            route,
            parameters,
            method=request.method,
            path=request.raw_path.split("?", 1)[0],
            raw_query=request.rel_url.raw_query_string,
            headers=list(request.headers.items()),
            body=body,
            source_ip=request.remote or "127.0.0.1",
        )
        refusal = authorize(route, event, authorizer)
        if refusal is not None:
            logger.info(
                "%s %s: %s %s", request.method, request.path, refusal.status, refusal.reason
            )
            return gateway_error(refusal.status, refusal.message, refusal.headers)
        return await _invoke_route(invoke, route, event)

    return handle


async def _invoke_route(invoke: Invoke, route: HttpRoute, event: dict[str, Any]) -> web.Response:
    try:
        result = await invoke(route.function, event)
    except InvocationError as exc:
        logger.error("%s failed: %s", route.function, exc)
        return gateway_error(500, "Internal Server Error")
    try:
        return to_response(result)
    except (TypeError, ValueError) as exc:
        logger.error("%s returned a malformed response: %s", route.function, exc)
        return gateway_error(500, "Internal Server Error")


def make_server(
    routes: list[HttpRoute],
    invoke: Invoke,
    authorizer: JwtAuthorizer | None = None,
    limits: GatewayLimits | None = None,
) -> GatewayServer:
    """The gateway: serves ``routes`` by invoking their functions, within API Gateway's
    ``limits``, and answers bad requests itself in JSON; serve it with ``web.ServerRunner``.
    ``authorizer`` checks the tokens of the routes that have one (required when one has)."""
    limits = limits or GatewayLimits()
    return GatewayServer(_handler(routes, invoke, authorizer, limits), limits)


def make_app(
    routes: list[HttpRoute],
    invoke: Invoke,
    authorizer: JwtAuthorizer | None = None,
    limits: GatewayLimits | None = None,
) -> web.Application:
    """The gateway's routing, limits and events in an aiohttp app (to mount elsewhere):
    requests that aiohttp's parser refuses are answered by aiohttp, not in API Gateway's
    JSON; :func:`make_server` answers them too."""
    handle = _handler(routes, invoke, authorizer, limits or GatewayLimits())
    app = web.Application(middlewares=[_not_found_in_json])
    # The handler answers Expect: 100-continue itself, once it knows the body is welcome.
    # Every path reaches it (aiohttp's ``.*`` would leave a decoded line feed to aiohttp's
    # own text/plain 404): routing, and API Gateway's JSON 404, are the handler's.
    app.router.add_route("*", r"/{tail:[\s\S]*}", handle, expect_handler=_no_continue)
    return app


@web.middleware
async def _not_found_in_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """What aiohttp's router cannot route at all (a request target that is not a path, such
    as ``OPTIONS *``) gets API Gateway's JSON 404, not aiohttp's text/plain one."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return gateway_error(404, "Not Found")


async def _no_continue(request: web.Request) -> None:
    return None
