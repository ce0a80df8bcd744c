"""The relay function's settings, read once at cold start."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from lambdaloop.settings import EnvReader

__all__ = ["RelaySettings", "get_relay_settings"]


@dataclass(frozen=True, slots=True)
class RelaySettings:
    notify_queue_url: str
    jobs_queue_url: str
    compute_queue_url: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RelaySettings:
        env = EnvReader(environ)
        settings = cls(
            notify_queue_url=env.url("NOTIFY_QUEUE_URL", ("https", "http")),
            jobs_queue_url=env.url("JOBS_QUEUE_URL", ("https", "http")),
            compute_queue_url=env.url("COMPUTE_QUEUE_URL", ("https", "http")),
        )
        env.check()
        return settings


@functools.cache
def get_relay_settings() -> RelaySettings:
    return RelaySettings.from_env()
