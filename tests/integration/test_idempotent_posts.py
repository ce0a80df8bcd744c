"""POSTs with an ``Idempotency-Key``, through the API function's handler on the local stack:
a retry replays the first answer and runs nothing again, inside the caller's tenant."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from api.idempotency import record_key, request_digest
from lambdaloop.store import Table
from lambdaloop_local.stack import LocalStack
from support import ApiResponse, InProcessApi, in_process_api, job_store, run

USER = {"name": "Ada", "email": "ada@example.com"}


@pytest.fixture(scope="module")
def api(session_stack: LocalStack) -> Iterator[InProcessApi]:
    session_stack.create_resources()
    with in_process_api(session_stack) as api:
        yield api


@pytest.fixture
def records(local_stack: LocalStack) -> Table:
    return Table(
        local_stack.resources.refs["IdempotencyTable"],
        client=local_stack.aws_client("dynamodb"),
        key_schema=("id",),
    )


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex}"


def post(
    api: InProcessApi, path: str, body: Any, tenant: str, key: str | None = None
) -> ApiResponse:
    headers = {"idempotency-key": key} if key is not None else {}
    return api.request("POST", path, json=body, headers=headers, tenant=tenant)


def test_a_retry_with_the_same_key_replays_the_first_answer_and_creates_nothing(
    api: InProcessApi,
) -> None:
    tenant, key = new_tenant(), "create-ada-1"

    first = post(api, "/users", USER, tenant, key)
    retry = post(api, "/users", USER, tenant, key)

    assert first.status == 201, first.text
    assert "idempotent-replayed" not in first.headers
    assert (retry.status, retry.json) == (201, first.json)
    assert retry.headers["location"] == first.headers["location"] == "/users/1"
    assert retry.headers["content-type"] == "application/json"
    assert retry.headers["idempotent-replayed"] == "true"
    # One user: the retry ran nothing (a second create would have been user 2, or a 409)
    batch = api.request("GET", "/users/batch", query="user_ids=1&user_ids=2", tenant=tenant)
    assert [u["id"] for u in batch.json["users"]] == [1]
    assert batch.json["missing"] == [2]


def test_without_a_key_every_post_runs(api: InProcessApi) -> None:
    tenant = new_tenant()

    first = post(api, "/users", USER, tenant)
    second = post(api, "/users", {**USER, "email": "other@example.com"}, tenant)

    assert (first.json["id"], second.json["id"]) == (1, 2)
    assert "idempotent-replayed" not in second.headers


def test_a_key_used_for_another_request_is_refused(api: InProcessApi) -> None:
    tenant, key = new_tenant(), "k1"
    assert post(api, "/users", USER, tenant, key).status == 201

    other_body = post(api, "/users", {**USER, "name": "Eve"}, tenant, key)
    other_route = post(api, "/users/batch", {"users": [USER]}, tenant, key)

    for response in (other_body, other_route):
        assert response.status == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json["field"] == "header.Idempotency-Key"
    assert api.request("GET", "/users/1", tenant=tenant).json["name"] == "Ada"


def test_keys_are_per_tenant(api: InProcessApi) -> None:
    a, b = new_tenant(), new_tenant()

    made_a = post(api, "/users", USER, a, "same-key")
    made_b = post(api, "/users", {**USER, "name": "Bea"}, b, "same-key")

    assert (made_a.status, made_b.status) == (201, 201), made_b.text
    assert "idempotent-replayed" not in made_b.headers
    assert made_b.json["name"] == "Bea"


def test_a_key_whose_first_request_still_runs_is_409(api: InProcessApi, records: Table) -> None:
    # Given the claim a first request holds while it runs (its invocation has a minute left)
    tenant, key = new_tenant(), "in-flight"
    body = b'{"name": "Ada", "email": "ada@example.com"}'
    now = time.time()
    run(
        records.put(
            {
                "id": record_key(tenant, key),
                "status": "in_progress",
                "payload_hash": request_digest("POST", "/users", "", body),
                "expires_at": int(now) + 86_400,
                "in_progress_expires_at": int((now + 60) * 1000),
            }
        )
    )

    # When the same request comes again
    response = api.request(
        "POST",
        "/users",
        body=body,
        headers={"content-type": "application/json", "idempotency-key": key},
        tenant=tenant,
    )

    # Then it is told to come back, and nothing was created
    assert response.status == 409, response.text
    assert response.headers["retry-after"] == "1"
    assert api.request("GET", "/users/1", tenant=tenant).status == 404


@pytest.mark.parametrize("key", ["x" * 256, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_400_and_runs_nothing(api: InProcessApi, key: str) -> None:
    tenant = new_tenant()

    response = api.request(
        "POST",
        "/users",
        body=b'{"name": "Ada", "email": "ada@example.com"}',
        headers={"content-type": "application/json", "idempotency-key": key},
        tenant=tenant,
    )

    assert response.status == 400, response.text
    assert response.json["field"] == "header.Idempotency-Key"
    assert api.request("GET", "/users/1", tenant=tenant).status == 404


def test_a_job_posted_twice_with_one_key_is_one_job(
    api: InProcessApi, local_stack: LocalStack
) -> None:
    tenant, key = new_tenant(), "job-1"
    job = {"kind": "sum_of_squares", "params": {"n": 1000}, "chunks": 2}

    first = post(api, "/jobs/compute", job, tenant, key)
    retry = post(api, "/jobs/compute", job, tenant, key)

    assert (first.status, retry.status) == (202, 202), retry.text
    assert retry.json["job_id"] == first.json["job_id"]
    assert retry.headers["location"] == f"/jobs/{first.json['job_id']}"
    assert run(job_store(local_stack).in_flight(tenant, 10)) == 1


def test_a_server_error_is_not_kept_so_a_retry_runs_again(
    session_stack: LocalStack, records: Table
) -> None:
    # A stack whose jobs table does not exist: storing the job fails, the client gets 503
    tenant, key = new_tenant(), "retry-me"
    broken = {"JOBS_TABLE": "no-such-table"}
    with in_process_api(session_stack, broken) as api:
        first = post(api, "/jobs/fetch", {"urls": ["https://example.com/"]}, tenant, key)
        retry = post(api, "/jobs/fetch", {"urls": ["https://example.com/"]}, tenant, key)

    assert (first.status, retry.status) == (503, 503), first.text
    assert "idempotent-replayed" not in retry.headers
    assert run(records.get({"id": record_key(tenant, key)}, consistent=True)) is None
