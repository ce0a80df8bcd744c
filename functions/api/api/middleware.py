"""Request context for every call: ids, correlation, the time budget, the last-resort 500.

A pure ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and a stream per request).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import internal_error, out_of_time, problem, request_id_var
from lambdaloop.observability import set_correlation_id
from lambdaloop.runtime import budget, current_deadline

__all__ = ["BodyLimitMiddleware", "RequestContextMiddleware", "correlation_id_var"]

logger = logging.getLogger(__name__)

#: The request's correlation id, for what it sends on (queue messages carry it).
correlation_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            text: str = value.decode("latin-1")
            return text if _SAFE_ID.match(text) else None
    return None


def _request_id(scope: Scope) -> str:
    event: dict[str, Any] = scope.get("aws.event") or {}
    from_gateway = event.get("requestContext", {}).get("requestId")
    if isinstance(from_gateway, str) and from_gateway:
        return from_gateway
    return _header(scope, b"x-request-id") or uuid.uuid4().hex


class RequestContextMiddleware:
    """Sets request and correlation ids (logged and returned as headers), bounds the request
    in time, and turns an unhandled error into a 500 problem.

    Two bounds: the calls the request makes (AWS, through the layer's adapters) get
    ``budget_share`` of the invocation's time left, after which they fail as timeouts and
    the client hears 503 with ``Retry-After``; the rest is kept for answering and for undoing
    a half-done write (:func:`~lambdaloop.runtime.beyond_budget`). Whatever still runs at the
    invocation's deadline is cancelled, and the client gets the same 503: never the
    gateway's own 500 for a function that timed out.
    """

    def __init__(self, app: ASGIApp, budget_share: float = 1.0) -> None:
        self.app = app
        self._budget_share = budget_share

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        correlation_id = _header(scope, b"x-correlation-id") or request_id
        request_id_var.set(request_id)
        correlation_id_var.set(correlation_id)
        set_correlation_id(correlation_id)
        ids = [
            (b"x-request-id", request_id.encode()),
            (b"x-correlation-id", correlation_id.encode()),
        ]
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_ids(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *ids]
            await send(message)

        invocation = current_deadline()
        deadline = asyncio.timeout(invocation.timeout())
        try:
            with budget(invocation.remaining() * self._budget_share):
                async with deadline:
                    await self.app(scope, receive, send_with_ids)
        except Exception as exc:
            if response_started:
                raise
            if isinstance(exc, TimeoutError) and deadline.expired():
                response = out_of_time()
            else:
                response = internal_error(scope["method"], scope["path"], exc)
            await response(scope, receive, send_with_ids)
        finally:
            logger.info(
                "%s %s -> %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with a 413 problem before any parsing.

    Behind API Gateway the body arrives whole, so reading it first costs nothing; the app
    then receives it as one message.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is None and scope["method"] in _BODILESS:
            await self.app(scope, receive, send)  # nothing to count
            return
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, f"The request body is over {self.max_bytes} bytes")
        await response(scope, receive, send)
