"""The Users API through the API function's Lambda handler, in this process, against the
local stack: moto in server mode and a real Redis. DynamoDB calls are counted with botocore's
event hooks on the layer's client, Redis calls with the server's own command statistics."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync

from api.users.dependencies import get_users_service
from api.users.models import MAX_USER_ID
from api.users.repository import RESERVE_WINDOW
from lambdaloop.clients import aws_client
from lambdaloop.runtime import get_loop, lambda_handler
from lambdaloop_local.stack import LocalStack
from support import (
    TENANT,
    InProcessApi,
    in_process_api,
    lambda_context,
    requires_redis_server,
)


@pytest.fixture(scope="module")
def api(session_stack: LocalStack) -> Iterator[InProcessApi]:
    with in_process_api(session_stack) as api:
        yield api


@pytest.fixture(autouse=True)
def _resources(local_stack: LocalStack) -> None:
    """Every test here needs the template's table (local_stack makes sure of it)."""


class DynamoCalls:
    """Counts the DynamoDB API calls the layer's client makes."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        aws_client("dynamodb").meta.events.register("before-call.dynamodb", self._count)

    def _count(self, model: Any, **kwargs: Any) -> None:
        self.calls[model.name] += 1

    def close(self) -> None:
        aws_client("dynamodb").meta.events.unregister("before-call.dynamodb", self._count)


@pytest.fixture
def dynamodb(api: InProcessApi) -> Iterator[DynamoCalls]:
    api.request("GET", "/")  # the client exists once the app has run
    counter = DynamoCalls()
    yield counter
    counter.close()


class RedisCalls:
    """Reads the real server's per-command call counts (INFO commandstats)."""

    def __init__(self, url: str) -> None:
        self.client = redis_sync.Redis.from_url(url)
        self.client.config_resetstat()

    def calls(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): s["calls"] for name, s in stats.items()}


def new_user(**overrides: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    return {"name": f"User {tag}", "email": f"user-{tag}@example.com", **overrides}


def create(api: InProcessApi, **overrides: Any) -> dict[str, Any]:
    response = api.request("POST", "/users", json=new_user(**overrides))
    assert response.status == 201, response.text
    user: dict[str, Any] = response.json
    return user


def test_crud_round_trip(api: InProcessApi) -> None:
    # Create
    body = new_user(webhook_url="https://hooks.example.com/a")
    created = api.request("POST", "/users", json=body)
    assert created.status == 201
    user = created.json
    assert created.headers["location"] == f"/users/{user['id']}"
    assert {k: user[k] for k in body} == body
    assert user["created_at"] == user["updated_at"]

    # Read
    read = api.request("GET", f"/users/{user['id']}")
    assert (read.status, read.json) == (200, user)

    # Replace
    replaced = api.request("PUT", f"/users/{user['id']}", json=new_user())
    assert replaced.status == 200
    assert replaced.json["created_at"] == user["created_at"]
    assert replaced.json["webhook_url"] is None

    # Update part
    patched = api.request("PATCH", f"/users/{user['id']}", json={"name": "Renamed"})
    assert patched.status == 200
    assert patched.json["name"] == "Renamed"
    assert patched.json["email"] == replaced.json["email"]

    # Delete
    assert api.request("DELETE", f"/users/{user['id']}").status == 204
    gone = api.request("GET", f"/users/{user['id']}")
    assert gone.status == 404
    assert gone.headers["content-type"] == "application/problem+json"
    assert api.request("DELETE", f"/users/{user['id']}").status == 404


def test_put_creates_and_assigned_ids_never_collide_with_it(api: InProcessApi) -> None:
    tenant = f"put-{uuid.uuid4().hex[:8]}"  # its own id counter, at 0
    chosen = RESERVE_WINDOW - int(uuid.uuid4().int % 1000)

    created = api.request("PUT", f"/users/{chosen}", json=new_user(), tenant=tenant)
    later = api.request("POST", "/users", json=new_user(), tenant=tenant)

    assert created.status == 201
    assert created.headers["location"] == f"/users/{chosen}"
    assert later.status == 201, later.text
    assert later.json["id"] > chosen


@pytest.mark.parametrize("edge", [MAX_USER_ID, MAX_USER_ID - 1, RESERVE_WINDOW + 1])
def test_a_put_at_the_edge_of_the_id_range_leaves_post_working(
    api: InProcessApi, edge: int
) -> None:
    tenant = f"edge-{uuid.uuid4().hex[:8]}"

    created = api.request("PUT", f"/users/{edge}", json=new_user(), tenant=tenant)
    posted = api.request("POST", "/users", json=new_user(), tenant=tenant)
    batch = api.request(
        "POST", "/users/batch", json={"users": [new_user(), new_user()]}, tenant=tenant
    )
    ids = [posted.json["id"], *(u["id"] for u in batch.json["users"])]
    reads = [api.request("GET", f"/users/{i}", tenant=tenant) for i in [edge, *ids]]

    assert (created.status, posted.status, batch.status) == (201, 201, 201), batch.text
    assert ids == [1, 2, 3]  # the counter was left where it was
    assert [r.status for r in reads] == [200] * 4  # every id handed out is one a route takes


def test_a_second_user_with_the_same_email_is_a_conflict(api: InProcessApi) -> None:
    first = create(api)

    again = api.request("POST", "/users", json=new_user(email=first["email"].upper()))
    other = create(api)
    patched = api.request("PATCH", f"/users/{other['id']}", json={"email": first["email"]})

    assert again.status == 409
    assert [e.lower() for e in again.json["emails"]] == [first["email"]]
    assert patched.status == 409
    assert api.request("GET", f"/users/{other['id']}").json["email"] == other["email"]


def test_an_email_given_up_can_be_taken(api: InProcessApi) -> None:
    first = create(api)
    old_email = first["email"]

    api.request("PATCH", f"/users/{first['id']}", json={"email": f"new-{old_email}"})
    taken = api.request("POST", "/users", json=new_user(email=old_email))

    assert taken.status == 201


def test_read_your_write_from_the_cache(api: InProcessApi, dynamodb: DynamoCalls) -> None:
    user = create(api)
    api.request("GET", f"/users/{user['id']}")

    for change in ({"name": "After PATCH"}, None):
        if change:
            api.request("PATCH", f"/users/{user['id']}", json=change)
        else:
            api.request("PUT", f"/users/{user['id']}", json=new_user(name="After PUT"))
        dynamodb.calls.clear()
        read = api.request("GET", f"/users/{user['id']}")
        # The write went through to the cache: the read is served without DynamoDB.
        assert read.json["name"] == (change or {}).get("name", "After PUT")
        assert dynamodb.calls["GetItem"] == 0

    api.request("DELETE", f"/users/{user['id']}")
    dynamodb.calls.clear()
    assert api.request("GET", f"/users/{user['id']}").status == 404
    assert dynamodb.calls["GetItem"] == 0


@requires_redis_server
def test_batch_get_counts_its_calls(
    api: InProcessApi, dynamodb: DynamoCalls, local_stack: LocalStack
) -> None:
    users = [create(api) for _ in range(5)]
    ids = [u["id"] for u in users]
    missing = [9_000_000_000 + i for i in range(2)]
    for user_id in ids[:3]:  # three cached (POST wrote them through) ...
        api.request("GET", f"/users/{user_id}")
    redis = RedisCalls(local_stack.redis_url)
    # ... and two evicted, as if their TTL had run out
    service = get_users_service()
    assert redis.client.delete(*[service.cache.key("user", TENANT, i) for i in ids[3:]]) == 2
    redis.client.config_resetstat()
    dynamodb.calls.clear()

    query = "&".join(f"user_ids={i}" for i in [*ids, *missing])
    response = api.request("GET", "/users/batch", query=query)

    assert response.status == 200
    assert [u["id"] for u in response.json["users"]] == ids
    assert response.json["missing"] == missing
    calls = redis.calls()
    assert calls.get("mget") == 1
    assert calls.get("get", 0) == 0
    assert calls.get("set") == 4  # one pipelined fill: 2 users + 2 known-absent ids
    assert dict(dynamodb.calls) == {"BatchGetItem": 1}

    # Again: everything, the absent ids included, now comes from the cache.
    dynamodb.calls.clear()
    again = api.request("GET", "/users/batch", query=query)
    assert again.json == response.json
    assert dict(dynamodb.calls) == {}


def test_bulk_create_of_a_hundred(api: InProcessApi) -> None:
    body = {"users": [new_user() for _ in range(100)]}

    response = api.request("POST", "/users/batch", json=body)

    assert response.status == 201
    users = response.json["users"]
    assert [u["email"] for u in users] == [u["email"] for u in body["users"]]
    assert len({u["id"] for u in users}) == 100
    query = "&".join(f"user_ids={u['id']}" for u in users)
    assert api.request("GET", "/users/batch", query=query).json["missing"] == []


def test_bulk_create_is_all_or_nothing(api: InProcessApi) -> None:
    taken = create(api)
    batch = [new_user() for _ in range(60)] + [new_user(email=taken["email"])]

    response = api.request("POST", "/users/batch", json={"users": batch})

    assert response.status == 409
    assert response.json["emails"] == [taken["email"]]
    # The first 50 went in before the conflict; they were taken out again.
    assert api.request("POST", "/users", json=batch[0]).status == 201


def test_two_hundred_concurrent_cold_reads_make_one_dynamodb_read(
    api: InProcessApi, dynamodb: DynamoCalls
) -> None:
    user = create(api)
    service = get_users_service()
    get_loop().run_until_complete(
        service.cache.delete(service.cache.key("user", TENANT, user["id"]))
    )
    dynamodb.calls.clear()

    @lambda_handler
    async def stampede(event: Any, context: Any) -> list[dict[str, Any]]:
        return await asyncio.gather(*(service.get(TENANT, user["id"]) for _ in range(200)))

    results = stampede({}, lambda_context())

    assert results == [user] * 200
    breaker = service.cache.breaker
    assert dynamodb.calls["GetItem"] == 1, (dynamodb.calls, breaker.state, breaker.failures)


@requires_redis_server
def test_redis_killed_then_back(
    api: InProcessApi, dynamodb: DynamoCalls, local_stack: LocalStack
) -> None:
    assert local_stack.redis is not None
    redis = local_stack.redis
    user = create(api)
    service = get_users_service()
    breaker = service.cache.breaker
    breaker.reset_timeout_s = 3600  # the outage outlasts this test's first half
    try:
        redis.kill()  # the real process, by its pid

        # Every request still succeeds, from DynamoDB
        reads = [api.request("GET", f"/users/{user['id']}") for _ in range(6)]
        written = api.request("PATCH", f"/users/{user['id']}", json={"name": "During outage"})
        assert [r.status for r in reads] == [200] * 6
        assert written.status == 200
        assert api.request("GET", f"/users/{user['id']}").json["name"] == "During outage"
        health = api.request("GET", "/health")
        assert (health.status, health.json["status"]) == (200, "degraded")

        # and the breaker stopped calling Redis after its threshold (3 failures, no more)
        assert breaker.failures == 3
    finally:
        redis.restart()

    # Redis back and the cool-down over: one probe closes the circuit, the cache serves again.
    breaker.reset_timeout_s = 0
    api.request("GET", f"/users/{user['id']}")
    assert breaker.failures == 0
    assert str(breaker.state) == "closed"
    api.request("GET", f"/users/{user['id']}")  # fills the (restarted, empty) cache
    dynamodb.calls.clear()
    assert api.request("GET", f"/users/{user['id']}").json["name"] == "During outage"
    assert dynamodb.calls["GetItem"] == 0


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "status", "names"),
    [
        ("GET", "/users/abc", "", None, 422, "path.user_id"),
        ("GET", "/users/0", "", None, 422, "path.user_id"),
        ("GET", f"/users/{2**53}", "", None, 422, "path.user_id"),
        ("GET", "/users/batch", "", None, 422, "query.user_ids"),
        (
            "GET",
            "/users/batch",
            "&".join(f"user_ids={i}" for i in range(1, 102)),
            None,
            422,
            "query.user_ids",
        ),
        ("GET", "/users/batch", "user_ids=1&user_ids=x", None, 422, "query.user_ids.1"),
        ("POST", "/users", "", {"name": "", "email": "a@b.co"}, 422, "body.name"),
        ("POST", "/users", "", {"name": "x" * 101, "email": "a@b.co"}, 422, "body.name"),
        ("POST", "/users", "", {"name": "A", "email": "not-an-email"}, 422, "body.email"),
        (
            "POST",
            "/users",
            "",
            {"name": "A", "email": "a@b.co", "webhook_url": "http://x.org/h"},
            422,
            "body.webhook_url",
        ),
        ("POST", "/users", "", {"name": 5, "email": "a@b.co"}, 422, "body.name"),
        ("POST", "/users", "", {"name": "A", "email": "a@b.co", "admin": True}, 422, "body.admin"),
        ("PATCH", "/users/1", "", {}, 422, "body"),
        ("PATCH", "/users/1", "", {"name": None}, 422, "body.name"),
        ("POST", "/users/batch", "", {"users": []}, 422, "body.users"),
        (
            "POST",
            "/users/batch",
            "",
            {"users": [{"name": "A", "email": "a@b.co"}] * 101},
            422,
            "body.users",
        ),
    ],
)
def test_bad_input_is_a_problem_naming_the_field(
    api: InProcessApi,
    method: str,
    path: str,
    query: str,
    body: Any,
    status: int,
    names: str,
) -> None:
    response = api.request(method, path, query=query, json=body)

    assert response.status == status
    assert response.headers["content-type"] == "application/problem+json"
    assert names in {e["field"] for e in response.json["errors"]}
    assert "Traceback" not in response.text


def test_invalid_json_and_oversized_bodies(api: InProcessApi) -> None:
    headers = {"content-type": "application/json"}

    broken = api.request("POST", "/users", body=b'{"name": "A",', headers=headers)
    huge = api.request("POST", "/users", body=b" " * (256 * 1024 + 1), headers=headers)
    duplicates = api.request(
        "POST", "/users/batch", json={"users": [new_user(email="d@x.org")] * 2}
    )

    assert (broken.status, broken.json["title"]) == (400, "Malformed request body")
    assert huge.status == 413
    assert "over 262144 bytes" in huge.json["detail"]
    assert duplicates.status == 409
    assert duplicates.json["emails"] == ["d@x.org"]
