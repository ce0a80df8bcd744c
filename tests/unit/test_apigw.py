"""The local API Gateway: routing and the payload-2.0 event shape."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from lambdaloop_local.apigw import HttpRoute, build_event, http_api_routes, match_route
from lambdaloop_local.template import load_template

EVENTS = Path(__file__).parents[2] / "infra" / "events"

ROUTES = sorted(
    [
        HttpRoute.parse("ANY", "/{proxy+}", "Proxy"),
        HttpRoute.parse("GET", "/users/batch", "Batch"),
        HttpRoute.parse("GET", "/users/{id}", "User"),
        HttpRoute.parse("GET", "/", "Root"),
    ],
    key=lambda r: (r.rank, r.method != "ANY"),
    reverse=True,
)


def test_literal_routes_win_over_parameters_and_the_proxy() -> None:
    assert match_route(ROUTES, "GET", "/users/batch") == (ROUTES[0], {})
    found = match_route(ROUTES, "GET", "/users/7")
    assert found is not None
    assert (found[0].function, found[1]) == ("User", {"id": "7"})
    found = match_route(ROUTES, "POST", "/users/7")
    assert found is not None
    assert (found[0].function, found[1]) == ("Proxy", {"proxy": "users/7"})
    found = match_route(ROUTES, "GET", "/")
    assert found is not None
    assert found[0].function == "Root"


def test_the_templates_routes() -> None:
    routes = http_api_routes(load_template())

    assert {r.route_key for r in routes} == {
        "GET /",
        "GET /health",
        "GET /docs",
        "GET /docs/oauth2-redirect",
        "GET /docs/assets/{asset}",
        "GET /openapi.json",
        "GET /users/batch",
        "POST /users/batch",
        "POST /users",
        "GET /users/{user_id}",
        "PUT /users/{user_id}",
        "PATCH /users/{user_id}",
        "DELETE /users/{user_id}",
        "POST /users/{user_id}/notify",
        "GET /users/{user_id}/notifications",
        "GET /notifications/{notification_id}",
        "POST /jobs/fetch",
        "POST /jobs/compute",
        "GET /jobs/{job_id}",
        "ANY /{proxy+}",
        # A public path is public for every method (the app's 405)
        "ANY /",
        "ANY /health",
        "ANY /docs",
        "ANY /docs/oauth2-redirect",
        "ANY /docs/assets/{asset}",
        "ANY /openapi.json",
    }
    assert {r.function for r in routes} == {"ApiFunction"}


def test_the_event_has_the_shape_of_sam_generate_event() -> None:
    reference = json.loads((EVENTS / "api-health.json").read_text())
    route = HttpRoute.parse("ANY", "/{proxy+}", "ApiFunction")

    event = build_event(
        route,
        {"proxy": "health"},
        method="GET",
        path="/health",
        raw_query="",
        headers={"Host": "x", "User-Agent": "t"},
        body=b"",
        source_ip="127.0.0.1",
    )

    assert set(event) >= set(reference) - {"body"}
    assert set(event["requestContext"]) >= set(reference["requestContext"])
    assert event["requestContext"]["http"]["path"] == event["rawPath"] == "/health"
    assert event["headers"] == {"host": "x", "user-agent": "t"}


def test_query_cookies_and_repeated_headers() -> None:
    route = HttpRoute.parse("ANY", "/{proxy+}", "F")

    event = build_event(
        route,
        {},
        method="get",
        path="/users/batch",
        raw_query="user_ids=1&user_ids=2&q=a%20b",
        headers=[("Cookie", "a=1; b=2"), ("X-Tag", "one"), ("X-Tag", "two")],
        body=b"",
        source_ip="10.0.0.1",
    )

    assert event["queryStringParameters"] == {"user_ids": "1,2", "q": "a b"}
    assert event["rawQueryString"] == "user_ids=1&user_ids=2&q=a%20b"
    assert event["cookies"] == ["a=1", "b=2"]
    assert event["headers"]["x-tag"] == "one,two"
    assert event["requestContext"]["http"]["method"] == "GET"


def test_bodies_are_text_or_base64_by_content_type() -> None:
    route = HttpRoute.parse("ANY", "/{proxy+}", "F")
    common = {"method": "POST", "path": "/x", "raw_query": "", "source_ip": "127.0.0.1"}

    as_json = build_event(
        route, {}, headers={"content-type": "application/json"}, body=b'{"a":1}', **common
    )
    as_binary = build_event(
        route, {}, headers={"content-type": "image/png"}, body=b"\x89PNG", **common
    )

    assert (as_json["body"], as_json["isBase64Encoded"]) == ('{"a":1}', False)
    assert as_binary["isBase64Encoded"] is True
    assert base64.b64decode(as_binary["body"]) == b"\x89PNG"


def _posted(content_type: str | None, body: bytes) -> dict[str, object]:
    route = HttpRoute.parse("ANY", "/{proxy+}", "F")
    headers = {} if content_type is None else {"Content-Type": content_type}
    return build_event(
        route,
        {},
        method="POST",
        path="/x",
        raw_query="",
        headers=headers,
        body=body,
        source_ip="127.0.0.1",
    )


def test_only_api_gateways_text_types_are_passed_as_text() -> None:
    text = ["text/plain", "TEXT/CSV", "application/json; charset=UTF-8", "application/xml"]
    text.append("application/javascript")
    binary: list[str | None] = ["application/octet-stream", "application/x-www-form-urlencoded"]
    binary += [None, "application/problem+json", "image/svg+xml", "multipart/form-data; b=x"]

    for text_type in text:
        assert _posted(text_type, b"a=1")["isBase64Encoded"] is False, text_type
    for content_type in binary:
        event = _posted(content_type, b"a=1")
        assert event["isBase64Encoded"] is True, content_type
        assert event["body"] == base64.b64encode(b"a=1").decode()


def test_a_text_body_that_is_not_utf8_is_base64_encoded() -> None:
    event = _posted("application/json", b'{"name": "\xff\xfe"}')

    assert event["isBase64Encoded"] is True
    assert base64.b64decode(str(event["body"])) == b'{"name": "\xff\xfe"}'


def test_an_empty_body_is_no_body() -> None:
    event = _posted("application/octet-stream", b"")

    assert "body" not in event
    assert event["isBase64Encoded"] is False
