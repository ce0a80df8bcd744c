"""The API's contract: text and URL rules (the schema's patterns are what the server
enforces), 405 with Allow, and the OpenAPI schema's statuses, Problem schema and links."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from api.app import create_app
from api.fields import EMAIL_PATTERN, MESSAGE_PATTERN, NAME_PATTERN
from api.jobs import models as jobs_models
from api.users.models import UserFields
from lambdaloop.asgi import asgi_handler
from lambdaloop.compute.kinds import prime_count, sha256_chain, sum_of_squares
from lambdaloop.compute.kinds.base import Kind
from support import api_settings, http_event, lambda_context, with_claims

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]

SETTINGS = api_settings()


def make_handler() -> tuple[FastAPI, Handler]:
    app = create_app(SETTINGS)
    handler: Handler = asgi_handler(app)
    return app, handler


def call(handler: Handler, method: str, path: str) -> dict[str, Any]:
    return handler(http_event(method, path), lambda_context(10))


def body(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


BAD_CHARACTERS = [
    "\x00",
    "\x07",
    "\n",
    "\r",
    "\x1b",
    "\x7f",
    "\x85",
    "\u061c",
    "\u200e",
    "\u200f",
    *[chr(c) for c in range(0x202A, 0x202F)],
    *[chr(c) for c in range(0x2066, 0x206A)],
]


def post(path: str, payload: Any) -> dict[str, Any]:
    """POST ``payload`` as a verified caller (only for requests refused before the logic
    runs: no stack is behind this app)."""
    _, handler = make_handler()
    event = http_event(
        "POST",
        path,
        headers={"content-type": "application/json"},
        body=json.dumps(payload).encode(),
    )
    return handler(with_claims(event, "tenant-a"), lambda_context(10))


@pytest.mark.parametrize("bad", BAD_CHARACTERS, ids=ascii)
def test_a_name_with_a_control_or_bidi_character_is_refused_naming_the_field(bad: str) -> None:
    response = post("/users", {"name": f"Ann{bad}Lee", "email": "ann@example.com"})

    assert response["statusCode"] == 422
    assert response["headers"]["content-type"] == "application/problem+json"
    assert [e["field"] for e in body(response)["errors"]] == ["body.name"]
    assert re.fullmatch(NAME_PATTERN, f"Ann{bad}Lee") is None  # the schema says so too


@pytest.mark.parametrize("name", ["\n" + "a" * 99, " " + "a" * 100, "a" * 101, "a ", "\u3000a"])
def test_a_name_is_stored_as_sent_so_its_limit_counts_what_is_stored(name: str) -> None:
    response = post("/users", {"name": name, "email": "ann@example.com"})

    assert response["statusCode"] == 422
    assert [e["field"] for e in body(response)["errors"]] == ["body.name"]


def test_a_lone_surrogate_is_not_text() -> None:
    response = post("/users", {"name": "Ann\ud800", "email": "ann@example.com"})

    assert response["statusCode"] == 422
    assert [e["field"] for e in body(response)["errors"]] == ["body.name"]


@pytest.mark.parametrize("good", ["Ann", "Zoë Ñandú", "a" * 100, "李 小龍", "x\u00a0y"])
def test_names_people_have_match_the_pattern(good: str) -> None:
    assert re.fullmatch(NAME_PATTERN, good)


def test_a_message_may_span_lines_but_holds_no_other_control() -> None:
    assert re.fullmatch(MESSAGE_PATTERN, "line one\n\tline two")
    for bad in ("a\x00b", "a\rb", "a\u202eb"):
        assert re.fullmatch(MESSAGE_PATTERN, bad) is None


@pytest.mark.parametrize(
    ("email", "ok"),
    [
        ("ada@example.com", True),
        ("first.last+tag@sub.example.co", True),
        ("a..b@example.com", False),
        (".a@example.com", False),
        ("a@example", False),
        ("a@example.com\n", False),
        (" a@example.com", False),
        ("a@xn--p1ai", False),
    ],
)
def test_the_email_pattern_is_what_the_server_accepts(email: str, ok: bool) -> None:
    if ok:
        UserFields.model_validate({"name": "Ada", "email": email})
    else:
        with pytest.raises(ValidationError) as refused:
            UserFields.model_validate({"name": "Ada", "email": email})
        assert [error["loc"] for error in refused.value.errors()] == [("email",)]
    assert (re.fullmatch(EMAIL_PATTERN, email) is not None) is ok


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("TRACE", "/", "GET"),
        # A literal path is a resource of its own: /jobs/{job_id} and /users/{user_id} do not
        # answer there (OpenAPI reads paths so; Starlette alone would route them there)
        ("DELETE", "/jobs/fetch", "POST"),
        ("GET", "/jobs/compute", "POST"),
        ("PUT", "/users/batch", "GET, POST"),
        ("HEAD", "/users/1", "DELETE, GET, PATCH, PUT"),
        ("PUT", "/health", "GET"),
    ],
)
def test_a_method_a_path_does_not_have_is_405_with_allow(
    method: str, path: str, allowed: str
) -> None:
    _, handler = make_handler()

    response = call(handler, method, path)

    assert response["statusCode"] == 405
    assert response["headers"]["allow"] == allowed
    assert response["headers"]["content-type"] == "application/problem+json"
    assert body(response)["status"] == 405


def test_a_path_with_no_route_stays_404() -> None:
    _, handler = make_handler()

    response = call(handler, "TRACE", "/no/such/thing")

    assert response["statusCode"] == 404
    assert "allow" not in response["headers"]


def schema() -> dict[str, Any]:
    app, _ = make_handler()
    document: dict[str, Any] = app.openapi()
    return document


def test_every_problem_answer_is_problem_json_with_the_one_schema() -> None:
    document = schema()

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400 or status in ("403", "414", "431"):  # the gateway's alone
                    continue
                content = response["content"]
                where = f"{method.upper()} {path} {status}"
                assert content["application/problem+json"]["schema"] == {
                    "$ref": "#/components/schemas/Problem"
                }, where
    problem = document["components"]["schemas"]["Problem"]
    assert problem["properties"]["errors"]["items"] == {"$ref": "#/components/schemas/FieldError"}


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/", "get", set()),
        ("/users", "post", {"400", "401", "403", "409", "413", "422", "431", "503"}),
        ("/users/{user_id}", "get", {"401", "403", "404", "414", "422", "503"}),
        ("/users/{user_id}", "delete", {"401", "403", "404", "409", "414", "422", "503"}),
        (
            "/jobs/compute",
            "post",
            {"400", "401", "403", "409", "413", "422", "429", "431", "503"},
        ),
        ("/jobs/{job_id}", "get", {"400", "401", "403", "404", "414", "422", "503"}),
    ],
)
def test_each_operation_documents_the_problems_it_can_answer(
    path: str, method: str, statuses: set[str]
) -> None:
    responses = schema()["paths"][path][method]["responses"]

    assert {status for status in responses if int(status) >= 400} == statuses


def test_retry_after_is_documented_where_it_is_sent() -> None:
    responses = schema()["paths"]["/jobs/fetch"]["post"]["responses"]

    for status in ("409", "429", "503"):
        assert "Retry-After" in responses[status]["headers"]


def test_links_lead_from_what_a_post_created_to_where_it_lives() -> None:
    paths = schema()["paths"]
    ids = {
        operation["operationId"]
        for operations in paths.values()
        for operation in operations.values()
    }

    created = paths["/users"]["post"]["responses"]["201"]["links"]
    job = paths["/jobs/compute"]["post"]["responses"]["202"]["links"]

    assert {"get_user", "patch_user", "delete_user"} <= set(created)
    assert created["get_user"]["parameters"] == {"user_id": "$response.body#/id"}
    assert job["get_job"]["parameters"] == {"job_id": "$response.body#/job_id"}
    for operations in paths.values():
        for operation in operations.values():
            for response in operation["responses"].values():
                for link in response.get("links", {}).values():
                    assert link["operationId"] in ids


def test_the_compute_kinds_are_a_union_on_kind_with_the_kinds_own_bounds() -> None:
    document = schema()
    union = document["components"]["schemas"]["ComputeRequest"]

    assert union["discriminator"]["propertyName"] == "kind"
    assert set(union["discriminator"]["mapping"]) == {
        "sum_of_squares",
        "prime_count",
        "sha256_chain",
    }
    # The copies of the kinds' bounds the schema shows.
    assert jobs_models.SUM_OF_SQUARES_MAX_N == sum_of_squares.MAX_N
    assert jobs_models.PRIME_COUNT_MAX_N == prime_count.MAX_N
    assert jobs_models.SHA256_MAX_SEED == sha256_chain.MAX_SEED
    assert jobs_models.SHA256_MAX_CHAINS == sha256_chain.MAX_CHAINS
    assert jobs_models.SHA256_MAX_ROUNDS == sha256_chain.MAX_ROUNDS
    assert jobs_models.SHA256_MAX_TOTAL_ROUNDS == sha256_chain.MAX_TOTAL_ROUNDS
    kinds: list[Kind] = [sum_of_squares.KIND, prime_count.KIND, sha256_chain.KIND]
    assert {kind.max_chunks for kind in kinds} == {jobs_models.MAX_CHUNKS}


def test_the_email_is_a_pattern_and_names_have_theirs() -> None:
    fields = schema()["components"]["schemas"]["UserFields"]["properties"]

    assert fields["email"]["pattern"] == EMAIL_PATTERN
    assert fields["name"]["pattern"] == NAME_PATTERN
    assert fields["name"]["maxLength"] == 100
