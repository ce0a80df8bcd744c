"""Idempotent POSTs: a retry with the same ``Idempotency-Key`` gets the first answer again.

A POST carrying ``Idempotency-Key`` (1 to 255 printable ASCII characters) runs through the
layer's :class:`~lambdaloop.idempotency.IdempotencyGuard`, keyed inside the caller's tenant
(a key of one tenant never meets another's) and kept ``expires_after_s`` (24 h):

- the first request runs and its answer (status, body, ``Location``) is stored with a hash
  of the request (method, path, query, body);
- the same key with the same request replays that answer, marked
  ``Idempotent-Replayed: true``, and runs nothing;
- the same key with another request is 422; while the first still runs, 409 with
  ``Retry-After`` (its claim lapses with its invocation's deadline, so a crashed attempt
  does not hold the key longer than it could have run);
- an answer of 500 or more is not stored: the claim is released, so a retry runs again.

A POST without the header runs as it is (and costs nothing more than a header lookup).
Requests without a verified caller are left to the routes, which refuse them (401).

A request whose answer was lost (a 503 after its write went in, say) is not replayed: its
retry runs again. So the records a POST creates are named by :func:`new_record_id`, which
derives the id from the key and the request: the retry names the record the first attempt
may have written, and finds it instead of writing a second one.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem
from lambdaloop.errors import DependencyError, IdempotencyInProgress, IdempotencyKeyReused
from lambdaloop.runtime import current_deadline
from lambdaloop.tenancy import claims_tenant, scoped

if TYPE_CHECKING:
    # The guard's module is imported with the guard, by the first POST with a key.
    from lambdaloop.idempotency import IdempotencyGuard, Result

__all__ = [
    "HEADER",
    "OPENAPI_PARAMETER",
    "IdempotencyMiddleware",
    "new_record_id",
    "record_key",
    "request_digest",
]

HEADER = "Idempotency-Key"
_HEADER = HEADER.lower().encode()
_REPLAYED = (b"idempotent-replayed", b"true")
_VALID_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")
#: The answer headers a replay repeats (the request-context middleware adds the ids again).
_KEPT_HEADERS = frozenset({b"content-type", b"location"})

#: How the schema documents the header (on every POST operation).
OPENAPI_PARAMETER: dict[str, Any] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": "Makes the POST safe to retry: the same key with the same request "
    "replays the first answer (Idempotent-Replayed: true) for 24 hours; with another "
    "request it is 422, while the first still runs 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
}


#: The id :func:`new_record_id` gives while a request with a key runs.
_derived_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "idempotent_record_id", default=None
)


def new_record_id() -> str:
    """The id of the record this POST creates: the same for every retry of a request with
    the same Idempotency-Key (and body), random for a request without one."""
    return _derived_id.get() or uuid.uuid4().hex


def record_key(tenant: str, key: str) -> str:
    """Where the guard keeps a tenant's key."""
    return scoped(tenant, "IDEMPOTENCY", key)


def request_digest(method: str, path: str, query: str, body: bytes) -> str:
    """What makes two requests "the same" for a key: method, path, query and body."""
    from lambdaloop.idempotency import payload_hash

    body_hash = hashlib.sha256(body).hexdigest()
    return payload_hash({"method": method, "path": path, "query": query, "body": body_hash})


class _NotStored(Exception):
    """The answer is a server error: the guard releases the key, the client gets it."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__(answer["status"])
        self.answer = answer


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, guard: Callable[[], IdempotencyGuard]) -> None:
        self.app = app
        self._guard = guard  # built on first use: the cold start opens nothing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _header(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        tenant = claims_tenant(scope.get("aws.event") or {}) if key is not None else None
        if key is None or tenant is None:
            await self.app(scope, receive, send)
            return
        if not _VALID_KEY.match(key):
            response = problem(
                400,
                f"{HEADER} must be 1 to 255 printable ASCII characters",
                extensions={"field": f"header.{HEADER}"},
            )
            await response(scope, receive, send)
            return
        body = await _read_body(receive)
        query = scope.get("query_string", b"").decode("latin-1")

        async def work() -> Result:
            answer = await _answer(self.app, scope, body)
            if answer["status"] >= 500:
                raise _NotStored(answer)
            return answer

        guarded, digest = (
            record_key(tenant, key),
            request_digest(scope["method"], scope["path"], query, body),
        )
        derived = _derived_id.set(hashlib.sha256(f"{guarded}\n{digest}".encode()).hexdigest()[:32])
        try:
            outcome = await self._guard().run(guarded, digest, work, current_deadline())
        except _NotStored as exc:
            await _send_answer(send, exc.answer, replayed=False)
            return
        except IdempotencyKeyReused:
            refusal = problem(
                422,
                f"{HEADER} was used for another request",
                extensions={"field": f"header.{HEADER}"},
            )
        except IdempotencyInProgress:
            refusal = problem(
                409, f"A request with this {HEADER} is still running", headers={"Retry-After": "1"}
            )
        except DependencyError as exc:  # the guard's own table: the app never ran
            refusal = problem(
                503, f"A dependency is unavailable: {exc.dependency}", headers={"Retry-After": "1"}
            )
        else:
            assert isinstance(outcome.result, dict)
            await _send_answer(send, outcome.result, replayed=outcome.replayed)
            return
        finally:
            _derived_id.reset(derived)
        await refusal(scope, receive, send)


def _header(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == _HEADER:
            text: str = value.decode("latin-1")
            return text
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _answer(app: ASGIApp, scope: Scope, body: bytes) -> dict[str, Any]:
    """Run ``app`` on the request and keep its answer: status, kept headers, body."""
    sent = False
    answer: dict[str, Any] = {"status": 500, "headers": [], "body": ""}
    parts: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in message.get("headers", ())
                if name.lower() in _KEPT_HEADERS
            ]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await app(scope, receive, send)
    answer["body"] = b"".join(parts).decode()
    return answer


async def _send_answer(send: Send, answer: dict[str, Any], *, replayed: bool) -> None:
    body = answer["body"].encode()
    headers = [
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in answer["headers"]
    ]
    headers.append((b"content-length", str(len(body)).encode()))
    if replayed:
        headers.append(_REPLAYED)
    await send({"type": "http.response.start", "status": answer["status"], "headers": headers})
    await send({"type": "http.response.body", "body": body})
