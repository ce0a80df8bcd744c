"""Typed settings from the environment, read once per execution environment.

Each concern has its own frozen dataclass and a cached getter, so a function reads only what
it uses and a bad variable fails the cold start with a message that names it. Tests set the
environment first and call :func:`reset_settings`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar, cast
from urllib.parse import urlsplit

from lambdaloop.errors import SettingsError

__all__ = [
    "AwsSettings",
    "EnvReader",
    "HttpSettings",
    "RedisSettings",
    "RuntimeSettings",
    "get_aws_settings",
    "get_http_settings",
    "get_redis_settings",
    "get_runtime_settings",
    "reset_settings",
]

T = TypeVar("T")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class EnvReader:
    """Reads typed values from an environment and collects every problem before failing."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._problems: dict[str, str] = {}

    def _get(self, name: str, parse: Callable[[str], T], default: T | None) -> T:
        # A bad value is returned as None while problems are collected: check() raises first.
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            if default is None:
                self._problems[name] = "is required but not set"
                return cast(T, None)
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            self._problems[name] = f"{exc} (got {raw!r})"
            return cast(T, None)

    def text(self, name: str, default: str | None = None) -> str:
        return self._get(name, _parse_str, default)

    def optional_text(self, name: str) -> str | None:
        raw = self._environ.get(name, "").strip()
        return raw or None

    def flag(self, name: str, default: bool) -> bool:
        return self._get(name, _parse_bool, default)

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
        return self._get(name, _ranged(int, "a whole number", minimum, maximum), default)

    def number(
        self, name: str, default: float, *, minimum: float = 0.0, maximum: float = 3600.0
    ) -> float:
        return self._get(name, _ranged(float, "a number", minimum, maximum), default)

    def url(self, name: str, schemes: tuple[str, ...], default: str | None = None) -> str:
        def parse(raw: str) -> str:
            parts = urlsplit(raw)
            if parts.scheme not in schemes or not parts.hostname:
                raise ValueError(f"must be a URL with scheme {' or '.join(schemes)} and a host")
            return raw

        return self._get(name, parse, default)

    def check(self) -> None:
        """Raise :class:`SettingsError` naming every variable that was missing or invalid."""
        if self._problems:
            raise SettingsError(self._problems)


def _parse_str(raw: str) -> str:
    return raw


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("must be true or false")


def _ranged(
    kind: Callable[[str], T], noun: str, minimum: float, maximum: float
) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"must be {noun}") from None
        if not minimum <= value <= maximum:  # type: ignore[operator]
            raise ValueError(f"must be between {minimum} and {maximum}")
        return value

    return parse


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    service: str
    stage: str
    metrics_namespace: str
    local_mode: bool
    #: Seconds kept in reserve before Lambda's own timeout, to cancel and report cleanly.
    deadline_margin_s: float
    tracing: bool

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeSettings:
        env = EnvReader(environ)
        service = env.text("POWERTOOLS_SERVICE_NAME", "lambdaloop")
        settings = cls(
            service=service,
            stage=env.text("LAMBDALOOP_STAGE", "local"),
            metrics_namespace=env.text("POWERTOOLS_METRICS_NAMESPACE", service),
            local_mode=env.flag("LAMBDALOOP_LOCAL", False),
            deadline_margin_s=env.number("LAMBDALOOP_DEADLINE_MARGIN_S", 0.5, maximum=60),
            tracing=not env.flag("POWERTOOLS_TRACE_DISABLED", True),
        )
        env.check()
        return settings


@dataclass(frozen=True, slots=True)
class AwsSettings:
    region: str | None
    connect_timeout_s: float
    read_timeout_s: float
    max_attempts: int
    #: botocore's connection pool per client; the blocking-call thread pool matches it.
    max_pool_connections: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AwsSettings:
        env = EnvReader(environ)
        settings = cls(
            region=env.optional_text("AWS_REGION") or env.optional_text("AWS_DEFAULT_REGION"),
            connect_timeout_s=env.number("LAMBDALOOP_AWS_CONNECT_TIMEOUT_S", 1.0, minimum=0.01),
            read_timeout_s=env.number("LAMBDALOOP_AWS_READ_TIMEOUT_S", 3.0, minimum=0.01),
            max_attempts=env.integer("LAMBDALOOP_AWS_MAX_ATTEMPTS", 3, minimum=1, maximum=10),
            max_pool_connections=env.integer("LAMBDALOOP_AWS_POOL_SIZE", 32, minimum=1),
        )
        env.check()
        return settings


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str
    # redis-py's defaults make a dead Redis cost seconds per call; a cache must fail fast.
    connect_timeout_s: float
    socket_timeout_s: float
    max_connections: int
    #: How long a call waits for a free connection when all are busy.
    pool_timeout_s: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RedisSettings:
        env = EnvReader(environ)
        settings = cls(
            url=env.url("REDIS_URL", ("redis", "rediss")),
            connect_timeout_s=env.number("LAMBDALOOP_REDIS_CONNECT_TIMEOUT_S", 0.25, minimum=0.01),
            socket_timeout_s=env.number("LAMBDALOOP_REDIS_TIMEOUT_S", 0.1, minimum=0.01),
            max_connections=env.integer("LAMBDALOOP_REDIS_MAX_CONNECTIONS", 64, minimum=1),
            pool_timeout_s=env.number("LAMBDALOOP_REDIS_POOL_TIMEOUT_S", 0.5, minimum=0.01),
        )
        env.check()
        return settings


@dataclass(frozen=True, slots=True)
class HttpSettings:
    connect_timeout_s: float
    total_timeout_s: float
    #: aiohttp's default of 100 connections silently caps larger fan-outs.
    limit: int
    limit_per_host: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HttpSettings:
        env = EnvReader(environ)
        settings = cls(
            connect_timeout_s=env.number("LAMBDALOOP_HTTP_CONNECT_TIMEOUT_S", 2.0, minimum=0.01),
            total_timeout_s=env.number("LAMBDALOOP_HTTP_TIMEOUT_S", 10.0, minimum=0.01),
            limit=env.integer("LAMBDALOOP_HTTP_LIMIT", 256, minimum=1, maximum=10_000),
            limit_per_host=env.integer("LAMBDALOOP_HTTP_LIMIT_PER_HOST", 0, maximum=10_000),
        )
        env.check()
        return settings


@functools.cache
def get_runtime_settings() -> RuntimeSettings:
    return RuntimeSettings.from_env()


@functools.cache
def get_aws_settings() -> AwsSettings:
    return AwsSettings.from_env()


@functools.cache
def get_redis_settings() -> RedisSettings:
    return RedisSettings.from_env()


@functools.cache
def get_http_settings() -> HttpSettings:
    return HttpSettings.from_env()


def reset_settings() -> None:
    """Forget the settings read so far (tests change the environment between cases)."""
    for getter in (get_runtime_settings, get_aws_settings, get_redis_settings, get_http_settings):
        getter.cache_clear()
