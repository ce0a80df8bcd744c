"""The sample events in infra/events have the shapes API Gateway HTTP API (payload 2.0) and
Lambda's SQS event source send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lambdaloop_local.template import load_template

EVENTS = Path(__file__).resolve().parents[2] / "infra" / "events"
#: SQS events are named sqs-<consumer>-*.json, events of a direct invocation (no event
#: source) invoke-<function>-*.json; the rest are HTTP API events.
SQS_EVENT_FILES = sorted(EVENTS.glob("sqs-*.json"))
INVOKE_EVENT_FILES = sorted(EVENTS.glob("invoke-*.json"))
EVENT_FILES = sorted(set(EVENTS.glob("*.json")) - {*SQS_EVENT_FILES, *INVOKE_EVENT_FILES})


def _routes() -> set[str]:
    """Route keys of the template's HttpApi events ("GET /", "ANY /{proxy+}")."""
    return {
        f"{event['Properties']['Method'].upper()} {event['Properties']['Path']}"
        for function in load_template().functions()
        for event in function.events.values()
        if event.get("Type") == "HttpApi"
    }


def _load(path: Path) -> dict[str, Any]:
    event = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(event, dict)
    return event


def test_the_api_events_exist() -> None:
    assert {path.name for path in EVENT_FILES} >= {
        "api-root.json",
        "api-health.json",
        "api-not-found.json",
    }


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda path: path.name)
def test_event_is_an_http_api_v2_event(path: Path) -> None:
    event = _load(path)
    context = event["requestContext"]
    assert event["version"] == "2.0"
    assert event["rawPath"] == context["http"]["path"]
    assert event["routeKey"] == context["routeKey"]
    assert context["stage"] == "$default"
    assert isinstance(context["timeEpoch"], int)
    assert event["isBase64Encoded"] is False


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda path: path.name)
def test_event_route_is_a_route_of_the_template(path: Path) -> None:
    event = _load(path)
    assert event["routeKey"] in _routes() | {"$default"}
    if event["routeKey"].endswith("/{proxy+}"):
        assert "/" + event["pathParameters"]["proxy"] == event["rawPath"]


@pytest.mark.parametrize("path", SQS_EVENT_FILES, ids=lambda path: path.name)
def test_sqs_event_records_have_lambdas_shape(path: Path) -> None:
    records = _load(path)["Records"]
    assert records
    for record in records:
        assert record["eventSource"] == "aws:sqs"
        assert record["eventSourceARN"].startswith("arn:aws:sqs:")
        assert int(record["attributes"]["ApproximateReceiveCount"]) >= 1
        assert {"messageId", "receiptHandle", "body", "messageAttributes"} <= record.keys()
