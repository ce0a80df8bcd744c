"""The notify function's settings, read once at cold start."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lambdaloop.settings import Settings, integer, number, text, url

__all__ = ["NotifySettings", "get_notify_settings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifySettings(Settings):
    notifications_table: str = text("NOTIFICATIONS_TABLE")
    idempotency_table: str = text("IDEMPOTENCY_TABLE")
    queue_url: str = url("NOTIFY_QUEUE_URL")
    #: Secrets Manager secret (ARN or name) holding the webhook signing key.
    signing_secret_id: str = text("WEBHOOK_SECRET_ID")
    #: The queue's maxReceiveCount: the attempt that reaches it is the last one.
    max_attempts: int = integer("NOTIFY_MAX_ATTEMPTS", 5, minimum=1, maximum=1000)
    webhook_timeout_s: float = number("WEBHOOK_TIMEOUT_S", 5.0, minimum=0.01, maximum=60)
    webhook_connect_timeout_s: float = number(
        "WEBHOOK_CONNECT_TIMEOUT_S", 2.0, minimum=0.01, maximum=60
    )
    #: Backoff between webhook attempts: base x 2^(attempt-1), capped, with jitter.
    retry_base_s: float = number("NOTIFY_RETRY_BASE_S", 2.0, minimum=0, maximum=900)
    retry_max_s: float = number("NOTIFY_RETRY_MAX_S", 300.0, minimum=0, maximum=43_200)
    #: Records of a batch delivered at the same time.
    concurrency: int = integer("NOTIFY_CONCURRENCY", 10, minimum=1, maximum=1000)
    #: How long idempotency records live: longer than maxReceiveCount x visibility timeout.
    idempotency_expires_s: int = integer(
        "IDEMPOTENCY_EXPIRES_S", 86_400, minimum=60, maximum=30 * 86_400
    )


@functools.cache
def get_notify_settings() -> NotifySettings:
    return NotifySettings.from_env()
