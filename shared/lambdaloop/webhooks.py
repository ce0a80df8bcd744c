"""Signed webhooks: what the sender signs, how a receiver checks it, and one delivery attempt.

Every request carries three headers:

- ``X-Lambdaloop-Id``: the event's id, stable across retries (receivers deduplicate on it);
- ``X-Lambdaloop-Timestamp``: when this attempt was signed, in epoch seconds;
- ``X-Lambdaloop-Signature``: ``v1=`` and the hex HMAC-SHA256, under the shared secret, of
  ``"{timestamp}." + body`` (the raw body bytes). Signing the timestamp with the body lets a
  receiver refuse replays of an old request (:func:`verify` allows 5 minutes).

A receiver verifies with :func:`verify`, or in any language: recompute the HMAC over the
timestamp header, a dot and the raw body, compare in constant time, check the timestamp.

:func:`post` makes one attempt and says what it means for the sender
(an :class:`~lambdaloop.http_outcome.Attempt`, classified by
:func:`~lambdaloop.http_outcome.classify`; a 3xx is refused for good, as redirects are not
followed: a webhook URL is configured, not discovered). Timeouts and connection errors are
worth a retry. Webhook URLs are
chosen by users: post through a session whose connector is
:func:`~lambdaloop.ssrf.guarded_connector`'s, and an address it refuses is a refusal for
good (``blocked: ...``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from lambdaloop.http_outcome import Attempt, Verdict, classify

if TYPE_CHECKING:
    import aiohttp

__all__ = ["ID_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "post", "sign", "verify"]

logger = logging.getLogger(__name__)

ID_HEADER = "X-Lambdaloop-Id"
TIMESTAMP_HEADER = "X-Lambdaloop-Timestamp"
SIGNATURE_HEADER = "X-Lambdaloop-Signature"
_SCHEME = "v1"
#: How old (or how far in the future) a signed timestamp :func:`verify` accepts by default.
DEFAULT_TOLERANCE_S = 300


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{_SCHEME}={mac.hexdigest()}"


def verify(
    secret: str | bytes,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``signature`` (the header, which may list several comma-separated ``v1=``
    values while a secret is rotated) signs ``body`` at ``timestamp``, and the timestamp is
    within ``tolerance_s`` of ``now``."""
    if not timestamp or not signature:
        return False
    try:
        signed_at = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - signed_at) > tolerance_s:
        return False
    expected = sign(secret, signed_at, body)
    return any(hmac.compare_digest(expected, part.strip()) for part in signature.split(","))


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    secret: str | bytes,
    event_id: str,
    client_timeout: aiohttp.ClientTimeout,
    headers: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
) -> Attempt:
    """POST ``body`` (JSON) to ``url``, signed, once; never raises for the receiver's or the
    network's failures (they are the :class:`Attempt`'s verdict)."""
    import aiohttp

    from lambdaloop.ssrf import Blocked

    timestamp = int(clock())
    request_headers = {
        "Content-Type": "application/json",
        ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        **(headers or {}),
    }
    try:
        async with session.post(
            url, data=body, headers=request_headers, timeout=client_timeout, allow_redirects=False
        ) as response:
            return classify(response.status, response.headers, now=clock())
    except Blocked as exc:  # the session's guarded connector refused the address
        return Attempt(Verdict.REJECTED, None, f"blocked: {exc.reason}"[:300])
    except TimeoutError:
        return Attempt(Verdict.RETRY, None, "timeout")
    except aiohttp.InvalidURL as exc:
        return Attempt(Verdict.REJECTED, None, f"invalid URL: {exc}")
    except aiohttp.ClientError as exc:
        return Attempt(Verdict.RETRY, None, f"connection: {type(exc).__name__}: {exc}"[:300])
