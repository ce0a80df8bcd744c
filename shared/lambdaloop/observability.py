"""Logging, metrics and (optional) tracing, configured once per execution environment.

Log lines are JSON in the shape Powertools' Logger writes (its keys, in its order, with its
timestamp, exception and X-Ray fields, and the Lambda context of the invocation), written by
the small logger here. Importing Powertools costs 15-30 ms of cold start, whatever part of it
is used (its package loads the Logger, Metrics, Tracer, jmespath and botocore together), and
every request logs: its Logger would put all of that on every cold start. Powertools'
``POWERTOOLS_LOG_LEVEL``/``LOG_LEVEL``, Lambda's ``AWS_LAMBDA_LOG_LEVEL``,
``POWERTOOLS_LOGGER_SAMPLE_RATE``, ``POWERTOOLS_LOGGER_LOG_EVENT`` and ``POWERTOOLS_DEV`` keep
their meaning.

Metrics are Powertools' (CloudWatch EMF to stdout, no API call), imported by the first metric
recorded: an environment that records none never pays for them. The X-Ray SDK costs
150-250 ms at cold start, so the Tracer is built only when tracing is switched on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from lambdaloop.settings import get_runtime_settings

if TYPE_CHECKING:
    from aws_lambda_powertools import Metrics, Tracer

__all__ = [
    "JsonFormatter",
    "StructuredLogger",
    "flush_metrics",
    "get_logger",
    "get_metrics",
    "get_tracer",
    "route_logs",
    "set_correlation_id",
]

E = TypeVar("E")
T = TypeVar("T")

#: The attributes every LogRecord has; any other attribute is an ``extra`` and becomes a key.
#: Powertools' list as it is: ``taskName`` (Python 3.12+) is not in it, so a line logged
#: inside an asyncio task names its task there too.
_RECORD_ATTRIBUTES = frozenset(
    {
        "name",
        "msg",
        "args",
        "level",
        "levelname",
        "levelno",
        "pathname",
        "filename",
        "module",
        "exc_info",
        "exc_text",
        "stack_info",
        "lineno",
        "funcName",
        "created",
        "msecs",
        "relativeCreated",
        "thread",
        "threadName",
        "processName",
        "process",
        "asctime",
        "location",
        "timestamp",
    }
)

#: Lambda's Advanced Logging Controls level names, as the stdlib knows them.
_LAMBDA_LEVELS = {
    "TRACE": "NOTSET",
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARN": "WARNING",
    "ERROR": "ERROR",
    "FATAL": "CRITICAL",
}

_TRUE = ("1", "y", "yes", "t", "true", "on")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in _TRUE


class JsonFormatter(logging.Formatter):
    """One JSON object per record, key for key what Powertools' formatter writes.

    ``static_keys`` are on every line; :meth:`append_keys` adds keys until
    :meth:`clear_state`. A value that is a ``%(attribute)s`` template of a record attribute
    is filled from the record. Keys whose value is None are left out.
    """

    def __init__(self, **static_keys: Any) -> None:
        super().__init__()
        self._static: dict[str, Any] = {
            "level": "%(levelname)s",
            "location": "%(funcName)s:%(lineno)d",
            "message": None,
            "timestamp": "%(asctime)s",
            **static_keys,
        }
        self._keys = dict(self._static)
        self._dumps = functools.partial(
            json.dumps,
            default=str,
            separators=(",", ":"),
            indent=4 if _flag("POWERTOOLS_DEV") else None,  # readable when developing
            ensure_ascii=False,
        )

    @property
    def keys(self) -> dict[str, Any]:
        """The keys every line gets now (templates unfilled)."""
        return dict(self._keys)

    def append_keys(self, **keys: Any) -> None:
        self._keys.update(keys)

    def remove_keys(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._keys.pop(key, None)

    def clear_state(self) -> None:
        """Back to the static keys."""
        self._keys = dict(self._static)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # Local time with milliseconds before the zone: 2021-05-03 10:20:19,650+0200.
        pattern = f"%Y-%m-%d %H:%M:%S,{int(record.msecs):03d}%z"
        return time.strftime(pattern, self.converter(record.created))

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        values = {**fields, "asctime": self.formatTime(record)}
        line: dict[str, Any] = {}
        for key, value in self._keys.items():
            if value and key in _RECORD_ATTRIBUTES and isinstance(value, str):
                line[key] = value % values
            else:
                line[key] = value
        line.update((key, value) for key, value in fields.items() if key not in _RECORD_ATTRIBUTES)
        line["message"] = _message(record)
        exc_info = record.exc_info
        if isinstance(exc_info, tuple) and hasattr(exc_info[0], "__name__"):
            kind, error, tb = exc_info
            line["exception"] = line.get("exception", self.formatException(exc_info))
            line["exception_name"] = line.get("exception_name", kind.__name__)  # type: ignore[union-attr]
            line["exception_notes"] = line.get("exception_notes", getattr(error, "__notes__", None))
            line["stack_trace"] = {
                "type": kind.__name__,  # type: ignore[union-attr]
                "value": error,
                "module": error.__class__.__module__,
                "frames": [
                    {"file": f.filename, "line": f.lineno, "function": f.name, "statement": f.line}
                    for f in traceback.extract_tb(tb)
                ],
            }
        else:
            for key in ("exception", "exception_name", "exception_notes"):
                line[key] = line.get(key)
            line["stack_trace"] = None
        trace = os.environ.get("_X_AMZN_TRACE_ID")
        line["xray_trace_id"] = trace.split(";")[0].replace("Root=", "") if trace else None
        return self._dumps({key: value for key, value in line.items() if value is not None})


def _message(record: logging.LogRecord) -> Any:
    """A dict is logged as structure, and so is a message that is a JSON document."""
    message = record.msg
    if isinstance(message, dict):
        return message
    if record.args:
        return record.getMessage()
    if isinstance(message, str):
        try:
            return json.loads(message)
        except ValueError:
            pass
    return message


_cold_start = True


def _is_cold_start() -> bool:
    """True for the environment's first invocation (never under provisioned concurrency)."""
    global _cold_start  # noqa: PLW0603 - once per execution environment
    if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "provisioned-concurrency":
        _cold_start = False
        return False
    cold, _cold_start = _cold_start, False
    return cold


def _level() -> str | int:
    """Lambda's log level (Advanced Logging Controls) first, then Powertools' variables."""
    from_lambda = _LAMBDA_LEVELS.get(os.environ.get("AWS_LAMBDA_LOG_LEVEL", ""))
    if from_lambda:
        return from_lambda
    chosen = os.environ.get("POWERTOOLS_LOG_LEVEL") or os.environ.get("LOG_LEVEL")
    return chosen.upper() if chosen else logging.INFO


class StructuredLogger:
    """The environment's JSON logging: the stdlib loggers of the routed packages write their
    records through one handler (stdout) and one :class:`JsonFormatter`.

    Module code keeps logging with ``logging.getLogger(__name__)``; the handler routes its
    package once (:func:`route_logs`) and is wrapped in :meth:`inject_lambda_context`.
    """

    def __init__(self, service: str, **keys: Any) -> None:
        self.service = service
        self.sampling_rate = os.environ.get("POWERTOOLS_LOGGER_SAMPLE_RATE") or None
        self.formatter = JsonFormatter(
            service=service, sampling_rate=self.sampling_rate, **keys, name="%(name)s"
        )
        # Bound now, as Powertools does: a runtime that swaps sys.stdout first (the local
        # emulator sends it to stderr) gets the lines where it wants them.
        self.handler = logging.StreamHandler(sys.stdout)
        self.handler.setFormatter(self.formatter)
        self.level = _level()
        self._active_level = self.level  # DEBUG instead in a sampled invocation
        self.logger = logging.getLogger(service)
        self._routed: dict[str, logging.Logger] = {}
        self.route(service)
        self._sample(cold=True)

    def route(self, *packages: str) -> None:
        """Send the records of ``packages``' loggers (and their children's) to this logger's
        output, at its level, and no longer to the root logger's handlers."""
        for package in packages:
            logger = logging.getLogger(package)
            logger.handlers = [self.handler]
            logger.setLevel(self._active_level)
            logger.propagate = False  # the root's handlers would write the line twice
            self._routed[package] = logger

    def _sample(self, *, cold: bool) -> None:
        """With a sample rate, that share of invocations logs at DEBUG (decided per
        invocation, and once at cold start)."""
        if not self.sampling_rate:
            return
        import random

        try:
            debug = random.random() <= float(self.sampling_rate)
        except ValueError:
            raise ValueError(
                "POWERTOOLS_LOGGER_SAMPLE_RATE: must be a number from 0 to 1, "
                f"got {self.sampling_rate!r}"
            ) from None
        if debug or not cold:
            self._active_level = logging.DEBUG if debug else self.level
            for logger in self._routed.values():
                logger.setLevel(self._active_level)

    def append_keys(self, **keys: Any) -> None:
        self.formatter.append_keys(**keys)

    def remove_keys(self, keys: Iterable[str]) -> None:
        self.formatter.remove_keys(keys)

    def set_correlation_id(self, value: str | None) -> None:
        self.formatter.append_keys(correlation_id=value)

    def get_correlation_id(self) -> str | None:
        value: str | None = self.formatter.keys.get("correlation_id")
        return value

    @overload
    def inject_lambda_context(
        self,
        handler: Callable[[E, Any], T],
        *,
        clear_state: bool = False,
        log_event: bool | None = None,
    ) -> Callable[[E, Any], T]: ...

    @overload
    def inject_lambda_context(
        self,
        handler: None = None,
        *,
        clear_state: bool = False,
        log_event: bool | None = None,
    ) -> Callable[[Callable[[E, Any], T]], Callable[[E, Any], T]]: ...

    def inject_lambda_context(
        self,
        handler: Callable[[E, Any], T] | None = None,
        *,
        clear_state: bool = False,
        log_event: bool | None = None,
    ) -> Any:
        """Decorate a Lambda handler: each invocation's lines carry ``cold_start`` and the
        function's name, memory, ARN and request id (as Powertools' decorator of the same
        name). ``clear_state`` drops the keys the previous invocation added first (its
        correlation id among them)."""
        if handler is None:
            return functools.partial(
                self.inject_lambda_context, clear_state=clear_state, log_event=log_event
            )
        if log_event is None:
            log_event = _flag("POWERTOOLS_LOGGER_LOG_EVENT")
        wrapped = handler

        @functools.wraps(wrapped)
        def decorated(event: E, context: Any) -> T:
            cold = _is_cold_start()
            if clear_state:
                self.formatter.clear_state()
            self.formatter.append_keys(
                cold_start=cold,
                function_name=getattr(context, "function_name", "UNDEFINED"),
                function_memory_size=getattr(context, "memory_limit_in_mb", 128),
                function_arn=getattr(context, "invoked_function_arn", "UNDEFINED"),
                function_request_id=getattr(context, "aws_request_id", "UNDEFINED"),
            )
            if log_event:
                self.logger.info(event)
            if not cold:
                self._sample(cold=False)
            return wrapped(event, context)

        return decorated


@functools.cache
def get_logger() -> StructuredLogger:
    """The function's logger; the layer's own loggers (``lambdaloop.*``) write through it."""
    settings = get_runtime_settings()
    logger = StructuredLogger(settings.service, stage=settings.stage)
    logger.route("lambdaloop")
    return logger


def route_logs(*packages: str) -> None:
    """Send the standard-library loggers of ``packages`` through the function's logger.

    Library and function modules log with ``logging.getLogger(__name__)``; the handler
    calls this once so their records come out as the same JSON lines, with the same keys.
    """
    get_logger().route(*packages)


def set_correlation_id(value: str | None) -> None:
    get_logger().set_correlation_id(value)


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


def flush_metrics() -> None:
    """Write the metrics recorded so far as one EMF document; nothing when there are none.

    Never raises: losing a metric must not fail the invocation that recorded it.
    """
    if not get_metrics.cache_info().currsize:
        return  # nothing was ever recorded here (and Powertools need not be imported)
    metrics = get_metrics()
    if not metrics.metric_set:
        return
    try:
        metrics.flush_metrics()
    except Exception:
        logging.getLogger(__name__).exception("could not write the metrics")
        metrics.clear_metrics()
