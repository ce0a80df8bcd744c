"""SnapStart, as the emulator stands in for it: a function's init runs once (the snapshot),
each execution environment is a restore of it (a fork that runs the after-restore hooks),
and the layer's hook leaves a restored environment nothing of the snapshot's connections or
event loop: it serves requests on its own, sharing no socket with the snapshot."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

import lambdaloop_local.stack
from lambdaloop.cache import stable_key
from lambdaloop_local.functions import FunctionPool, InvocationResult, LocalFunction
from lambdaloop_local.stack import LocalStack
from support import (
    CI_AWS_TIMEOUTS,
    CI_REDIS_TIMEOUTS,
    TENANT,
    LoopbackHttpServer,
    attached_stack,
    function_in_folder,
    http_event,
    with_claims,
)

ROOT = Path(__file__).parents[2]
#: The layer, as the template's functions get it.
SHARED = ROOT / "shared"
#: Holds the stand-in for Lambda's snapshot_restore_py (its Python runtimes have the module).
RUNTIME_HOOKS = lambdaloop_local.stack.RUNTIME_HOOKS

#: A function that warms every kind of client at init, on the layer's loop (as some
#: functions do): its snapshot holds connections to Redis, DynamoDB and an HTTP server.
WARM_HANDLER = """
import os
import uuid

from lambdaloop.clients import aws_client, redis_client, run_blocking
from lambdaloop.runtime import get_loop, lambda_handler
from lambdaloop.ssrf import Policy, guarded_session

INIT_TOKEN = uuid.uuid4().hex  # drawn once, at init: every restore has the same


async def use_everything():
    pong = await redis_client().ping()
    tables = await run_blocking(aws_client("dynamodb").list_tables)
    session = guarded_session(Policy.for_user_urls(True))  # loopback: the local peer
    async with session.get(os.environ["PEER_URL"]) as response:
        body = await response.json()
    return {
        "redis": pong,
        "dynamodb": sorted(tables["TableNames"]),
        "http": body,
        "pid": os.getpid(),
        "init_token": INIT_TOKEN,
    }


get_loop().run_until_complete(use_everything())


@lambda_handler
async def handler(event, context):
    return await use_everything()
"""


def restored(function: LocalFunction, *, hooks: bool = True) -> LocalFunction:
    """``function`` with SnapStart on, and the runtime's hook module on its path (or not)."""
    paths = tuple(p for p in function.layer_paths if p != RUNTIME_HOOKS)
    return dataclasses.replace(
        function, snapstart=True, layer_paths=(*paths, RUNTIME_HOOKS) if hooks else paths
    )


def socket_inodes(pid: int) -> set[str]:
    """The sockets a process holds open ("socket:[inode]")."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed while we looked
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def run_in_pool(
    function: LocalFunction,
    scenario: Callable[[FunctionPool], Any],
    max_environments: int = 1,
) -> Any:
    async def main() -> Any:
        pool = FunctionPool(function, max_environments)
        try:
            return await scenario(pool)
        finally:
            await pool.aclose()

    return asyncio.run(main())


def warm_function(stack: LocalStack, code: Path, peer: LoopbackHttpServer) -> LocalFunction:
    (code / "warm.py").write_text(WARM_HANDLER)
    environment = {
        **stack.function_environment("ApiFunction"),
        **CI_REDIS_TIMEOUTS,
        **CI_AWS_TIMEOUTS,
        "PEER_URL": f"{peer.url}/hello",
    }
    function = function_in_folder(code, "warm.handler", timeout=30, environment=environment)
    return dataclasses.replace(function, layer_paths=(SHARED,))


def test_a_restored_environment_shares_no_socket_with_its_snapshot(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    with LoopbackHttpServer() as peer:
        function = restored(warm_function(local_stack, tmp_path, peer))

        async def scenario(pool: FunctionPool) -> tuple[InvocationResult, set[str], set[str]]:
            outcome = await pool.invoke({})
            snapshot = pool.snapshot_pid
            assert snapshot is not None
            child = outcome.result["pid"]
            assert parent_pid(child) == snapshot  # a restore of the snapshot, not a new init
            return outcome, socket_inodes(snapshot), socket_inodes(child)

        outcome, snapshot_sockets, child_sockets = run_in_pool(function, scenario)

        assert peer.requests == 2  # one at init (the snapshot's), one by the request

    # The restored environment served a request that used Redis, DynamoDB and aiohttp ...
    assert outcome.restore_ms is not None
    assert outcome.init_ms is None  # its init was the snapshot's
    result = outcome.result
    assert result["redis"] is True
    assert local_stack.resources.refs["UsersTable"] in result["dynamodb"]
    assert result["http"] == {"hello": "world"}
    # ... while the snapshot still holds the connections its init opened (the check would
    # see them: Redis, DynamoDB and the HTTP server, besides the emulator's socket), none of
    # which the restored environment holds, nor any other socket of the snapshot's.
    assert len(snapshot_sockets) >= 4
    assert snapshot_sockets.isdisjoint(child_sockets)


def test_without_the_hooks_a_restore_would_share_the_snapshots_sockets(
    local_stack: LocalStack, tmp_path: Path
) -> None:
    # The same function where the runtime has no hook module: nothing replaces the clients,
    # and the copy holds the snapshot's connections (what the check above rules out). (It
    # is not asked to serve: a fork has none of the thread pool's threads, which a real
    # restore keeps, so its boto3 call would never run.)
    with LoopbackHttpServer() as peer:
        function = restored(warm_function(local_stack, tmp_path, peer), hooks=False)

        async def scenario(pool: FunctionPool) -> tuple[set[str], set[str]]:
            await pool.warm()
            snapshot = pool.snapshot_pid
            [child] = pool.environment_pids
            assert snapshot is not None
            return socket_inodes(snapshot), socket_inodes(child)

        snapshot_sockets, child_sockets = run_in_pool(function, scenario)

    assert len(snapshot_sockets & child_sockets) >= 3  # Redis, DynamoDB, the HTTP server


def test_restored_environments_share_one_init(local_stack: LocalStack, tmp_path: Path) -> None:
    with LoopbackHttpServer() as peer:
        function = restored(warm_function(local_stack, tmp_path, peer))

        async def scenario(pool: FunctionPool) -> tuple[list[InvocationResult], int | None]:
            # Two at once: two environments, both restored from the one snapshot.
            outcomes = await asyncio.gather(pool.invoke({}), pool.invoke({}))
            return list(outcomes), pool.snapshot_pid

        outcomes, snapshot = run_in_pool(function, scenario, max_environments=2)

        assert peer.requests == 3  # the init's, once, and one per request

    first, second = (outcome.result for outcome in outcomes)
    assert first["pid"] != second["pid"]
    assert first["init_token"] == second["init_token"]  # the same init, not two
    assert snapshot not in (first["pid"], second["pid"])  # the snapshot serves nothing


def test_the_stack_restores_the_functions_the_template_gives_snapstart(
    session_stack: LocalStack,
) -> None:
    session_stack.create_resources()
    snapping = attached_stack(session_stack, {}, {"SnapStart": "true"})

    async def health() -> tuple[int, int | None]:
        pool = snapping.pool("ApiFunction")
        try:
            answer = (await pool.invoke(api_request("GET", "/health"))).result["statusCode"]
            return answer, pool.snapshot_pid
        finally:
            await snapping.aclose_functions()

    status, snapshot_pid = asyncio.run(health())

    assert not session_stack.local_function("ApiFunction").snapstart  # the default: off
    assert snapping.local_function("ApiFunction").snapstart
    assert RUNTIME_HOOKS in snapping.local_function("ApiFunction").layer_paths
    assert not snapping.local_function("NotifyFunction").snapstart  # the API's alone
    assert status == 200
    assert snapshot_pid is not None  # served by an environment restored from a snapshot


def api_request(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"content-type": "application/json"} if body is not None else {}
    payload = json.dumps(body).encode() if body is not None else b""
    return with_claims(http_event(method, path, headers=headers, body=payload), TENANT)


def test_a_restored_api_environment_serves_users_through_the_cache(
    local_stack: LocalStack,
) -> None:
    base = local_stack.local_function("ApiFunction")
    function = restored(
        dataclasses.replace(
            base, environment={**base.environment, **CI_REDIS_TIMEOUTS, **CI_AWS_TIMEOUTS}
        )
    )
    tag = uuid.uuid4().hex[:10]
    user = {"name": f"User {tag}", "email": f"user-{tag}@example.com"}
    cache = redis_sync.Redis.from_url(local_stack.redis_url)

    async def scenario(pool: FunctionPool) -> tuple[list[InvocationResult], bool, set[str]]:
        created = await pool.invoke(api_request("POST", "/users", user))
        assert created.result["statusCode"] == 201, created.result["body"]
        user_id = json.loads(created.result["body"])["id"]
        # The write went through to the cache, where the read finds it.
        cached = bool(cache.exists(stable_key("users", 1, "user", TENANT, user_id)))
        read = await pool.invoke(api_request("GET", f"/users/{user_id}"))
        snapshot = pool.snapshot_pid
        [child] = pool.environment_pids
        assert snapshot is not None
        assert parent_pid(child) == snapshot
        shared = socket_inodes(snapshot) & socket_inodes(child)
        return [created, read], cached, shared

    try:
        (created, read), cached, shared = run_in_pool(function, scenario)
    finally:
        cache.close()

    assert created.restore_ms is not None
    assert created.init_ms is None
    assert read.restore_ms is None  # the same environment, warm
    assert read.result["statusCode"] == 200
    assert json.loads(read.result["body"])["email"] == user["email"]
    assert cached
    assert not shared


PROBE_HANDLER = """
import importlib

import lambdaloop.runtime  # installs the layer's hook where the runtime has hooks


def handler(event, context):
    try:
        hooks = importlib.import_module("snapshot_restore_py")
    except ImportError:
        return None
    return [f"{func.__module__}.{func.__name__}" for func, _, _ in hooks.get_after_restore()]
"""


@pytest.mark.parametrize(
    ("hooks", "registered"), [(True, ["lambdaloop.snapstart.after_restore"]), (False, None)]
)
def test_the_layer_registers_its_hook_where_the_runtime_has_hooks(
    tmp_path: Path, hooks: bool, registered: list[str] | None
) -> None:
    (tmp_path / "probe.py").write_text(PROBE_HANDLER)
    function = function_in_folder(tmp_path, "probe.handler")
    function = restored(dataclasses.replace(function, layer_paths=(SHARED,)), hooks=hooks)

    async def scenario(pool: FunctionPool) -> InvocationResult:
        return await pool.invoke({})

    outcome = run_in_pool(function, scenario)

    assert outcome.result == registered
    assert outcome.restore_ms is not None
