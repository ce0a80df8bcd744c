"""Logs and metrics: the layer's JSON lines are Powertools' Logger's, key for key; each
invocation's lines carry the Lambda context; metrics are Powertools' EMF, which only an
environment that records a metric pays for."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from lambdaloop import observability
from lambdaloop.observability import JsonFormatter, StructuredLogger
from support import lambda_context


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _records(monkeypatch: pytest.MonkeyPatch) -> list[logging.LogRecord]:
    """Records of every shape a function logs: plain, with arguments, a dict, a JSON string,
    extras, an exception with a note, an extra that names an exception field, inside an
    asyncio task, with an X-Ray trace id."""
    handler = Records()
    log = logging.getLogger("equivalence.module")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        log.info("plain")
        log.info("a %s b %d", "s", 3)
        log.info({"k": 1})
        log.info('{"j": [1, 2]}')
        log.info("123")
        log.warning("with extras", extra={"status": 200, "duration_ms": 1.5, "obj": object()})
        try:
            raise ValueError("boom")
        except ValueError as exc:
            exc.add_note("a note")
            log.exception("failed %s", "it")
        log.error("overridden", extra={"exception": "mine", "stack_trace": "mine"})

        async def in_a_task() -> None:
            log.info("in a task")

        asyncio.run(in_a_task())
        monkeypatch.setenv("_X_AMZN_TRACE_ID", "Root=1-abc-def;Parent=2;Sampled=0")
        log.info("traced")
    finally:
        log.removeHandler(handler)
    return handler.records


def test_lines_are_powertools_lines_key_for_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given Powertools' formatter and the layer's, with the keys a function's lines carry
    keys: dict[str, Any] = {"service": "svc", "sampling_rate": None, "stage": "dev"}
    context = {
        "cold_start": True,
        "function_name": "fn",
        "function_memory_size": 1024,
        "function_arn": "arn:aws:lambda:eu-west-1:123456789012:function:fn",
        "function_request_id": "req-1",
        "correlation_id": "corr-1",
    }
    powertools = LambdaPowertoolsFormatter(**keys)
    powertools.append_keys(**keys, name="%(name)s", **context)
    ours = JsonFormatter(**keys, name="%(name)s")
    ours.append_keys(**context)

    # When they format the same records, Then the lines are the same, to the byte
    for record in _records(monkeypatch):
        assert ours.format(record) == powertools.format(record), record.getMessage()


@pytest.fixture
def logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[StructuredLogger, io.StringIO]]:
    monkeypatch.delenv("POWERTOOLS_LOG_LEVEL", raising=False)
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    monkeypatch.delenv("AWS_LAMBDA_LOG_LEVEL", raising=False)
    monkeypatch.setattr(observability, "_cold_start", True)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    structured = StructuredLogger("obs-test", stage="unit")
    structured.route("obs_test_package")
    try:
        yield structured, stream
    finally:
        for name in ("obs-test", "obs_test_package"):
            routed = logging.getLogger(name)
            routed.handlers = []
            routed.propagate = True
            routed.setLevel(logging.NOTSET)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_invocation_logs_its_lambda_context(
    logger: tuple[StructuredLogger, io.StringIO],
) -> None:
    structured, stream = logger
    package = logging.getLogger("obs_test_package.module")

    @structured.inject_lambda_context(clear_state=True)
    def handler(event: dict[str, Any], context: Any) -> None:
        if event.get("correlate"):
            structured.set_correlation_id("corr-1")
        package.info("handled %s", event["n"], extra={"status": 200})

    first_context = lambda_context(name="fn")
    handler({"n": 1, "correlate": True}, first_context)
    handler({"n": 2}, lambda_context(name="fn"))
    package.debug("below the level")

    first, second = _lines(stream)
    assert list(first)[:6] == ["level", "location", "message", "timestamp", "service", "stage"]
    assert first["level"] == "INFO"
    assert first["message"] == "handled 1"
    assert first["service"] == "obs-test"
    assert first["stage"] == "unit"
    assert first["name"] == "obs_test_package.module"
    assert first["location"].startswith("handler:")
    assert first["function_name"] == "fn"
    assert first["function_request_id"] == first_context.aws_request_id
    assert first["function_arn"] == first_context.invoked_function_arn
    assert first["function_memory_size"] == first_context.memory_limit_in_mb
    assert first["status"] == 200
    assert (first["cold_start"], second["cold_start"]) == (True, False)
    assert first["correlation_id"] == "corr-1"
    assert "correlation_id" not in second  # clear_state: not carried to the next invocation
    assert second["message"] == "handled 2"


def test_the_level_comes_from_powertools_then_lambdas_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "warning")
    assert StructuredLogger("obs-level").logger.level == logging.WARNING
    monkeypatch.setenv("AWS_LAMBDA_LOG_LEVEL", "DEBUG")  # Lambda's own control comes first
    assert StructuredLogger("obs-level").logger.level == logging.DEBUG
    logging.getLogger("obs-level").handlers = []


def test_an_environment_that_records_no_metric_writes_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An environment where nothing has asked for the metrics yet
    fresh = functools.cache(observability.get_metrics.__wrapped__)
    monkeypatch.setattr(observability, "get_metrics", fresh)

    observability.flush_metrics()

    assert fresh.cache_info().currsize == 0  # not even built
    assert capsys.readouterr().out == ""


def test_recorded_metrics_are_written_as_one_emf_document(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # (The environment's one Metrics: Powertools shares their state between instances.)
    metrics = observability.get_metrics()
    capsys.readouterr()
    metrics.add_metric(name="CacheErrors", unit="Count", value=1)
    metrics.add_metric(name="CacheErrors", unit="Count", value=1)

    observability.flush_metrics()

    [document] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    [directive] = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == metrics.namespace
    assert document["CacheErrors"] == [1.0, 1.0]
    assert "stage" in document
    assert not metrics.metric_set  # flushed


_WHAT_A_REQUEST_IMPORTS = """
import json, sys
import api.handler

at_init = set(sys.modules)


class Context:
    function_name = "api"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:api"
    aws_request_id = "request-1"

    def get_remaining_time_in_millis(self):
        return 10_000


event = {
    "version": "2.0",
    "routeKey": "GET /",
    "rawPath": "/",
    "rawQueryString": "",
    "headers": {"host": "api.test"},
    "requestContext": {
        "http": {"method": "GET", "path": "/", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"},
        "requestId": "request-1",
        "routeKey": "GET /",
        "stage": "$default",
    },
    "isBase64Encoded": False,
}
response = api.handler.handler(event, Context())
print(json.dumps({
    "status": response["statusCode"],
    "init": sorted(at_init),
    "after_request": sorted(set(sys.modules)),
}))
"""

#: What the API's cold start must not import: FastAPI's pydantic.v1 probe, Powertools (every
#: request logs, through the layer's own logger), the SDKs (imported by the first call that
#: needs each), and the layer modules only some routes use.
NOT_AT_INIT = (
    "pydantic.v1",
    "aws_lambda_powertools",
    "boto3",
    "botocore",
    "redis",
    "aiohttp",
    "lambdaloop.store",
    "lambdaloop.fetch",
    "lambdaloop.ssrf",
    "lambdaloop.jobs",
    "lambdaloop.idempotency",
    "api.users.service",
    "api.jobs.service",
)


def test_the_api_cold_start_imports_only_what_a_request_needs() -> None:
    root = Path(__file__).parents[2]
    environment = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{root / 'functions' / 'api'}:{root / 'shared'}",
        "USERS_TABLE": "users",
        "NOTIFICATIONS_TABLE": "notifications",
        "NOTIFY_QUEUE_URL": "http://127.0.0.1:9/000000000000/notify",
        "JOBS_TABLE": "jobs",
        "IDEMPOTENCY_TABLE": "idempotency",
        "REDIS_URL": "redis://127.0.0.1:9/0",
        "AWS_REGION": "us-east-1",
    }
    done = subprocess.run(
        [sys.executable, "-c", _WHAT_A_REQUEST_IMPORTS],
        env=environment,
        cwd=root / "functions" / "api",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])

    assert outcome["status"] == 200
    assert "api.handler" in outcome["init"]
    for loaded in ("init", "after_request"):
        modules = set(outcome[loaded])
        unwanted = sorted(
            name
            for name in modules
            if any(name == m or name.startswith(f"{m}.") for m in NOT_AT_INIT)
        )
        assert unwanted == [], f"{loaded}: {unwanted}"
