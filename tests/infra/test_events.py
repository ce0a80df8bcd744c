"""The sample events in infra/events have the shapes API Gateway HTTP API (payload 2.0) and
Lambda's SQS and DynamoDB Streams event sources send."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from lambdaloop_local.template import load_template

EVENTS = Path(__file__).resolve().parents[2] / "infra" / "events"
#: SQS events are named sqs-<consumer>-*.json, DynamoDB Streams events stream-<table>-*.json,
#: events of a direct invocation (no event source) invoke-<function>-*.json; the rest are HTTP
#: API events.
SQS_EVENT_FILES = sorted(EVENTS.glob("sqs-*.json"))
STREAM_EVENT_FILES = sorted(EVENTS.glob("stream-*.json"))
INVOKE_EVENT_FILES = sorted(EVENTS.glob("invoke-*.json"))
EVENT_FILES = sorted(
    set(EVENTS.glob("*.json")) - {*SQS_EVENT_FILES, *STREAM_EVENT_FILES, *INVOKE_EVENT_FILES}
)
#: The physical name the emulator gives a table (lambdaloop-local-<LogicalId>), as the
#: samples' stream ARNs spell it.
_STREAM_ARN = re.compile(
    r"^arn:aws:dynamodb:[a-z0-9-]+:\d{12}:table/lambdaloop-local-(?P<table>[A-Za-z0-9]+)"
    r"/stream/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$"
)


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
def test_an_event_with_a_body_says_it_is_json(path: Path) -> None:
    # FastAPI reads a body as JSON only with this header: without it, a POST is refused
    # (422), which is what `sam local generate-event apigateway http-api-proxy` gives.
    event = _load(path)
    method = event["requestContext"]["http"]["method"]
    headers = {name.lower(): value for name, value in (event.get("headers") or {}).items()}
    if method in {"POST", "PUT", "PATCH"} or event.get("body") is not None:
        assert event.get("body") is not None, f"{method} without a body"
        assert headers.get("content-type") == "application/json"
        json.loads(event["body"])


def test_the_events_write_with_every_method_that_takes_a_body() -> None:
    methods = {_load(path)["requestContext"]["http"]["method"] for path in EVENT_FILES}
    assert methods >= {"POST", "PUT", "PATCH"}


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


def _matches(pattern: Any, value: Any) -> bool:
    """Whether ``value`` passes an event filter ``pattern`` made of exact-value lists (the
    only kind the template uses): every key of the pattern must be in the value and match."""
    if isinstance(pattern, list):
        return value in pattern
    return isinstance(value, dict) and all(
        key in value and _matches(sub, value[key]) for key, sub in pattern.items()
    )


def _stream_filters(table: str) -> list[dict[str, Any]]:
    """The filter patterns of the DynamoDB event source that reads ``table``'s stream."""
    (patterns,) = [
        [json.loads(entry["Pattern"]) for entry in event["Properties"]["FilterCriteria"]["Filters"]]
        for function in load_template().functions()
        for event in function.events.values()
        if event.get("Type") == "DynamoDB"
        and event["Properties"]["Stream"] == {"Fn::GetAtt": [table, "StreamArn"]}
    ]
    return patterns


def test_the_stream_events_exist() -> None:
    assert {path.name for path in STREAM_EVENT_FILES} >= {
        "stream-notifications-insert.json",
        "stream-jobs-insert.json",
    }


@pytest.mark.parametrize("path", STREAM_EVENT_FILES, ids=lambda path: path.name)
def test_stream_event_records_have_lambdas_shape(path: Path) -> None:
    records = _load(path)["Records"]
    assert records
    for record in records:
        assert record["eventSource"] == "aws:dynamodb"
        assert record["eventName"] in {"INSERT", "MODIFY", "REMOVE"}
        assert record["eventVersion"] == "1.1"
        assert _STREAM_ARN.fullmatch(record["eventSourceARN"]), record["eventSourceARN"]
        dynamodb = record["dynamodb"]
        assert dynamodb["StreamViewType"] == "NEW_IMAGE"
        assert "OldImage" not in dynamodb
        assert isinstance(dynamodb["ApproximateCreationDateTime"], int)
        assert dynamodb["SequenceNumber"].isdigit()
        assert isinstance(dynamodb["SizeBytes"], int)
        # The keys are the table's, and the new image holds them
        table = _STREAM_ARN.fullmatch(record["eventSourceARN"])["table"]  # type: ignore[index]
        key_schema = load_template().resources[table]["Properties"]["KeySchema"]
        assert set(dynamodb["Keys"]) == {key["AttributeName"] for key in key_schema}
        for name, value in dynamodb["Keys"].items():
            assert dynamodb["NewImage"][name] == value, name


@pytest.mark.parametrize("path", STREAM_EVENT_FILES, ids=lambda path: path.name)
def test_stream_event_records_pass_the_relays_filter(path: Path) -> None:
    # A sample the event source would never deliver would test nothing real.
    for record in _load(path)["Records"]:
        table = _STREAM_ARN.fullmatch(record["eventSourceARN"])["table"]  # type: ignore[index]
        assert any(_matches(pattern, record) for pattern in _stream_filters(table)), table


def test_the_filter_matcher_refuses_what_the_relay_must_not_get() -> None:
    jobs = {"eventName": ["INSERT"], "dynamodb": {"Keys": {"sk": {"S": ["META"]}}}}
    meta = {"eventName": "INSERT", "dynamodb": {"Keys": {"pk": {"S": "p"}, "sk": {"S": "META"}}}}
    result = {"eventName": "INSERT", "dynamodb": {"Keys": {"pk": {"S": "p"}, "sk": {"S": "R#1"}}}}
    assert _matches(jobs, meta)
    assert not _matches(jobs, result)
    assert not _matches(jobs, {**meta, "eventName": "MODIFY"})
    assert not _matches({"eventName": ["INSERT"]}, {"dynamodb": {}})
