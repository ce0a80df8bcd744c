"""The API function's settings, read once at cold start."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lambdaloop.settings import Settings, flag, integer, number, optional_text, text, url

__all__ = ["ApiSettings", "get_api_settings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings(Settings):
    users_table: str = text("USERS_TABLE")
    notifications_table: str = text("NOTIFICATIONS_TABLE")
    #: The notify queue, whose attributes GET /health reads (the relay function publishes).
    notify_queue_url: str = url("NOTIFY_QUEUE_URL")
    #: How long notification records are kept (the table's TTL removes them after).
    notification_retention_days: int = integer(
        "NOTIFICATION_RETENTION_DAYS", 30, minimum=1, maximum=3650
    )
    jobs_table: str = text("JOBS_TABLE")
    #: How long job records and their results are kept (the table's TTL removes them after).
    job_retention_days: int = integer("JOB_RETENTION_DAYS", 30, minimum=1, maximum=3650)
    #: Where fetch jobs with ``store_bodies`` keep bodies; None: such jobs are refused.
    jobs_results_bucket: str | None = optional_text("JOBS_RESULTS_BUCKET")
    #: Jobs (fetch and compute) a tenant may have queued or running at once.
    jobs_in_flight_limit: int = integer("JOBS_IN_FLIGHT_LIMIT", 10, minimum=1, maximum=1000)
    #: Where POSTs with an Idempotency-Key keep their answers, and for how long.
    idempotency_table: str = text("IDEMPOTENCY_TABLE")
    idempotency_expires_s: int = integer(
        "IDEMPOTENCY_EXPIRES_S", 86_400, minimum=60, maximum=30 * 86_400
    )
    #: Each dependency check of GET /health gets this long, all of them at once.
    health_timeout_s: float = number("LAMBDALOOP_HEALTH_TIMEOUT_S", 1.0, minimum=0.01)
    max_body_bytes: int = integer("LAMBDALOOP_MAX_BODY_BYTES", 256 * 1024, minimum=1024)
    cache_enabled: bool = flag("LAMBDALOOP_CACHE_ENABLED", True)
    cache_ttl_s: float = number("USERS_CACHE_TTL_S", 300.0, minimum=1, maximum=86_400)
    #: Consecutive Redis failures that open the circuit, and how long it stays open.
    breaker_failures: int = integer("LAMBDALOOP_BREAKER_FAILURES", 3, minimum=1)
    breaker_reset_s: float = number("LAMBDALOOP_BREAKER_RESET_S", 10.0, minimum=0.1)
    #: The share of the invocation's time a request may spend on its calls (the rest is
    #: left to answer 503 and to undo a half-done write).
    request_budget_share: float = number(
        "LAMBDALOOP_REQUEST_BUDGET_SHARE", 0.6, minimum=0.1, maximum=0.9
    )


@functools.cache
def get_api_settings() -> ApiSettings:
    return ApiSettings.from_env()
