"""The local stack's servers (lambdaloop_local.services), exercised for real: moto in server mode,
redis-server (when on PATH), the embedded fakeredis, and the silent TCP server.

Each test also checks, through an autouse fixture, that it leaves no thread running.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lambdaloop_local.moto_patches import Bounds
from lambdaloop_local.services import (
    MotoServer,
    RedisServer,
    ServiceError,
    SilentServer,
    free_port,
)

requires_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs a redis-server binary on PATH"
)

_BOUND = 10.0  # seconds a polled condition gets before the test fails


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition()`` until it is true, failing after ``_BOUND`` seconds."""
    deadline = time.monotonic() + _BOUND
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield

    def settled() -> bool:
        return set(threading.enumerate()) <= before

    # Request threads of a threaded server end a moment after their client hangs up.
    _wait_for(settled, f"threads to end: {set(threading.enumerate()) - before}")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


def _redis_client(url: str, timeout: float = 2.0) -> redis.Redis:
    """A client that fails fast: one attempt, bounded connect and read."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def _refuses(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _create_table(endpoint_url: str, name: str) -> list[str]:
    client = boto3.client("dynamodb", endpoint_url=endpoint_url)
    try:
        client.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        return list(client.list_tables()["TableNames"])
    finally:
        client.close()


def _list_tables(endpoint_url: str) -> list[str]:
    client = boto3.client("dynamodb", endpoint_url=endpoint_url)
    try:
        return list(client.list_tables()["TableNames"])
    finally:
        client.close()


# -- moto ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("aws_env")
def test_moto_on_port_zero_serves_dynamodb_and_reset_clears_it() -> None:
    with MotoServer(port=0) as moto:
        moto.reset()  # moto's state is process-wide; start from nothing
        assert moto.endpoint_url.startswith("http://127.0.0.1:")
        assert not moto.endpoint_url.endswith(":0")

        assert _create_table(moto.endpoint_url, "jobs") == ["jobs"]

        moto.reset()
        assert _list_tables(moto.endpoint_url) == []


def _drain(sqs: Any, url: str) -> list[str]:
    """Receive (without deleting) until a receive comes back empty; the ids taken."""
    taken: list[str] = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        taken.extend(m["MessageId"] for m in messages)
    return taken


@pytest.mark.usefixtures("aws_env")
def test_moto_hands_each_message_to_one_of_many_concurrent_receivers() -> None:
    with MotoServer(port=0) as moto:
        moto.reset()
        sqs = boto3.client("sqs", endpoint_url=moto.endpoint_url)
        url = sqs.create_queue(QueueName="q", Attributes={"VisibilityTimeout": "300"})["QueueUrl"]
        for first in range(0, 100, 10):
            entries: list[Any] = [
                {"Id": str(n), "MessageBody": f"m{n}"} for n in range(first, first + 10)
            ]
            sqs.send_message_batch(QueueUrl=url, Entries=entries)

        with ThreadPoolExecutor(8) as pool:
            taken = [i for ids in pool.map(lambda _: _drain(sqs, url), range(8)) for i in ids]

        assert len(taken) == 100
        assert len(set(taken)) == 100  # SQS hides a received message from every other receive

        # A long poll that starts on an empty queue still gets a message sent meanwhile.
        sqs.purge_queue(QueueUrl=url)
        with ThreadPoolExecutor(1) as pool:
            poll = pool.submit(sqs.receive_message, QueueUrl=url, WaitTimeSeconds=20)
            sqs.send_message(QueueUrl=url, MessageBody="late")
            assert [m["Body"] for m in poll.result()["Messages"]] == ["late"]
        sqs.close()


def _counted_once(table: str, key: str) -> Any:
    """A transaction item that adds 1 to ``count`` of ``key``, only while it has none."""
    return {
        "Update": {
            "TableName": table,
            "Key": {"pk": {"S": key}},
            "UpdateExpression": "ADD #count :one",
            "ConditionExpression": "attribute_not_exists(#count)",
            "ExpressionAttributeNames": {"#count": "count"},
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
    }


@pytest.mark.usefixtures("aws_env")
def test_moto_transact_write_items_honours_client_request_token() -> None:
    with MotoServer(port=0) as moto:
        table = f"tokens-{uuid.uuid4().hex[:8]}"  # moto's state is shared: no reset here
        _create_table(moto.endpoint_url, table)
        dynamodb = boto3.client("dynamodb", endpoint_url=moto.endpoint_url)
        try:
            once = [_counted_once(table, "a")]

            # A repeat with the token succeeds without applying again (its condition would
            # now fail), as DynamoDB does for 10 minutes after the first success.
            dynamodb.transact_write_items(TransactItems=once, ClientRequestToken="token-1")
            dynamodb.transact_write_items(TransactItems=once, ClientRequestToken="token-1")
            item = dynamodb.get_item(TableName=table, Key={"pk": {"S": "a"}})["Item"]
            assert item["count"] == {"N": "1"}

            # The token with other parameters is refused, and nothing is written.
            with pytest.raises(dynamodb.exceptions.IdempotentParameterMismatchException):
                dynamodb.transact_write_items(
                    TransactItems=[_counted_once(table, "b")], ClientRequestToken="token-1"
                )
            assert "Item" not in dynamodb.get_item(TableName=table, Key={"pk": {"S": "b"}})

            # Without a token, a repeat is a new request: its condition fails.
            with pytest.raises(dynamodb.exceptions.TransactionCanceledException):
                dynamodb.transact_write_items(TransactItems=once)

            # A cancelled transaction is not remembered: its token's repeat runs again.
            with pytest.raises(dynamodb.exceptions.TransactionCanceledException):
                dynamodb.transact_write_items(TransactItems=once, ClientRequestToken="token-2")
            dynamodb.delete_item(TableName=table, Key={"pk": {"S": "a"}})
            dynamodb.transact_write_items(TransactItems=once, ClientRequestToken="token-2")
            item = dynamodb.get_item(TableName=table, Key={"pk": {"S": "a"}})["Item"]
            assert item["count"] == {"N": "1"}
        finally:
            dynamodb.delete_table(TableName=table)
            dynamodb.close()


@pytest.mark.usefixtures("aws_env")
def test_moto_answers_an_unknown_shard_iterator_as_dynamodb_streams_does() -> None:
    with MotoServer(port=0) as moto:
        streams = boto3.client("dynamodbstreams", endpoint_url=moto.endpoint_url)
        try:
            with pytest.raises(streams.exceptions.ExpiredIteratorException):
                streams.get_records(ShardIterator="no-such-iterator")
        finally:
            streams.close()


def test_moto_stop_frees_the_port_and_is_idempotent() -> None:
    first = MotoServer(port=0)
    first.start()
    port = int(first.endpoint_url.rsplit(":", 1)[1])
    first.stop()
    first.stop()
    with pytest.raises(ServiceError):
        _ = first.endpoint_url

    with MotoServer(port=port) as second:
        assert second.endpoint_url == f"http://127.0.0.1:{port}"


def test_moto_on_a_taken_port_raises_a_clear_error() -> None:
    with SilentServer() as squatter:
        moto = MotoServer(port=squatter.port)
        with pytest.raises(ServiceError, match=f"127.0.0.1:{squatter.port}.*taken"):
            moto.start()
        moto.stop()


def _streamed_table(dynamodb: Any, name: str) -> str:
    """A table with a NEW_IMAGE stream; its stream ARN."""
    table = dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )["TableDescription"]
    arn: str = table["LatestStreamArn"]
    return arn


def _read_all(streams: Any, iterator: str) -> tuple[list[dict[str, Any]], str]:
    """Every record from ``iterator`` on (reads until a read comes back empty); and the
    iterator to go on with."""
    records: list[dict[str, Any]] = []
    while True:
        response = streams.get_records(ShardIterator=iterator)
        iterator = response["NextShardIterator"]
        if not response["Records"]:
            return records, iterator
        records += response["Records"]


def _horizon(streams: Any, arn: str) -> str:
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]
    iterator: str = streams.get_shard_iterator(
        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    return iterator


@pytest.mark.usefixtures("aws_env")
def test_moto_keeps_a_bounded_number_of_stream_records_per_shard() -> None:
    with MotoServer(port=0, bounds=Bounds(stream_records=10)) as moto:
        dynamodb = boto3.client("dynamodb", endpoint_url=moto.endpoint_url)
        streams = boto3.client("dynamodbstreams", endpoint_url=moto.endpoint_url)
        try:
            arn = _streamed_table(dynamodb, "streamed")
            early_reader = _horizon(streams, arn)  # before anything was written

            for n in range(25):
                dynamodb.put_item(TableName="streamed", Item={"pk": {"S": f"k{n:02}"}})

            # Then: the shard keeps the newest 10, numbered as they were written
            kept, _ = _read_all(streams, _horizon(streams, arn))
            assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in kept] == [
                f"k{n:02}" for n in range(15, 25)
            ]
            numbers = [int(r["dynamodb"]["SequenceNumber"]) for r in kept]
            assert numbers == list(range(numbers[0], numbers[0] + 10))
            # and a reader that was behind the trimmed records reads on from the oldest kept
            # (moto answered a server error for ever before)
            behind, _ = _read_all(streams, early_reader)
            assert behind == kept
        finally:
            dynamodb.close()
            streams.close()


@pytest.mark.usefixtures("aws_env")
def test_moto_deletes_expired_items_of_a_ttl_table_as_dynamodb_ttl_does() -> None:
    with MotoServer(port=0, bounds=Bounds(ttl_sweep_s=0)) as moto:
        dynamodb = boto3.client("dynamodb", endpoint_url=moto.endpoint_url)
        streams = boto3.client("dynamodbstreams", endpoint_url=moto.endpoint_url)
        try:
            arn = _streamed_table(dynamodb, "expiring")
            dynamodb.update_time_to_live(
                TableName="expiring",
                TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
            )
            now = int(time.time())
            items = {
                "expired": {"expires_at": {"N": str(now - 60)}},
                "later": {"expires_at": {"N": str(now + 3600)}},
                "no-ttl": {},
                "not-a-number": {"expires_at": {"S": str(now - 60)}},
            }
            for key, attributes in items.items():
                dynamodb.put_item(TableName="expiring", Item={"pk": {"S": key}, **attributes})

            # When: the next request (the sweep runs before each one here)
            left = dynamodb.scan(TableName="expiring")["Items"]

            # Then: only the expired item is gone, with a REMOVE record by DynamoDB itself
            assert sorted(i["pk"]["S"] for i in left) == ["later", "no-ttl", "not-a-number"]
            records, _ = _read_all(streams, _horizon(streams, arn))
            [removal] = [r for r in records if r["eventName"] == "REMOVE"]
            assert removal["dynamodb"]["Keys"] == {"pk": {"S": "expired"}}
            assert removal["userIdentity"] == {
                "Type": "Service",
                "PrincipalId": "dynamodb.amazonaws.com",
            }
        finally:
            dynamodb.close()
            streams.close()


@pytest.mark.usefixtures("aws_env")
def test_moto_rolls_a_cancelled_transaction_back_without_losing_the_stream() -> None:
    """A cancelled transaction puts back what it wrote and leaves no stream record; a stream
    reader goes on getting the records written after it. (moto's own rollback swaps in a copy
    of the table: a reader went on with the old shard, saw the cancelled write's record and
    none of the later ones.)"""
    with MotoServer(port=0) as moto:
        dynamodb = boto3.client("dynamodb", endpoint_url=moto.endpoint_url)
        streams = boto3.client("dynamodbstreams", endpoint_url=moto.endpoint_url)
        try:
            arn = _streamed_table(dynamodb, "outbox")
            dynamodb.put_item(TableName="outbox", Item={"pk": {"S": "a"}, "n": {"N": "1"}})
            seen, iterator = _read_all(streams, _horizon(streams, arn))

            with pytest.raises(dynamodb.exceptions.TransactionCanceledException):
                dynamodb.transact_write_items(
                    TransactItems=[
                        {"Put": {"TableName": "outbox", "Item": {"pk": {"S": "b"}}}},
                        {
                            "Update": {
                                "TableName": "outbox",
                                "Key": {"pk": {"S": "a"}},
                                "UpdateExpression": "SET n = :two",
                                "ExpressionAttributeValues": {":two": {"N": "2"}},
                            }
                        },
                        {
                            "ConditionCheck": {
                                "TableName": "outbox",
                                "Key": {"pk": {"S": "z"}},
                                "ConditionExpression": "attribute_exists(pk)",
                            }
                        },
                    ]
                )
            dynamodb.put_item(TableName="outbox", Item={"pk": {"S": "c"}})

            items = {i["pk"]["S"]: i for i in dynamodb.scan(TableName="outbox")["Items"]}
            assert sorted(items) == ["a", "c"]
            assert items["a"]["n"] == {"N": "1"}
            later, _ = _read_all(streams, iterator)
            keys = [r["dynamodb"]["Keys"]["pk"]["S"] for r in seen + later]
            assert keys == ["a", "c"]
        finally:
            dynamodb.close()
            streams.close()


@pytest.mark.usefixtures("aws_env")
def test_moto_remembers_a_bounded_number_of_deleted_receipt_handles() -> None:
    with MotoServer(port=0, bounds=Bounds(deleted_handles=2)) as moto:
        sqs = boto3.client("sqs", endpoint_url=moto.endpoint_url)
        try:
            url = sqs.create_queue(QueueName="q")["QueueUrl"]
            for n in range(3):
                sqs.send_message(QueueUrl=url, MessageBody=f"m{n}")
            handles = [
                m["ReceiptHandle"]
                for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
            ]
            assert len(handles) == 3
            for handle in handles:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)

            # A repeated delete of a recent message succeeds, as on SQS; the oldest is forgotten.
            sqs.delete_message(QueueUrl=url, ReceiptHandle=handles[-1])
            with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid):
                sqs.delete_message(QueueUrl=url, ReceiptHandle=handles[0])
        finally:
            sqs.close()


@pytest.mark.usefixtures("aws_env")
def test_moto_runs_in_a_child_process_that_is_reaped_when_it_dies_unsupervised() -> None:
    with MotoServer(port=0) as moto:
        pid = moto.pid
        assert pid is not None
        assert pid != os.getpid()
        port = int(moto.endpoint_url.rsplit(":", 1)[1])
        watcher = next(t for t in threading.enumerate() if t.name == f"moto-{pid}-watch")

        os.kill(pid, signal.SIGKILL)
        watcher.join(_BOUND)

        # Reaped at once (no zombie), and the port refuses connections like a dead server's
        assert not watcher.is_alive()
        assert moto.pid is None
        assert not _pid_exists(pid)
        assert _refuses("127.0.0.1", port)


# -- real redis-server ---------------------------------------------------------------------------


@pytest.mark.redis_server
@requires_redis_server
def test_real_redis_answers_dies_on_kill_and_comes_back_on_restart() -> None:
    with RedisServer() as server:
        assert server.is_real
        assert server.kind.startswith("redis-server ")
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = _redis_client(server.url)
        try:
            assert client.ping() is True
        finally:
            client.close()
        pid = server.pid
        assert pid is not None
        port = server.port

        # When: an outage
        server.kill()

        # Then: the port refuses connections and the process is gone (reaped, not a zombie)
        assert server.pid is None
        assert not _pid_exists(pid)
        assert _refuses("127.0.0.1", port)

        # When: Redis is back
        server.restart()

        # Then: same port, new process, answering again
        assert server.port == port
        assert server.pid not in (None, pid)
        client = _redis_client(server.url)
        try:
            assert client.set("k", "v") is True
            assert client.get("k") == b"v"
        finally:
            client.close()


@pytest.mark.redis_server
@requires_redis_server
def test_real_redis_stop_leaves_no_process_and_is_idempotent() -> None:
    server = RedisServer()
    try:
        server.start()
        pid = server.pid
        assert pid is not None
    finally:
        server.stop()
    server.stop()

    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _refuses("127.0.0.1", server.port)


@pytest.mark.redis_server
@requires_redis_server
def test_real_redis_on_a_taken_port_fails_with_the_log_tail() -> None:
    with SilentServer() as squatter:
        server = RedisServer(port=squatter.port)
        try:
            with pytest.raises(ServiceError, match="Address already in use"):
                server.start()
            assert server.pid is None
        finally:
            server.stop()


# -- embedded fakeredis --------------------------------------------------------------------------


def test_fake_redis_answers_set_get_and_restarts_on_the_same_port() -> None:
    with RedisServer(prefer_real=False) as server:
        assert not server.is_real
        assert server.kind == "fakeredis (embedded)"
        assert server.pid is None
        client = _redis_client(server.url)
        try:
            assert client.set("k", "v") is True
            assert client.get("k") == b"v"
        finally:
            client.close()
        port = server.port

        server.restart()

        assert server.port == port
        client = _redis_client(server.url)
        try:
            assert client.ping() is True
        finally:
            client.close()

    assert _refuses("127.0.0.1", port)


def test_fake_redis_cannot_be_killed() -> None:
    with RedisServer(prefer_real=False) as server, pytest.raises(ServiceError, match="real"):
        server.kill()


def test_fake_redis_start_stop_cycles_leave_nothing_behind() -> None:
    server = RedisServer(prefer_real=False)
    for _ in range(3):
        server.start()
        server.start()  # no-op while running
        server.stop()
        server.stop()


# -- silent server -------------------------------------------------------------------------------


def test_silent_server_makes_a_redis_client_time_out() -> None:
    with SilentServer() as silent:
        client = _redis_client(silent.url, timeout=0.2)
        try:
            with pytest.raises(redis.exceptions.TimeoutError):
                client.ping()
        finally:
            client.close()
    assert _refuses("127.0.0.1", silent.port)


def test_silent_server_keeps_connections_open_until_stop() -> None:
    silent = SilentServer(port=free_port())
    silent.start()
    try:
        conn = socket.create_connection(("127.0.0.1", silent.port), timeout=1.0)
    except BaseException:
        silent.stop()
        raise
    with conn:
        silent.stop()
        silent.stop()
        # the server closed its end: the client reads EOF instead of hanging
        assert conn.recv(1) == b""
