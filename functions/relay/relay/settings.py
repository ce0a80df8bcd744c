"""The relay function's settings, read once at cold start."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lambdaloop.settings import Settings, url

__all__ = ["RelaySettings", "get_relay_settings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RelaySettings(Settings):
    notify_queue_url: str = url("NOTIFY_QUEUE_URL")
    jobs_queue_url: str = url("JOBS_QUEUE_URL")
    compute_queue_url: str = url("COMPUTE_QUEUE_URL")


@functools.cache
def get_relay_settings() -> RelaySettings:
    return RelaySettings.from_env()
