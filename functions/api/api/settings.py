"""The API function's settings, read once at cold start."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from lambdaloop.settings import EnvReader

__all__ = ["ApiSettings", "get_api_settings"]


@dataclass(frozen=True, slots=True)
class ApiSettings:
    users_table: str
    notifications_table: str
    #: The notify queue, whose attributes GET /health reads (the relay function publishes).
    notify_queue_url: str
    #: How long notification records are kept (the table's TTL removes them after).
    notification_retention_days: int
    jobs_table: str
    #: How long job records and their results are kept (the table's TTL removes them after).
    job_retention_days: int
    #: Where fetch jobs with ``store_bodies`` keep bodies; None: such jobs are refused.
    jobs_results_bucket: str | None
    #: Jobs (fetch and compute) a tenant may have queued or running at once.
    jobs_in_flight_limit: int
    #: Where POSTs with an Idempotency-Key keep their answers, and for how long.
    idempotency_table: str
    idempotency_expires_s: int
    #: Each dependency check of GET /health gets this long, all of them at once.
    health_timeout_s: float
    max_body_bytes: int
    cache_enabled: bool
    cache_ttl_s: float
    #: Consecutive Redis failures that open the circuit, and how long it stays open.
    breaker_failures: int
    breaker_reset_s: float
    #: The share of the invocation's time a request may spend on its calls (the rest is
    #: left to answer 503 and to undo a half-done write).
    request_budget_share: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        env = EnvReader(environ)
        settings = cls(
            users_table=env.text("USERS_TABLE"),
            notifications_table=env.text("NOTIFICATIONS_TABLE"),
            notify_queue_url=env.url("NOTIFY_QUEUE_URL", ("https", "http")),
            notification_retention_days=env.integer(
                "NOTIFICATION_RETENTION_DAYS", 30, minimum=1, maximum=3650
            ),
            jobs_table=env.text("JOBS_TABLE"),
            job_retention_days=env.integer("JOB_RETENTION_DAYS", 30, minimum=1, maximum=3650),
            jobs_results_bucket=env.optional_text("JOBS_RESULTS_BUCKET"),
            jobs_in_flight_limit=env.integer("JOBS_IN_FLIGHT_LIMIT", 10, minimum=1, maximum=1000),
            idempotency_table=env.text("IDEMPOTENCY_TABLE"),
            idempotency_expires_s=env.integer(
                "IDEMPOTENCY_EXPIRES_S", 86_400, minimum=60, maximum=30 * 86_400
            ),
            health_timeout_s=env.number("LAMBDALOOP_HEALTH_TIMEOUT_S", 1.0, minimum=0.01),
            max_body_bytes=env.integer("LAMBDALOOP_MAX_BODY_BYTES", 256 * 1024, minimum=1024),
            cache_enabled=env.flag("LAMBDALOOP_CACHE_ENABLED", True),
            cache_ttl_s=env.number("USERS_CACHE_TTL_S", 300.0, minimum=1, maximum=86_400),
            breaker_failures=env.integer("LAMBDALOOP_BREAKER_FAILURES", 3, minimum=1),
            breaker_reset_s=env.number("LAMBDALOOP_BREAKER_RESET_S", 10.0, minimum=0.1),
            request_budget_share=env.number(
                "LAMBDALOOP_REQUEST_BUDGET_SHARE", 0.6, minimum=0.1, maximum=0.9
            ),
        )
        env.check()
        return settings


@functools.cache
def get_api_settings() -> ApiSettings:
    return ApiSettings.from_env()
