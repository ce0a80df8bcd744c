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
    notify_queue_url: str
    #: Each dependency check of GET /health gets this long, all of them at once.
    health_timeout_s: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        env = EnvReader(environ)
        settings = cls(
            users_table=env.text("USERS_TABLE"),
            notify_queue_url=env.url("NOTIFY_QUEUE_URL", ("https", "http")),
            health_timeout_s=env.number("LAMBDALOOP_HEALTH_TIMEOUT_S", 1.0, minimum=0.01),
        )
        env.check()
        return settings


@functools.cache
def get_api_settings() -> ApiSettings:
    return ApiSettings.from_env()
