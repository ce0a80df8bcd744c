"""The API app through its Lambda handler, with fake probes behind the real interface."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from api.app import create_app
from api.settings import get_api_settings
from api.system import health_probes
from lambdaloop.asgi import asgi_handler
from lambdaloop.health import Probe
from support import api_settings, http_event, lambda_context

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


async def healthy() -> object:
    return True


async def refused() -> object:
    raise ConnectionRefusedError("connection refused")


async def hangs() -> object:
    await asyncio.sleep(3600)
    return None


SETTINGS = api_settings(LAMBDALOOP_HEALTH_TIMEOUT_S="0.2")


def make_handler(probes: Mapping[str, Probe] | None = None) -> tuple[FastAPI, Handler]:
    app = create_app(SETTINGS)
    app.dependency_overrides[get_api_settings] = lambda: SETTINGS
    fakes = probes or {"dynamodb": healthy, "redis": healthy, "queue": healthy}
    app.dependency_overrides[health_probes] = lambda: fakes
    return app, asgi_handler(app)


def call(handler: Handler, *args: Any, timeout_s: float = 10, **kwargs: Any) -> dict[str, Any]:
    return handler(http_event(*args, **kwargs), lambda_context(timeout_s))


def body(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


def test_root_names_the_service() -> None:
    _, handler = make_handler()

    response = call(handler, "GET", "/")

    assert response["statusCode"] == 200
    assert body(response) == {"service": "lambdaloop", "version": "0.1.0"}


@pytest.mark.parametrize(
    ("probes", "status", "overall", "checks"),
    [
        (
            {"dynamodb": healthy, "redis": healthy, "queue": healthy},
            200,
            "ok",
            {"dynamodb": "ok", "redis": "ok", "queue": "ok"},
        ),
        (
            {"dynamodb": healthy, "redis": refused, "queue": healthy},
            200,
            "degraded",
            {"dynamodb": "ok", "redis": "error", "queue": "ok"},
        ),
        (
            {"dynamodb": healthy, "redis": hangs, "queue": refused},
            200,
            "degraded",
            {"dynamodb": "ok", "redis": "timeout", "queue": "error"},
        ),
        (
            {"dynamodb": hangs, "redis": healthy, "queue": healthy},
            503,
            "down",
            {"dynamodb": "timeout", "redis": "ok", "queue": "ok"},
        ),
    ],
)
def test_health_states(
    probes: Mapping[str, Probe], status: int, overall: str, checks: dict[str, str]
) -> None:
    _, handler = make_handler(probes)

    response = call(handler, "GET", "/health")

    assert response["statusCode"] == status
    assert body(response)["status"] == overall
    assert body(response)["checks"] == checks
    assert response["headers"]["cache-control"] == "no-store"


def test_unknown_route_is_a_404_problem() -> None:
    _, handler = make_handler()

    response = call(handler, "GET", "/no/such/thing")

    assert response["statusCode"] == 404
    assert response["headers"]["content-type"] == "application/problem+json"
    assert response["isBase64Encoded"] is False
    problem = body(response)
    assert problem["title"] == "Not Found"
    assert problem["status"] == 404
    assert problem["request_id"] == response["headers"]["x-request-id"]


def test_wrong_method_is_a_405_problem() -> None:
    _, handler = make_handler()

    response = call(handler, "DELETE", "/health")

    assert response["statusCode"] == 405
    assert body(response)["title"] == "Method Not Allowed"


class Widget(BaseModel):
    name: str
    size: int


def app_with_test_routes() -> Handler:
    app, handler = make_handler()

    @app.get("/widgets/{widget_id}")
    async def get_widget(widget_id: int, limit: int = 10) -> dict[str, int]:
        return {"id": widget_id, "limit": limit}

    @app.post("/widgets")
    async def create_widget(widget: Widget) -> Widget:
        return widget

    @app.get("/explode")
    async def explode() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    @app.get("/slow")
    async def slow() -> None:
        await asyncio.sleep(3600)

    return handler


def test_validation_errors_name_the_field() -> None:
    handler = app_with_test_routes()

    response = call(handler, "GET", "/widgets/abc", query="limit=many")

    assert response["statusCode"] == 422
    problem = body(response)
    assert problem["title"] == "Request validation failed"
    fields = {error["field"] for error in problem["errors"]}
    assert fields == {"path.widget_id", "query.limit"}
    assert "path.widget_id" in problem["detail"]


def test_a_missing_body_field_is_named() -> None:
    handler = app_with_test_routes()

    response = call(
        handler,
        "POST",
        "/widgets",
        headers={"content-type": "application/json"},
        body=b'{"name": "w"}',
    )

    assert response["statusCode"] == 422
    assert [e["field"] for e in body(response)["errors"]] == ["body.size"]


def test_malformed_json_is_a_400_problem() -> None:
    handler = app_with_test_routes()

    response = call(
        handler, "POST", "/widgets", headers={"content-type": "application/json"}, body=b"{nope"
    )

    assert response["statusCode"] == 400
    assert body(response)["title"] == "Malformed request body"


def test_an_unhandled_error_is_a_500_without_a_traceback() -> None:
    handler = app_with_test_routes()

    response = call(handler, "GET", "/explode")

    assert response["statusCode"] == 500
    assert response["headers"]["content-type"] == "application/problem+json"
    text = response["body"]
    assert "Traceback" not in text
    assert "hunter2" not in text
    assert "RuntimeError" not in text
    assert body(response)["detail"] == "The server could not complete the request"


def test_a_request_that_runs_into_the_deadline_is_a_503_problem_with_retry_after() -> None:
    handler = app_with_test_routes()

    # 0.8 s left, 0.5 s of it kept as the margin to answer in.
    response = call(handler, "GET", "/slow", timeout_s=0.8)

    assert response["statusCode"] == 503
    assert response["headers"]["retry-after"] == "1"
    assert body(response)["detail"] == "The request did not finish in its time budget"


def test_request_and_correlation_ids() -> None:
    _, handler = make_handler()
    event = http_event("GET", "/", headers={"x-correlation-id": "order-42"})
    event["requestContext"]["requestId"] = "gw-req-1"

    response = handler(event, lambda_context())

    assert response["headers"]["x-request-id"] == "gw-req-1"
    assert response["headers"]["x-correlation-id"] == "order-42"


def test_an_unsafe_correlation_id_is_replaced_by_the_request_id() -> None:
    _, handler = make_handler()
    event = http_event("GET", "/", headers={"x-correlation-id": "bad id\nwith newline"})
    event["requestContext"]["requestId"] = "gw-req-2"

    response = handler(event, lambda_context())

    assert response["headers"]["x-correlation-id"] == "gw-req-2"


def test_the_openapi_document_lists_every_route() -> None:
    _, handler = make_handler()

    response = call(handler, "GET", "/openapi.json")

    paths = body(response)["paths"]
    assert set(paths) == {
        "/",
        "/health",
        "/users",
        "/users/batch",
        "/users/{user_id}",
        "/users/{user_id}/notify",
        "/users/{user_id}/notifications",
        "/notifications/{notification_id}",
        "/jobs/fetch",
        "/jobs/compute",
        "/jobs/{job_id}",
    }
    assert set(paths["/users/{user_id}"]) == {"get", "put", "patch", "delete"}
    assert set(paths["/users/batch"]) == {"get", "post"}


def test_the_fetch_concurrency_limit_is_the_fetchers() -> None:
    # The API keeps its own copy (the cold start does not import the fetcher for it).
    from api.jobs.models import MAX_CONCURRENCY
    from lambdaloop import fetch

    assert MAX_CONCURRENCY == fetch.MAX_CONCURRENCY


def test_fastapi_still_refuses_pydantic_v1_models_once_they_exist() -> None:
    # The app skips FastAPI's pydantic.v1 probe only while pydantic.v1 is not imported: a
    # v1 model, which needs it imported, is still refused.
    import warnings

    from fastapi import APIRouter
    from fastapi.exceptions import PydanticV1NotSupportedError

    create_app(SETTINGS)  # installs the guard on FastAPI's check
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pydantic import v1

    class Legacy(v1.BaseModel):
        name: str

    async def legacy() -> None:
        return None

    with pytest.raises(PydanticV1NotSupportedError):
        APIRouter().add_api_route("/legacy", legacy, response_model=Legacy)
