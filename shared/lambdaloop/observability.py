"""Logging, metrics and (optional) tracing, configured once per execution environment.

Powertools' Logger gives JSON lines with the Lambda context and a correlation id, and its
Metrics write CloudWatch EMF to stdout (no API call). The X-Ray SDK costs 150-250 ms at
cold start, so the Tracer is built only when tracing is switched on.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from lambdaloop.settings import get_runtime_settings

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics, Tracer

__all__ = [
    "flush_metrics",
    "get_logger",
    "get_metrics",
    "get_tracer",
    "route_logs",
    "set_correlation_id",
]


@functools.cache
def get_logger() -> Logger:
    """The function's Powertools Logger; the layer's own loggers share its JSON output."""
    from aws_lambda_powertools import Logger

    settings = get_runtime_settings()
    logger = Logger(service=settings.service, stage=settings.stage)
    _route(logger, {"lambdaloop"})
    return logger


def route_logs(*packages: str) -> None:
    """Send the standard-library loggers of ``packages`` through the Powertools Logger.

    Library and function modules log with ``logging.getLogger(__name__)``; the handler
    calls this once so their records come out as the same JSON lines, with the same keys.
    """
    _route(get_logger(), set(packages))


def _route(logger: Logger, packages: set[str]) -> None:
    from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

    for package in packages:
        logging.getLogger(package)  # powertools configures registered top-level loggers only
    copy_config_to_registered_loggers(source_logger=logger, include=packages)


@functools.cache
def get_metrics() -> Metrics:
    from aws_lambda_powertools import Metrics

    settings = get_runtime_settings()
    metrics = Metrics(service=settings.service, namespace=settings.metrics_namespace)
    metrics.set_default_dimensions(stage=settings.stage)
    return metrics


@functools.cache
def get_tracer() -> Tracer | None:
    """The X-Ray tracer when tracing is enabled (``POWERTOOLS_TRACE_DISABLED=false``)."""
    if not get_runtime_settings().tracing:
        return None
    from aws_lambda_powertools import Tracer

    return Tracer(service=get_runtime_settings().service)


def set_correlation_id(value: str | None) -> None:
    get_logger().set_correlation_id(value)


def flush_metrics() -> None:
    """Write the metrics recorded so far as one EMF document; nothing when there are none.

    Never raises: losing a metric must not fail the invocation that recorded it.
    """
    metrics = get_metrics()
    if not metrics.metric_set:
        return
    try:
        metrics.flush_metrics()
    except Exception:
        logging.getLogger(__name__).exception("could not write the metrics")
        metrics.clear_metrics()
