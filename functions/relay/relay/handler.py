"""Lambda entry point of the relay function (Handler: relay.handler.handler).

DynamoDB stream event sources (the notifications and jobs tables, new records only, by
their filters) with ReportBatchItemFailures. Module scope is the cold start: settings are
checked here; clients are built on first use.
"""

from __future__ import annotations

from typing import Any

from lambdaloop.observability import get_logger, route_logs
from lambdaloop.queue import Publisher
from lambdaloop.runtime import lambda_handler
from relay.relay import Relay
from relay.settings import RelaySettings, get_relay_settings

__all__ = ["build_relay", "handler"]


def build_relay(settings: RelaySettings) -> Relay:
    return Relay(
        {
            "notify": Publisher(settings.notify_queue_url),
            "jobs": Publisher(settings.jobs_queue_url),
            "compute": Publisher(settings.compute_queue_url),
        }
    )


_relay = build_relay(get_relay_settings())
route_logs("relay")


@get_logger().inject_lambda_context(clear_state=True)
@lambda_handler
async def handler(event: dict[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
    return await _relay.process(event)
