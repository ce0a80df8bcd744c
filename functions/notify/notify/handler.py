"""Lambda entry point of the notify function (Handler: notify.handler.handler).

SQS event source with ReportBatchItemFailures: the handler returns the records that did not
succeed, and never fails the batch for one record. Module scope is the cold start: settings
are checked here; clients are built on first use.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from lambdaloop.consumer import RetryPolicy, SqsProcessor
from lambdaloop.idempotency import IdempotencyGuard
from lambdaloop.messages import DELIVER
from lambdaloop.observability import get_logger, route_logs
from lambdaloop.runtime import lambda_handler
from lambdaloop.secrets_manager import SecretsManager
from lambdaloop.settings import get_runtime_settings
from lambdaloop.ssrf import Policy, guarded_session
from lambdaloop.store import Table
from notify.delivery import Deliverer
from notify.settings import NotifySettings, get_notify_settings

__all__ = ["build_processor", "handler"]


def build_processor(settings: NotifySettings, *, local_mode: bool = False) -> SqsProcessor:
    policy = Policy.for_user_urls(local_mode)  # users choose webhook URLs
    deliverer = Deliverer(
        Table(settings.notifications_table, key_schema=("pk",)),
        SecretsManager(),
        lambda: guarded_session(policy),
        secret_id=settings.signing_secret_id,
        timeout=aiohttp.ClientTimeout(
            total=settings.webhook_timeout_s, sock_connect=settings.webhook_connect_timeout_s
        ),
    )
    return SqsProcessor(
        {DELIVER: deliverer},
        concurrency=settings.concurrency,
        give_up={DELIVER: deliverer.give_up},
        max_receive_count=settings.max_attempts,
        guard=IdempotencyGuard(
            Table(settings.idempotency_table, key_schema=("id",)),
            expires_after_s=settings.idempotency_expires_s,
        ),
        retry=RetryPolicy(
            settings.queue_url, base_s=settings.retry_base_s, max_s=settings.retry_max_s
        ),
    )


_processor = build_processor(get_notify_settings(), local_mode=get_runtime_settings().local_mode)
route_logs("notify")


@get_logger().inject_lambda_context(clear_state=True)
@lambda_handler
async def handler(event: dict[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
    return await _processor.process(event)
