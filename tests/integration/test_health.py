"""GET /health through the API function's real handler, in a local execution environment
(a worker process with the function's environment), against moto and a real Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from lambdaloop.outbox import messages_for
from lambdaloop.store import item_from_image
from lambdaloop_local.functions import FunctionPool, InvocationError, LocalFunction
from lambdaloop_local.services import SilentServer, free_port
from lambdaloop_local.stack import LocalStack
from support import TENANT, http_event, requires_redis_server, with_claims

EVENTS = Path(__file__).parents[2] / "infra" / "events"
JSON = {"content-type": "application/json"}


def api_function(stack: LocalStack, **overrides: str) -> LocalFunction:
    base = stack.local_function("ApiFunction")
    return LocalFunction(base.spec, {**base.environment, **overrides}, base.layer_paths)


def event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return loaded


async def health_calls(function: LocalFunction, times: int = 1) -> list[tuple[int, Any]]:
    pool = FunctionPool(function)
    try:
        results = []
        for _ in range(times):
            outcome = await pool.invoke(event("api-health.json"))
            results.append((outcome.result["statusCode"], json.loads(outcome.result["body"])))
        return results
    finally:
        await pool.aclose()


def test_healthy(local_stack: LocalStack) -> None:
    [(status, body)] = asyncio.run(health_calls(api_function(local_stack)))

    assert status == 200
    assert body["status"] == "ok"
    assert body["checks"] == {"dynamodb": "ok", "redis": "ok", "queue": "ok"}


@requires_redis_server
def test_redis_killed_then_back(local_stack: LocalStack) -> None:
    assert local_stack.redis is not None
    redis = local_stack.redis
    function = api_function(local_stack)

    async def scenario() -> list[tuple[int, Any]]:
        pool = FunctionPool(function)
        seen = []
        try:
            for step in ("before", "killed", "back"):
                if step == "killed":
                    redis.kill()  # the real process, by its pid
                if step == "back":
                    redis.restart()
                outcome = await pool.invoke(event("api-health.json"))
                seen.append((outcome.result["statusCode"], json.loads(outcome.result["body"])))
        finally:
            if redis.pid is None:
                redis.restart()
            await pool.aclose()
        return seen

    (s1, before), (s2, killed), (s3, back) = asyncio.run(scenario())

    assert (s1, before["status"]) == (200, "ok")
    assert (s2, killed["status"]) == (200, "degraded")
    assert killed["checks"] == {"dynamodb": "ok", "redis": "error", "queue": "ok"}
    # The same warm environment reconnects once Redis is back.
    assert (s3, back["status"]) == (200, "ok")


def test_redis_that_never_answers_is_a_timeout(local_stack: LocalStack) -> None:
    with SilentServer() as silent:
        function = api_function(local_stack, REDIS_URL=silent.url)
        [(status, body)] = asyncio.run(health_calls(function))

    assert status == 200
    assert body["status"] == "degraded"
    assert body["checks"]["redis"] == "timeout"
    assert body["checks"]["dynamodb"] == "ok"


def test_dynamodb_unreachable_is_a_503(local_stack: LocalStack) -> None:
    # Nothing listens on this port: connections to "DynamoDB" are refused.
    dead = f"http://127.0.0.1:{free_port()}"
    function = api_function(local_stack, AWS_ENDPOINT_URL_DYNAMODB=dead)

    [(status, body)] = asyncio.run(health_calls(function))

    assert status == 503
    assert body["status"] == "down"
    assert body["checks"]["dynamodb"] in {"error", "timeout"}
    assert body["checks"]["redis"] == "ok"


def test_the_sam_local_invoke_events_parse_in_the_handler(local_stack: LocalStack) -> None:
    # In this order they tell a story: create user 1, read, change and delete it; queue a
    # fetch job, and ask for one that does not exist.
    expected = {
        "api-root.json": 200,
        "api-health.json": 200,
        "api-not-found.json": 404,
        "users-replace.json": 201,
        "users-notify.json": 202,
        "users-notifications.json": 200,
        "users-get.json": 200,
        "users-patch.json": 200,
        "users-batch-get.json": 200,
        "users-delete.json": 204,
        "users-create.json": 201,
        "users-batch-create.json": 201,
        "jobs-fetch-create.json": 202,
        "jobs-compute-create.json": 202,
        "jobs-get.json": 404,
    }
    http_events = {
        p.name
        for p in EVENTS.glob("*.json")
        if not p.name.startswith(("sqs-", "invoke-", "stream-"))
    }
    assert set(expected) == http_events, "an event is not tested"
    assert local_stack.moto is not None
    local_stack.moto.reset()  # an empty stack: user 1 does not exist yet
    local_stack.create_resources()

    async def invoke_all() -> dict[str, int]:
        pool = FunctionPool(api_function(local_stack))
        try:
            return {
                name: (await pool.invoke(event(name))).result["statusCode"] for name in expected
            }
        finally:
            await pool.aclose()

    statuses = asyncio.run(invoke_all())

    assert statuses == expected


@pytest.mark.parametrize(
    ("name", "queue"),
    [("stream-jobs-insert.json", "JobsQueue"), ("stream-notifications-insert.json", "NotifyQueue")],
)
def test_the_sam_local_invoke_stream_events_are_relayed(
    local_stack: LocalStack, name: str, queue: str
) -> None:
    stream_event = event(name)
    image = item_from_image(stream_event["Records"][0]["dynamodb"]["NewImage"])
    [expected] = messages_for(image)
    sqs, url = local_stack.aws_client("sqs"), local_stack.resources.refs[queue]
    sqs.purge_queue(QueueUrl=url)

    async def invoke() -> Any:
        pool = FunctionPool(local_stack.local_function("RelayFunction"))
        try:
            return (await pool.invoke(stream_event)).result
        finally:
            await pool.aclose()

    assert asyncio.run(invoke()) == {"batchItemFailures": []}
    [message] = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", [])
    assert json.loads(message["Body"]) == json.loads(expected.message.envelope.to_json())


def test_the_sam_local_invoke_sqs_event_fails_only_its_poison_record(
    local_stack: LocalStack,
) -> None:
    sqs_event = json.loads((EVENTS / "sqs-notify-deliver.json").read_text())
    poison = sqs_event["Records"][1]["messageId"]

    async def invoke() -> Any:
        pool = FunctionPool(local_stack.local_function("NotifyFunction"))
        try:
            return (await pool.invoke(sqs_event)).result
        finally:
            await pool.aclose()

    # The good record names a notification that does not exist here: dropped, not failed.
    assert asyncio.run(invoke()) == {"batchItemFailures": [{"itemIdentifier": poison}]}


def test_the_sam_local_invoke_jobs_event_runs_in_the_jobs_function(local_stack: LocalStack) -> None:
    sqs_event = json.loads((EVENTS / "sqs-jobs-part.json").read_text())
    envelope_id = json.loads(sqs_event["Records"][0]["body"])["id"]
    idempotency = local_stack.resources.refs["IdempotencyTable"]

    async def invoke() -> Any:
        pool = FunctionPool(local_stack.local_function("JobsFunction"))
        try:
            return (await pool.invoke(sqs_event)).result
        finally:
            await pool.aclose()

    response = asyncio.run(invoke())
    record = local_stack.aws_client("dynamodb").get_item(
        TableName=idempotency, Key={"id": {"S": envelope_id}}, ConsistentRead=True
    )["Item"]

    # The part names a job that does not exist here: dropped (and remembered), not failed.
    assert response == {"batchItemFailures": []}
    assert json.loads(record["result"]["S"]) == {"status": "missing"}


def test_a_bad_environment_fails_the_cold_start_naming_the_variable(
    local_stack: LocalStack,
) -> None:
    base = local_stack.local_function("ApiFunction")
    env = {k: v for k, v in base.environment.items() if k != "USERS_TABLE"}
    env["LAMBDALOOP_HEALTH_TIMEOUT_S"] = "fast"
    function = LocalFunction(base.spec, env, base.layer_paths)

    async def invoke() -> InvocationError:
        pool = FunctionPool(function)
        try:
            await pool.invoke(event("api-root.json"))
        except InvocationError as exc:
            return exc
        finally:
            await pool.aclose()
        raise AssertionError("the cold start should have failed")

    error = asyncio.run(invoke())

    assert error.payload["errorType"] == "Runtime.ImportModuleError"
    assert "USERS_TABLE: is required but not set" in error.payload["errorMessage"]
    assert "LAMBDALOOP_HEALTH_TIMEOUT_S: must be a number" in error.payload["errorMessage"]


def test_a_redis_that_never_answers_costs_three_calls_then_none(local_stack: LocalStack) -> None:
    # Given an API whose Redis accepts connections and never answers, and a breaker whose
    # cool-down outlasts the test
    with SilentServer() as silent:
        function = api_function(
            local_stack, REDIS_URL=silent.url, LAMBDALOOP_BREAKER_RESET_S="3600"
        )
        body = json.dumps({"name": "Hung", "email": f"hung-{uuid.uuid4().hex[:8]}@x.org"})

        async def scenario() -> tuple[list[int], int, list[int], int, Any]:
            pool = FunctionPool(function)
            try:
                created = await pool.invoke(
                    with_claims(
                        http_event("POST", "/users", headers=JSON, body=body.encode()), TENANT
                    )
                )
                user_id = json.loads(created.result["body"])["id"]
                first = [created.result["statusCode"]]
                for _ in range(4):
                    outcome = await pool.invoke(
                        with_claims(http_event("GET", f"/users/{user_id}"), TENANT)
                    )
                    first.append(outcome.result["statusCode"])
                connections = silent.connections
                later = []
                for _ in range(5):
                    outcome = await pool.invoke(
                        with_claims(http_event("GET", f"/users/{user_id}"), TENANT)
                    )
                    later.append(outcome.result["statusCode"])
                health = await pool.invoke(event("api-health.json"))
                return first, connections, later, silent.connections, health.result
            finally:
                await pool.aclose()

        first, connections, later, after, health = asyncio.run(scenario())

    # Then every request succeeds from DynamoDB ...
    assert first == [201, 200, 200, 200, 200]
    assert later == [200] * 5
    # ... Redis was tried until the breaker opened, then not at all ...
    assert 1 <= connections <= 3
    # ... and health (which probes Redis itself, past the breaker) says degraded.
    assert json.loads(health["body"])["checks"]["redis"] == "timeout"
    assert after == connections + 1
