"""Tenants: every record belongs to the caller API Gateway verified, and its key says so.

A tenant is the ``sub`` claim of the caller's token. Keys of tenant-owned records start with
:func:`partition` of the tenant, ``T#<tenant>``, with the tenant percent-encoded: a ``sub``
is any string (OpenID Connect allows 255 ASCII characters), and encoding ``#`` and ``%`` is
what keeps one tenant from spelling a key inside another's partition.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, TypeGuard
from urllib.parse import quote

__all__ = ["MAX_TENANT_LENGTH", "claims_tenant", "partition", "payload_tenant", "scoped"]

#: OpenID Connect Core: a ``sub`` "MUST NOT exceed 255 ASCII characters".
MAX_TENANT_LENGTH = 255


@functools.lru_cache(maxsize=1024)
def partition(tenant: str) -> str:
    """``T#<tenant, percent-encoded>``: the prefix of every key the tenant owns."""
    return f"T#{quote(tenant, safe='')}"


def scoped(tenant: str, *parts: str | int) -> str:
    """A key inside the tenant's partition: ``T#<tenant>#<part>#<part>...``."""
    return "#".join((partition(tenant), *map(str, parts)))


def claims_tenant(event: Mapping[str, Any]) -> str | None:
    """The tenant of an API Gateway HTTP API (payload 2.0) event: the ``sub`` claim that its
    JWT authorizer verified, or None when there is none (a route without an authorizer).
    Never read from headers or the body: only what the gateway put in the request context."""
    context = event.get("requestContext")
    authorizer = context.get("authorizer") if isinstance(context, Mapping) else None
    jwt = authorizer.get("jwt") if isinstance(authorizer, Mapping) else None
    claims = jwt.get("claims") if isinstance(jwt, Mapping) else None
    sub = claims.get("sub") if isinstance(claims, Mapping) else None
    return sub if _is_tenant(sub) else None


def payload_tenant(payload: Mapping[str, Any]) -> str:
    """The tenant a queue message's payload names (``ValueError`` naming the field when it
    names none): consumers act within it."""
    tenant = payload.get("tenant")
    if not _is_tenant(tenant):
        raise ValueError(f"payload.tenant: expected a tenant, got {tenant!r:.40}")
    return tenant


def _is_tenant(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_TENANT_LENGTH
