"""The notify function's settings, read once at cold start."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from lambdaloop.settings import EnvReader

__all__ = ["NotifySettings", "get_notify_settings"]


@dataclass(frozen=True, slots=True)
class NotifySettings:
    notifications_table: str
    idempotency_table: str
    queue_url: str
    #: Secrets Manager secret (ARN or name) holding the webhook signing key.
    signing_secret_id: str
    #: The queue's maxReceiveCount: the attempt that reaches it is the last one.
    max_attempts: int
    webhook_timeout_s: float
    webhook_connect_timeout_s: float
    #: Backoff between webhook attempts: base x 2^(attempt-1), capped, with jitter.
    retry_base_s: float
    retry_max_s: float
    #: Records of a batch delivered at the same time.
    concurrency: int
    #: How long idempotency records live: longer than maxReceiveCount x visibility timeout.
    idempotency_expires_s: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NotifySettings:
        env = EnvReader(environ)
        settings = cls(
            notifications_table=env.text("NOTIFICATIONS_TABLE"),
            idempotency_table=env.text("IDEMPOTENCY_TABLE"),
            queue_url=env.url("NOTIFY_QUEUE_URL", ("https", "http")),
            signing_secret_id=env.text("WEBHOOK_SECRET_ID"),
            max_attempts=env.integer("NOTIFY_MAX_ATTEMPTS", 5, minimum=1, maximum=1000),
            webhook_timeout_s=env.number("WEBHOOK_TIMEOUT_S", 5.0, minimum=0.01, maximum=60),
            webhook_connect_timeout_s=env.number(
                "WEBHOOK_CONNECT_TIMEOUT_S", 2.0, minimum=0.01, maximum=60
            ),
            retry_base_s=env.number("NOTIFY_RETRY_BASE_S", 2.0, minimum=0, maximum=900),
            retry_max_s=env.number("NOTIFY_RETRY_MAX_S", 300.0, minimum=0, maximum=43_200),
            concurrency=env.integer("NOTIFY_CONCURRENCY", 10, minimum=1, maximum=1000),
            idempotency_expires_s=env.integer(
                "IDEMPOTENCY_EXPIRES_S", 86_400, minimum=60, maximum=30 * 86_400
            ),
        )
        env.check()
        return settings


@functools.cache
def get_notify_settings() -> NotifySettings:
    return NotifySettings.from_env()
