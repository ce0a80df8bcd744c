"""The local stack as a supervisor: moto and redis-server killed by pid (SIGKILL, from outside,
as the OOM killer or a stray ``kill -9`` would) come back on their ports, and the stack works
through them again; moto's resources are made again, since its state died with it.

Each test waits on the supervisor's restart counter (a condition), never on elapsed time; the
bounds given are generous upper limits for a loaded machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis

from lambdaloop_local.functions import FunctionPool
from lambdaloop_local.stack import LocalStack, StackConfig
from support import requires_redis_server

EVENTS = Path(__file__).parents[2] / "infra" / "events"
#: Upper bound for a restart (moto imports itself again: seconds on a busy machine).
_RESTART_BOUND_S = 120.0


@pytest.fixture
def stack() -> Iterator[LocalStack]:
    """A stack of its own: these tests kill its servers, which the session's must not see."""
    stack = LocalStack(StackConfig(aws_port=0, redis_port=0))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def _gone(pid: int) -> bool:
    """True once no process has ``pid``: reaped, not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def _health(pool: FunctionPool) -> tuple[int, Any]:
    event = json.loads((EVENTS / "api-health.json").read_text())
    outcome = await pool.invoke(event)
    return outcome.result["statusCode"], json.loads(outcome.result["body"])


def _watcher(name: str, pid: int) -> threading.Thread | None:
    return next((t for t in threading.enumerate() if t.name == f"{name}-{pid}-watch"), None)


def test_moto_killed_by_pid_comes_back_with_the_templates_resources(stack: LocalStack) -> None:
    assert stack.moto is not None
    moto, endpoint = stack.moto, stack.aws_endpoint
    before = stack.resources
    tables = stack.aws_client("dynamodb")
    users = before.refs["UsersTable"]
    tables.put_item(TableName=users, Item={"pk": {"S": "U#1"}, "sk": {"S": "META"}})
    secret_arn = before.refs["WebhookSigningSecret"]
    secret = stack.aws_client("secretsmanager").get_secret_value(SecretId=secret_arn)

    async def scenario() -> tuple[int, int, tuple[int, Any]]:
        pool = FunctionPool(stack.local_function("ApiFunction"))
        try:
            warm = await _health(pool)  # a warm environment, with its clients connected
            assert warm[0] == 200
            pid = moto.pid
            assert pid is not None

            # When: moto's process is killed from outside
            os.kill(pid, signal.SIGKILL)
            restarted = await asyncio.to_thread(
                stack.supervisor.wait_for_restarts, "moto", 1, _RESTART_BOUND_S
            )
            assert restarted
            # then the warm environment calls through the new moto
            return pid, moto.pid or 0, await _health(pool)
        finally:
            await pool.aclose()

    pid, new_pid, (status, body) = asyncio.run(scenario())

    # Then: the supervisor restarted it on the same endpoint, as a new process
    assert _gone(pid)
    assert new_pid not in (0, pid)
    assert stack.aws_endpoint == endpoint
    # and the call through the stack succeeded
    assert status == 200
    assert body["checks"] == {"dynamodb": "ok", "redis": "ok", "queue": "ok"}

    # and every resource of the template exists again, empty (moto's state was lost)
    after = stack.resources
    listed = set(tables.list_tables()["TableNames"])
    assert {after.refs[t] for t in stack.template.of_type("AWS::DynamoDB::Table")} <= listed
    assert "Item" not in tables.get_item(
        TableName=users, Key={"pk": {"S": "U#1"}, "sk": {"S": "META"}}
    )
    ttl = tables.describe_time_to_live(TableName=users)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED"
    sqs = stack.aws_client("sqs")
    for queue in stack.template.of_type("AWS::SQS::Queue"):
        assert after.refs[queue] == before.refs[queue]
        sqs.get_queue_attributes(QueueUrl=after.refs[queue], AttributeNames=["QueueArn"])
    buckets = {b["Name"] for b in stack.aws_client("s3").list_buckets()["Buckets"]}
    assert after.refs["JobResultsBucket"] in buckets
    # A secret keeps its ARN and value: the functions' environments and receivers hold them.
    again = stack.aws_client("secretsmanager").get_secret_value(SecretId=secret_arn)
    assert again["SecretString"] == secret["SecretString"]
    # The tables' streams are new: the stream readers made now read them.
    streams = stack.aws_client("dynamodbstreams")
    old_streams = {before.attributes[f"{t}.StreamArn"] for t in ("JobsTable", "NotificationsTable")}
    for source in stack.stream_event_sources():
        assert source.config.stream_arn not in old_streams
        streams.describe_stream(StreamArn=source.config.stream_arn)


@requires_redis_server
def test_redis_killed_by_pid_comes_back_on_its_port(stack: LocalStack) -> None:
    assert stack.redis is not None
    server = stack.redis
    client = redis.Redis.from_url(stack.redis_url)  # redis-py's defaults: it retries once
    try:
        client.set("k", "v")
        pid = server.pid
        assert pid is not None

        # When: redis-server is killed from outside
        os.kill(pid, signal.SIGKILL)

        # Then: it is back on the same port, as a new process, empty
        assert stack.supervisor.wait_for_restarts("redis", 1, _RESTART_BOUND_S)
        assert _gone(pid)
        assert server.pid not in (None, pid)
        # A client connected before reconnects by itself.
        assert client.ping() is True
        assert client.get("k") is None
    finally:
        client.close()

    # and a call through the stack sees a healthy Redis
    async def call() -> tuple[int, Any]:
        pool = FunctionPool(stack.local_function("ApiFunction"))
        try:
            return await _health(pool)
        finally:
            await pool.aclose()

    status, body = asyncio.run(call())
    assert status == 200
    assert body["checks"]["redis"] == "ok"


@requires_redis_server
def test_a_deliberate_kill_is_an_outage_the_supervisor_leaves_alone(stack: LocalStack) -> None:
    assert stack.redis is not None
    pid = stack.redis.pid
    assert pid is not None
    watcher = _watcher("redis-server", pid)
    assert watcher is not None

    stack.redis.kill()  # what outage tests do: Redis stays down until they restart it
    watcher.join(_RESTART_BOUND_S)

    assert not watcher.is_alive()
    assert stack.supervisor.restarts("redis") == 0
    assert stack.redis.pid is None
    stack.redis.restart()
    assert stack.redis.pid is not None


def test_stop_leaves_no_process_and_no_watcher(stack: LocalStack) -> None:
    assert stack.moto is not None
    pids = {"moto": stack.moto.pid, "redis-server": stack.redis.pid if stack.redis else None}
    watchers = [_watcher(name, pid) for name, pid in pids.items() if pid]
    assert all(watchers)

    stack.stop()

    assert all(_gone(pid) for pid in pids.values() if pid)
    assert not [w.name for w in watchers if w is not None and w.is_alive()]


def test_moto_dies_with_the_process_that_started_it() -> None:
    """A parent killed without stopping moto (SIGKILL) leaves no moto behind: the child
    exits when its stdin, the parent's pipe, reaches end of file."""
    script = (
        "import sys\n"
        "from lambdaloop_local.services import MotoServer\n"
        "m = MotoServer(port=0); m.start(); print(m.pid, flush=True); sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        moto_pid = int(parent.stdout.readline())
        parent.kill()
        parent.wait()
        # The child is the parent's orphan now; it ends on its own. Wait for it through a
        # pidfd (readable once the process has exited), with a generous bound.
        fd = os.pidfd_open(moto_pid)
    except ProcessLookupError:
        return  # already gone
    finally:
        if parent.stdin is not None:
            parent.stdin.close()
        if parent.stdout is not None:
            parent.stdout.close()
        parent.wait()
    try:
        readable, _, _ = select.select([fd], [], [], _RESTART_BOUND_S)
        assert readable, f"moto pid {moto_pid} outlived its parent"
    finally:
        os.close(fd)


def test_boto3_reaches_the_restarted_moto_through_a_kept_connection(stack: LocalStack) -> None:
    """The listening socket is the stack's: a client that connected before the kill gets
    its answer from the new process (botocore retries the broken connection)."""
    assert stack.moto is not None
    client = boto3.client(
        "dynamodb",
        endpoint_url=stack.aws_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.list_tables()  # a kept-alive connection to the first process
    pid = stack.moto.pid
    assert pid is not None

    os.kill(pid, signal.SIGKILL)
    assert stack.supervisor.wait_for_restarts("moto", 1, _RESTART_BOUND_S)

    assert stack.resources.refs["UsersTable"] in client.list_tables()["TableNames"]
