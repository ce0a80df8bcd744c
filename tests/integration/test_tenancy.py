"""Identity and isolation through the API function's handler on the local stack: the caller
is the ``sub`` claim API Gateway verified, every record is its tenant's, and another
tenant's record answers exactly like one that does not exist.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lambdaloop.jobs import JobRef, JobStore
from lambdaloop_local.stack import LocalStack
from support import ApiResponse, InProcessApi, in_process_api, job_store, run

IN_FLIGHT_LIMIT = 2


@pytest.fixture(scope="module")
def api(session_stack: LocalStack) -> Iterator[InProcessApi]:
    session_stack.create_resources()
    with in_process_api(session_stack, {"JOBS_IN_FLIGHT_LIMIT": str(IN_FLIGHT_LIMIT)}) as api:
        yield api


@pytest.fixture
def store(local_stack: LocalStack) -> JobStore:
    return job_store(local_stack)


def new_tenant(name: str) -> str:
    """A tenant no other test uses (ids count from 1 in each tenant)."""
    return f"{name}-{uuid.uuid4().hex}"


def _without_request_id(response: ApiResponse) -> dict[str, Any]:
    return {k: v for k, v in response.json.items() if k != "request_id"}


class TenantA:
    """Tenant A's records, made through the API, and how they read back as A."""

    def __init__(self, api: InProcessApi, store: JobStore) -> None:
        self.api = api
        self.tenant = new_tenant("a")
        created = self.call("POST", "/users", json={"name": "Ada", "email": "ada@example.com"})
        assert created.status == 201, created.text
        self.user = created.json
        self.user_id = self.user["id"]
        notified = self.call("POST", f"/users/{self.user_id}/notify", json={"message": "hi"})
        assert notified.status == 202, notified.text
        self.notification_id = notified.json["notification_id"]
        fetch = self.call("POST", "/jobs/fetch", json={"urls": ["https://example.com/"]})
        assert fetch.status == 202, fetch.text
        self.fetch_job = fetch.json["job_id"]
        # A result, as the jobs function stores it, so the job has a page of results.
        ref = JobRef(self.tenant, self.fetch_job)
        run(store.start(ref))
        run(store.save_results(ref, [(0, {"url": "https://example.com/", "status": 200})], 1))
        compute = self.call(
            "POST", "/jobs/compute", json={"kind": "sum_of_squares", "params": {"n": 10}}
        )
        assert compute.status == 202, compute.text
        self.compute_job = compute.json["job_id"]

    def call(self, method: str, path: str, **kwargs: Any) -> ApiResponse:
        return self.api.request(method, path, tenant=self.tenant, **kwargs)

    def snapshot(self) -> dict[str, Any]:
        """Everything of A's, read back as A."""
        reads = {
            "user": f"/users/{self.user_id}",
            "batch": f"/users/batch?user_ids={self.user_id}",
            "inbox": f"/users/{self.user_id}/notifications",
            "notification": f"/notifications/{self.notification_id}",
            "fetch_job": f"/jobs/{self.fetch_job}",
            "compute_job": f"/jobs/{self.compute_job}",
        }
        snapshot: dict[str, Any] = {}
        for name, target in reads.items():
            path, _, query = target.partition("?")
            response = self.call("GET", path, query=query)
            assert response.status == 200, (name, response.text)
            snapshot[name] = response.json
        return snapshot


def test_another_tenant_cannot_read_change_or_delete_a_tenants_records(
    api: InProcessApi, store: JobStore
) -> None:
    # Given tenant A's user, notification, fetch job (with a result) and compute job
    a = TenantA(api, store)
    before = a.snapshot()
    assert before["fetch_job"]["result"]["results"][0]["url"] == "https://example.com/"
    b = new_tenant("b")
    absent_id = a.user_id + 1000

    def as_b(method: str, path: str, **kwargs: Any) -> ApiResponse:
        return api.request(method, path, tenant=b, **kwargs)

    # When tenant B, with a valid token, names A's records on every route
    refused = {
        "GET user": as_b("GET", f"/users/{a.user_id}"),
        "PATCH user": as_b("PATCH", f"/users/{a.user_id}", json={"webhook_url": None}),
        "DELETE user": as_b("DELETE", f"/users/{a.user_id}"),
        "notify": as_b("POST", f"/users/{a.user_id}/notify", json={"message": "x"}),
        "inbox": as_b("GET", f"/users/{a.user_id}/notifications"),
        "notification": as_b("GET", f"/notifications/{a.notification_id}"),
        "fetch job": as_b("GET", f"/jobs/{a.fetch_job}"),
        "fetch job page": as_b("GET", f"/jobs/{a.fetch_job}", query="limit=1&cursor=0"),
        "compute job": as_b("GET", f"/jobs/{a.compute_job}"),
    }
    batch = as_b("GET", "/users/batch", query=f"user_ids={a.user_id}")

    # Then each answers 404, as for a record that does not exist, and says nothing of A's
    for route, response in refused.items():
        assert response.status == 404, (route, response.text)
        assert "Ada" not in response.text, route
        assert "ada@example.com" not in response.text, route
    missing = as_b("GET", f"/users/{absent_id}")
    assert _without_request_id(refused["GET user"]) == {
        **_without_request_id(missing),
        "detail": _without_request_id(missing)["detail"].replace(str(absent_id), str(a.user_id)),
    }
    assert batch.status == 200
    assert batch.json == {"users": [], "missing": [a.user_id]}
    # And a PUT of A's id makes B's own user, leaving A's alone
    put = as_b("PUT", f"/users/{a.user_id}", json={"name": "Bea", "email": "bea@example.com"})
    assert put.status == 201, put.text
    assert as_b("GET", f"/users/{a.user_id}").json["name"] == "Bea"
    # And A's records read back as A exactly as before
    after = a.snapshot()
    assert after == before


def test_the_same_id_and_email_in_two_tenants_are_two_users(api: InProcessApi) -> None:
    a, b = new_tenant("a"), new_tenant("b")
    fields = {"name": "Same", "email": "same@example.com"}

    made_a = api.request("POST", "/users", json=fields, tenant=a)
    made_b = api.request("POST", "/users", json={**fields, "name": "Other"}, tenant=b)

    # Ids count per tenant, emails are unique per tenant: both are user 1 with that address
    assert (made_a.status, made_b.status) == (201, 201), (made_a.text, made_b.text)
    assert made_a.json["id"] == made_b.json["id"] == 1
    assert api.request("GET", "/users/1", tenant=a).json["name"] == "Same"
    assert api.request("GET", "/users/1", tenant=b).json["name"] == "Other"
    # ... and within one tenant the address is still taken
    again = api.request("POST", "/users", json=fields, tenant=a)
    assert again.status == 409, again.text
    # Deleting B's user leaves A's
    assert api.request("DELETE", "/users/1", tenant=b).status == 204
    assert api.request("GET", "/users/1", tenant=a).status == 200


def test_a_cursor_of_one_tenant_is_refused_in_another(api: InProcessApi) -> None:
    # Given tenant A's user with two notifications, and its first page's cursor
    a, b = new_tenant("a"), new_tenant("b")
    for tenant in (a, b):
        made = api.request("POST", "/users", json={"name": "U", "email": "u@x.org"}, tenant=tenant)
        assert made.json["id"] == 1
    for message in ("one", "two"):
        sent = api.request("POST", "/users/1/notify", json={"message": message}, tenant=a)
        assert sent.status == 202
    page = api.request("GET", "/users/1/notifications", query="limit=1", tenant=a)
    cursor = page.json["next_cursor"]
    assert cursor

    # When tenant B pages its own user 1's inbox with A's cursor
    response = api.request(
        "GET", "/users/1/notifications", query=f"limit=1&cursor={cursor}", tenant=b
    )

    # Then the cursor is not one B's listing gave
    assert response.status == 400, response.text
    assert response.json["field"] == "query.cursor"


def test_a_tenant_at_its_jobs_limit_gets_429_and_others_do_not(
    api: InProcessApi, store: JobStore
) -> None:
    busy, other = new_tenant("busy"), new_tenant("other")
    job = {"kind": "sum_of_squares", "params": {"n": 100}}
    queued = [api.request("POST", "/jobs/compute", json=job, tenant=busy) for _ in range(2)]
    assert [r.status for r in queued] == [202] * IN_FLIGHT_LIMIT

    over = api.request("POST", "/jobs/fetch", json={"urls": ["https://example.com/"]}, tenant=busy)
    elsewhere = api.request("POST", "/jobs/compute", json=job, tenant=other)

    assert over.status == 429, over.text
    assert over.headers["content-type"] == "application/problem+json"
    assert int(over.headers["retry-after"]) > 0
    assert over.json["limit"] == IN_FLIGHT_LIMIT
    assert elsewhere.status == 202, elsewhere.text
    # Once one of its jobs ends, the tenant may queue another
    run(store.finish(JobRef(busy, queued[0].json["job_id"]), "succeeded"))
    again = api.request("POST", "/jobs/compute", json=job, tenant=busy)
    assert again.status == 202, again.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/users/1", None),
        ("GET", "/users/batch?user_ids=1", None),
        ("POST", "/users", {"name": "N", "email": "n@example.com"}),
        ("GET", "/jobs/abc", None),
        ("GET", "/notifications/abc", None),
    ],
)
def test_a_request_without_verified_claims_is_refused_whatever_it_says(
    api: InProcessApi, method: str, path: str, body: Any
) -> None:
    # A route left without its authorizer: headers that name a caller are no identity.
    path, _, query = path.partition("?")
    forged = {
        "authorization": "Bearer forged",
        "x-user": "tenant-a",
        "x-tenant-id": "tenant-a",
        "x-amzn-oidc-identity": "tenant-a",
    }

    response = api.request(method, path, query=query, json=body, headers=forged, tenant=None)

    assert response.status == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"


def test_headers_never_change_the_verified_caller(api: InProcessApi) -> None:
    a, b = new_tenant("a"), new_tenant("b")
    made = api.request("POST", "/users", json={"name": "A", "email": "a@x.org"}, tenant=a)
    assert made.status == 201

    # B's verified request with headers claiming to be A
    response = api.request(
        "GET", "/users/1", tenant=b, headers={"x-user": a, "x-tenant-id": a, "x-sub": a}
    )

    assert response.status == 404, response.text


def test_public_routes_need_no_caller(api: InProcessApi) -> None:
    assert api.request("GET", "/", tenant=None).status == 200
    assert api.request("GET", "/health", tenant=None).status in (200, 503)
    assert api.request("GET", "/openapi.json", tenant=None).status == 200


def _template_routes() -> dict[tuple[str, str], list[str] | None]:
    """The API function's routes in template.yaml and the scopes each requires (None: no
    authorizer), with the ANY routes left out: they only reach unknown paths and methods."""
    from lambdaloop_local.template import load_template

    function = load_template().resources["ApiFunction"]["Properties"]
    routes: dict[tuple[str, str], list[str] | None] = {}
    for event in function["Events"].values():
        props = event["Properties"]
        if props["Method"] == "ANY":
            continue
        auth = props.get("Auth") or {}
        scopes = None if auth.get("Authorizer") == "NONE" else auth.get("AuthorizationScopes")
        routes[(props["Method"].lower(), props["Path"])] = scopes
    return routes


def test_the_schema_declares_the_scopes_the_template_requires(api: InProcessApi) -> None:
    schema = api.request("GET", "/openapi.json", tenant=None).json
    documented = {
        (method, path): operation.get("security")
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }

    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schema["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    for (method, path), scopes in _template_routes().items():
        if path.startswith("/docs") or path == "/openapi.json":
            continue  # FastAPI's own routes, not operations of the schema
        expected = None if scopes is None else [{"bearerAuth": scopes}]
        assert documented.pop((method, path)) == expected, (method, path)
    assert documented == {}  # every operation has its route in the template
