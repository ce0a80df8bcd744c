"""What an HTTP response means for whoever sent the request: delivered, refused for good, or
worth another attempt (and after how long, when the server said).

2xx is delivered. 408, 429 and 5xx are worth a retry, after the ``Retry-After`` the server
sent, if any (delta-seconds or an HTTP date). Any other 3xx or 4xx is refused for good:
sending the same request again cannot succeed. Webhook deliveries and fetches share this
policy.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Attempt", "Verdict", "classify"]

_RETRYABLE_4XX = frozenset({408, 429})


class Verdict(enum.StrEnum):
    DELIVERED = "delivered"
    #: Refused for good: sending it again cannot succeed.
    REJECTED = "rejected"
    #: Worth another attempt later.
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one delivery attempt."""

    verdict: Verdict
    #: The receiver's HTTP status (``None`` when it never answered).
    status: int | None
    #: Why, in a few words (``"HTTP 503"``, ``"timeout"``, ``"connection: ..."``).
    detail: str
    #: Seconds the receiver asked to wait (``Retry-After``), if it did.
    retry_after_s: float | None = None


def classify(status: int, headers: Mapping[str, str], *, now: float | None = None) -> Attempt:
    """What a final response with ``status`` means for its sender."""
    detail = f"HTTP {status}"
    if 200 <= status < 300:
        return Attempt(Verdict.DELIVERED, status, detail)
    if status in _RETRYABLE_4XX or status >= 500:
        return Attempt(Verdict.RETRY, status, detail, _retry_after(headers, now))
    if 300 <= status < 500:
        return Attempt(Verdict.REJECTED, status, detail)
    return Attempt(Verdict.RETRY, status, detail)  # 1xx as a final status: a broken server


def _retry_after(headers: Mapping[str, str], now: float | None) -> float | None:
    """``Retry-After`` in seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
