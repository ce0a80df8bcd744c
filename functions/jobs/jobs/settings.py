"""The jobs function's settings, read once at cold start."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from lambdaloop.settings import EnvReader

__all__ = ["JobsSettings", "get_jobs_settings"]


@dataclass(frozen=True, slots=True)
class JobsSettings:
    jobs_table: str
    idempotency_table: str
    queue_url: str
    #: The queue's maxReceiveCount: the attempt that reaches it is the last one.
    max_attempts: int
    #: Seconds kept for storing results and publishing the next part: no URL is started
    #: once the invocation has less than ``fetch_timeout_s`` + this left, and the URLs
    #: still in flight when it has less than this are cancelled (fetched by the next part).
    part_margin_s: float
    #: Results are stored in batches: every ``flush_every`` results, or when the oldest
    #: unstored result is ``flush_interval_s`` old, and at the end of a part.
    flush_every: int
    flush_interval_s: float
    fetch_connect_timeout_s: float
    #: One attempt of one URL (redirects and body included).
    fetch_timeout_s: float
    fetch_max_body_bytes: int
    fetch_max_attempts: int
    #: How long idempotency records live: longer than maxReceiveCount x visibility timeout.
    idempotency_expires_s: int
    #: The bucket for the bodies of jobs that ask for them (``store_bodies``); None: no
    #: bucket, such jobs are refused by the API and fail here.
    results_bucket: str | None = None
    #: The body cap of a job that stores bodies (they are held in memory until stored:
    #: up to ``concurrency`` x this at once).
    stored_body_max_bytes: int = 1024 * 1024
    #: Bodies uploaded at once (each upload is a boto3 call in the bounded thread pool).
    upload_concurrency: int = 16

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> JobsSettings:
        env = EnvReader(environ)
        settings = cls(
            jobs_table=env.text("JOBS_TABLE"),
            idempotency_table=env.text("IDEMPOTENCY_TABLE"),
            queue_url=env.url("JOBS_QUEUE_URL", ("https", "http")),
            max_attempts=env.integer("JOBS_MAX_ATTEMPTS", 5, minimum=1, maximum=1000),
            part_margin_s=env.number("JOBS_PART_MARGIN_S", 5.0, minimum=0, maximum=900),
            flush_every=env.integer("JOBS_FLUSH_EVERY", 50, minimum=1, maximum=10_000),
            flush_interval_s=env.number("JOBS_FLUSH_INTERVAL_S", 1.0, minimum=0, maximum=900),
            fetch_connect_timeout_s=env.number(
                "FETCH_CONNECT_TIMEOUT_S", 3.0, minimum=0.01, maximum=60
            ),
            fetch_timeout_s=env.number("FETCH_TIMEOUT_S", 10.0, minimum=0.01, maximum=900),
            fetch_max_body_bytes=env.integer(
                "FETCH_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=0, maximum=1024**3
            ),
            fetch_max_attempts=env.integer("FETCH_MAX_ATTEMPTS", 3, minimum=1, maximum=10),
            idempotency_expires_s=env.integer(
                "IDEMPOTENCY_EXPIRES_S", 86_400, minimum=60, maximum=30 * 86_400
            ),
            results_bucket=env.optional_text("JOBS_RESULTS_BUCKET"),
            stored_body_max_bytes=env.integer(
                "JOBS_STORED_BODY_MAX_BYTES", 1024 * 1024, minimum=0, maximum=100 * 1024 * 1024
            ),
            upload_concurrency=env.integer("JOBS_UPLOAD_CONCURRENCY", 16, minimum=1, maximum=64),
        )
        env.check()
        return settings


@functools.cache
def get_jobs_settings() -> JobsSettings:
    return JobsSettings.from_env()
