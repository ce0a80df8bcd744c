"""The jobs function's settings, read once at cold start."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lambdaloop.settings import Settings, integer, number, optional_text, text, url

__all__ = ["JobsSettings", "get_jobs_settings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobsSettings(Settings):
    jobs_table: str = text("JOBS_TABLE")
    idempotency_table: str = text("IDEMPOTENCY_TABLE")
    queue_url: str = url("JOBS_QUEUE_URL")
    #: The queue's maxReceiveCount: the attempt that reaches it is the last one.
    max_attempts: int = integer("JOBS_MAX_ATTEMPTS", 5, minimum=1, maximum=1000)
    #: Seconds kept for storing results and publishing the next part: no URL is started
    #: once the invocation has less than ``fetch_timeout_s`` + this left, and the URLs
    #: still in flight when it has less than this are cancelled (fetched by the next part).
    part_margin_s: float = number("JOBS_PART_MARGIN_S", 5.0, minimum=0, maximum=900)
    #: Results are stored in batches: every ``flush_every`` results, or when the oldest
    #: unstored result is ``flush_interval_s`` old, and at the end of a part.
    flush_every: int = integer("JOBS_FLUSH_EVERY", 50, minimum=1, maximum=10_000)
    flush_interval_s: float = number("JOBS_FLUSH_INTERVAL_S", 1.0, minimum=0, maximum=900)
    fetch_connect_timeout_s: float = number(
        "FETCH_CONNECT_TIMEOUT_S", 3.0, minimum=0.01, maximum=60
    )
    #: One attempt of one URL (redirects and body included).
    fetch_timeout_s: float = number("FETCH_TIMEOUT_S", 10.0, minimum=0.01, maximum=900)
    fetch_max_body_bytes: int = integer(
        "FETCH_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=0, maximum=1024**3
    )
    fetch_max_attempts: int = integer("FETCH_MAX_ATTEMPTS", 3, minimum=1, maximum=10)
    #: How long idempotency records live: longer than maxReceiveCount x visibility timeout.
    idempotency_expires_s: int = integer(
        "IDEMPOTENCY_EXPIRES_S", 86_400, minimum=60, maximum=30 * 86_400
    )
    #: The bucket for the bodies of jobs that ask for them (``store_bodies``); None: no
    #: bucket, such jobs are refused by the API and fail here.
    results_bucket: str | None = optional_text("JOBS_RESULTS_BUCKET")
    #: The body cap of a job that stores bodies (they are held in memory until stored:
    #: up to ``concurrency`` x this at once).
    stored_body_max_bytes: int = integer(
        "JOBS_STORED_BODY_MAX_BYTES", 1024 * 1024, minimum=0, maximum=100 * 1024 * 1024
    )
    #: Bodies uploaded at once (each upload is a boto3 call in the bounded thread pool).
    upload_concurrency: int = integer("JOBS_UPLOAD_CONCURRENCY", 16, minimum=1, maximum=64)


@functools.cache
def get_jobs_settings() -> JobsSettings:
    return JobsSettings.from_env()
