"""Lambda entry point of the jobs function (Handler: jobs.handler.handler).

SQS event source (BatchSize 1, ReportBatchItemFailures): one job part per invocation, run
through the idempotency guard keyed by the part's envelope id. Module scope is the cold
start: settings are checked here; clients are built on first use.
"""

from __future__ import annotations

from typing import Any

from jobs.runner import FetchJobRunner
from jobs.settings import JobsSettings, get_jobs_settings
from lambdaloop.blobs import Bucket
from lambdaloop.consumer import RetryPolicy, SqsProcessor
from lambdaloop.idempotency import IdempotencyGuard
from lambdaloop.jobs import JobStore
from lambdaloop.messages import FETCH
from lambdaloop.observability import get_logger, route_logs
from lambdaloop.queue import Publisher
from lambdaloop.runtime import lambda_handler
from lambdaloop.settings import get_runtime_settings
from lambdaloop.ssrf import Policy
from lambdaloop.store import Table

__all__ = ["build_processor", "handler"]


def build_processor(settings: JobsSettings, *, local_mode: bool = False) -> SqsProcessor:
    runner = FetchJobRunner(
        JobStore(Table(settings.jobs_table)),
        Publisher(settings.queue_url),
        settings,
        policy=Policy.for_user_urls(local_mode),  # users choose the URLs
        bodies=Bucket(settings.results_bucket) if settings.results_bucket else None,
    )
    return SqsProcessor(
        {FETCH: runner},
        # A part uses the invocation's whole fan-out (the job's own concurrency).
        concurrency=1,
        give_up={FETCH: runner.give_up},
        max_receive_count=settings.max_attempts,
        guard=IdempotencyGuard(
            Table(settings.idempotency_table, key_schema=("id",)),
            expires_after_s=settings.idempotency_expires_s,
        ),
        retry=RetryPolicy(settings.queue_url),
    )


_processor = build_processor(get_jobs_settings(), local_mode=get_runtime_settings().local_mode)
route_logs("jobs")


@get_logger().inject_lambda_context(clear_state=True)
@lambda_handler
async def handler(event: dict[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
    return await _processor.process(event)
