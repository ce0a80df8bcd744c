"""The fault-injecting proxy (tests/faultproxy.py) between a real boto3 client and the
emulator's moto: what the client sees for each fault, and whether the write happened.

Every test makes its own table (moto is shared by the session). Waits are on the faults'
``fired`` events with generous bounds, never on elapsed time. They use the session's moto
(``session_stack``) rather than ``local_stack``, which re-creates the template's resources
before each test: these tests need none of them.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aiohttp import web
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

from faultproxy import (
    Blackhole,
    CutAnswer,
    Delay,
    FaultProxy,
    FaultProxyError,
    ProxyThread,
    Refuse,
    running_proxy,
)
from lambdaloop_local.stack import LOCAL_CREDENTIALS, LocalStack
from support import LoopbackHttpServer, run

#: Bound on every wait for a fault to fire: only a broken proxy takes anywhere near it.
FIRED_TIMEOUT_S = 30.0
#: The client's read timeout where no answer is held back for good: far above what moto
#: takes on a loaded machine, so only a fault can make a call fail.
PATIENT_READ_TIMEOUT_S = 30.0


@pytest.fixture
def proxy(session_stack: LocalStack) -> Iterator[FaultProxy]:
    with running_proxy(session_stack.aws_endpoint) as proxy:
        yield proxy


@pytest.fixture
def direct(session_stack: LocalStack) -> Iterator[Any]:
    """A DynamoDB client straight to moto: what really got written."""
    client = session_stack.aws_client("dynamodb")
    yield client
    client.close()


@pytest.fixture
def table(direct: Any) -> Iterator[str]:
    name = f"faultproxy-{uuid.uuid4().hex}"
    direct.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    yield name
    direct.delete_table(TableName=name)


@pytest.fixture
def via_proxy(session_stack: LocalStack, proxy: FaultProxy) -> Iterator[Any]:
    """A DynamoDB client through the proxy that never retries (the default would resend a
    cut request, hiding the fault)."""
    client = dynamodb_client(session_stack, proxy, read_timeout=PATIENT_READ_TIMEOUT_S)
    yield client
    client.close()


def dynamodb_client(session_stack: LocalStack, proxy: FaultProxy, read_timeout: float) -> Any:
    # retries={"max_attempts": 1} would still allow one retry: max_attempts counts retries,
    # total_max_attempts counts calls.
    config = Config(read_timeout=read_timeout, retries={"total_max_attempts": 1})
    return boto3.client(
        "dynamodb",
        endpoint_url=proxy.endpoint_url,
        region_name=session_stack.config.pseudo.region,
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=config,
    )


def item(key: str, value: str = "v") -> dict[str, Any]:
    return {"pk": {"S": key}, "value": {"S": value}}


def stored(direct: Any, table: str, key: str) -> dict[str, Any] | None:
    found = direct.get_item(TableName=table, Key={"pk": {"S": key}}, ConsistentRead=True)
    stored_item: dict[str, Any] | None = found.get("Item")
    return stored_item


def without_metadata(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "ResponseMetadata"}


# ------------------------------------------------------------------------------ pass through


def test_requests_pass_through_unchanged(
    session_stack: LocalStack, proxy: FaultProxy, direct: Any, via_proxy: Any
) -> None:
    name = f"faultproxy-{uuid.uuid4().hex}"
    via_proxy.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    try:
        via_proxy.put_item(TableName=name, Item=item("a", "through the proxy"))
        through = via_proxy.get_item(TableName=name, Key={"pk": {"S": "a"}}, ConsistentRead=True)
        straight = direct.get_item(TableName=name, Key={"pk": {"S": "a"}}, ConsistentRead=True)
    finally:
        direct.delete_table(TableName=name)

    assert through["Item"] == item("a", "through the proxy")
    assert without_metadata(through) == without_metadata(straight)
    # One keep-alive connection carried them all, each recognised as its own request.
    assert proxy.seen == ["CreateTable", "PutItem", "GetItem"]
    assert proxy.errors == []


def test_operations_without_a_fault_are_unaffected(
    proxy: FaultProxy, direct: Any, via_proxy: Any, table: str
) -> None:
    direct.put_item(TableName=table, Item=item("a"))
    refuse_puts = proxy.add_fault(Refuse("PutItem", times=None))

    found = via_proxy.get_item(TableName=table, Key={"pk": {"S": "a"}}, ConsistentRead=True)
    described = via_proxy.describe_table(TableName=table)

    assert found["Item"] == item("a")
    assert described["Table"]["TableName"] == table
    assert refuse_puts.hits == 0
    assert not refuse_puts.fired.is_set()
    assert proxy.seen == ["GetItem", "DescribeTable"]


# ------------------------------------------------------------------------------ faults


def test_cut_answer_fails_the_call_but_the_write_happened(
    proxy: FaultProxy, direct: Any, via_proxy: Any, table: str
) -> None:
    cut = proxy.add_fault(CutAnswer("PutItem"))

    with pytest.raises(ConnectionClosedError):
        via_proxy.put_item(TableName=table, Item=item("cut"))

    assert cut.fired.wait(FIRED_TIMEOUT_S)
    assert cut.hits == 1
    assert stored(direct, table, "cut") == item("cut")
    assert proxy.seen == ["PutItem"]  # sent once: the client did not retry


def test_refuse_fails_the_call_and_nothing_is_written(
    proxy: FaultProxy, direct: Any, via_proxy: Any, table: str
) -> None:
    refuse = proxy.add_fault(Refuse("PutItem"))

    with pytest.raises(ConnectionClosedError):
        via_proxy.put_item(TableName=table, Item=item("refused"))

    assert refuse.fired.wait(FIRED_TIMEOUT_S)
    assert refuse.hits == 1
    assert stored(direct, table, "refused") is None
    assert proxy.seen == ["PutItem"]


def test_delay_holds_the_answer_back_then_passes_it_on(
    proxy: FaultProxy, direct: Any, via_proxy: Any, table: str
) -> None:
    delay = proxy.add_fault(Delay("PutItem", 0.5))

    answer = via_proxy.put_item(TableName=table, Item=item("late"), ReturnValues="ALL_OLD")

    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert "Attributes" not in answer  # a new item: the answer is PutItem's own
    assert delay.hits == 1
    assert stored(direct, table, "late") == item("late")


def test_blackhole_times_the_client_out_but_the_write_happened(
    session_stack: LocalStack, proxy: FaultProxy, direct: Any, table: str
) -> None:
    blackhole = proxy.add_fault(Blackhole("PutItem"))
    impatient = dynamodb_client(session_stack, proxy, read_timeout=1)
    try:
        with pytest.raises(ReadTimeoutError):
            impatient.put_item(TableName=table, Item=item("unanswered"))
    finally:
        impatient.close()

    # Fired once moto answered: the write is done even if the client gave up before.
    assert blackhole.fired.wait(FIRED_TIMEOUT_S)
    assert blackhole.hits == 1
    assert stored(direct, table, "unanswered") == item("unanswered")


def test_times_limits_a_fault_to_the_first_requests(
    proxy: FaultProxy, direct: Any, via_proxy: Any, table: str
) -> None:
    cut = proxy.add_fault(CutAnswer("PutItem", times=2))

    for key in ("first", "second"):
        with pytest.raises(ConnectionClosedError):
            via_proxy.put_item(TableName=table, Item=item(key))
    via_proxy.put_item(TableName=table, Item=item("third"))

    assert cut.hits == 2
    assert [stored(direct, table, key) for key in ("first", "second", "third")] == [
        item("first"),
        item("second"),
        item("third"),
    ]
    assert proxy.seen == ["PutItem", "PutItem", "PutItem"]


def test_a_fault_for_every_request_and_clear(
    proxy: FaultProxy, direct: Any, via_proxy: Any, table: str
) -> None:
    refuse = proxy.add_fault(Refuse("PutItem", times=None))
    for key in ("a", "b"):
        with pytest.raises(ConnectionClosedError):
            via_proxy.put_item(TableName=table, Item=item(key))

    proxy.clear()
    via_proxy.put_item(TableName=table, Item=item("c"))

    assert refuse.hits == 2
    assert [stored(direct, table, key) for key in ("a", "b", "c")] == [None, None, item("c")]


def test_faults_apply_in_the_order_added_and_seen_keeps_the_order(
    proxy: FaultProxy, direct: Any, via_proxy: Any, table: str
) -> None:
    refuse = proxy.add_fault(Refuse("PutItem"))
    cut = proxy.add_fault(CutAnswer("PutItem"))

    with pytest.raises(ConnectionClosedError):
        via_proxy.put_item(TableName=table, Item=item("refused"))
    via_proxy.get_item(TableName=table, Key={"pk": {"S": "refused"}})
    with pytest.raises(ConnectionClosedError):
        via_proxy.put_item(TableName=table, Item=item("cut"))
    via_proxy.put_item(TableName=table, Item=item("passed"))

    assert (refuse.hits, cut.hits) == (1, 1)
    assert proxy.seen == ["PutItem", "GetItem", "PutItem", "PutItem"]
    assert stored(direct, table, "refused") is None
    assert stored(direct, table, "cut") == item("cut")
    assert stored(direct, table, "passed") == item("passed")


def test_a_client_in_another_process_goes_through_the_proxy(
    session_stack: LocalStack, proxy: FaultProxy, direct: Any, table: str
) -> None:
    # As the emulator's Lambda functions find DynamoDB: from the environment.
    delay = proxy.add_fault(Delay("PutItem", 0.2))
    script = (
        "import boto3, sys\n"
        "boto3.client('dynamodb').put_item(TableName=sys.argv[1],"
        " Item={'pk': {'S': 'child'}, 'value': {'S': 'v'}})\n"
    )
    env = {
        **os.environ,
        **LOCAL_CREDENTIALS,
        "AWS_DEFAULT_REGION": session_stack.config.pseudo.region,
        "AWS_ENDPOINT_URL_DYNAMODB": proxy.endpoint_url,
    }
    env.pop("AWS_ENDPOINT_URL", None)

    subprocess.run([sys.executable, "-c", script, table], env=env, check=True, timeout=60)

    assert delay.hits == 1
    assert proxy.seen == ["PutItem"]
    assert stored(direct, table, "child") == item("child")


# ------------------------------------------------------------------------------ HTTP framing


class Routes:
    """``GET /chunked`` answers a chunked body; ``POST /echo`` answers the body it got,
    recorded in ``echoed``."""

    def __init__(self) -> None:
        self.echoed: list[bytes] = []

    def __call__(self, router: Any) -> None:
        router.add_get("/chunked", self.chunked)
        router.add_post("/echo", self.echo)

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"one,", b"two,", b"three"):
            await response.write(part)
        await response.write_eof()
        return response

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.echoed.append(body)
        return web.json_response({"body": body.decode()})


def test_chunked_answers_are_passed_on_whole_on_a_kept_alive_connection() -> None:
    with LoopbackHttpServer(Routes()) as upstream, running_proxy(upstream.url) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        try:
            conn.request("GET", "/chunked")
            first = conn.getresponse()
            chunked_body = first.read()
            conn.request("POST", "/echo", body=b"after")
            second = conn.getresponse()
            echoed = json.loads(second.read())
        finally:
            conn.close()

    assert first.getheader("transfer-encoding") == "chunked"
    assert chunked_body == b"one,two,three"
    assert echoed == {"body": "after"}
    assert proxy.seen == ["GET /chunked", "POST /echo"]


def test_a_chunked_request_body_fails_loudly() -> None:
    routes = Routes()
    with LoopbackHttpServer(routes) as upstream:
        runner = ProxyThread(upstream.url)
        proxy = runner.start()
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        try:
            conn.request("POST", "/echo", body=iter([b"a", b"b"]), encode_chunked=True)
            status = conn.getresponse().status
        finally:
            conn.close()
        with pytest.raises(FaultProxyError, match="chunked request bodies"):
            runner.stop()

    assert status == 501
    assert routes.echoed == []


def test_on_the_tests_own_loop_closing_ends_a_blackholed_request() -> None:
    import asyncio

    import aiohttp

    async def scenario(upstream_url: str) -> tuple[type[BaseException], int]:
        proxy = FaultProxy.for_url(upstream_url)
        await proxy.start()
        blackhole = proxy.add_fault(Blackhole("POST /echo"))
        async with aiohttp.ClientSession() as session:
            # A POST: aiohttp would resend a GET whose connection closed (to a proxy that
            # no longer listens, which would hide what the first attempt saw).
            call = asyncio.ensure_future(session.post(f"{proxy.endpoint_url}/echo", data=b"x"))
            async with asyncio.timeout(FIRED_TIMEOUT_S):
                await blackhole.wait_fired()
            await proxy.aclose()
            async with asyncio.timeout(FIRED_TIMEOUT_S):
                with pytest.raises(aiohttp.ClientError) as failure:
                    await call
        return failure.type, blackhole.hits

    routes = Routes()
    with LoopbackHttpServer(routes) as upstream:
        error, hits = run(scenario(upstream.url))

    assert issubclass(error, aiohttp.ServerDisconnectedError)
    assert hits == 1
    assert routes.echoed == [b"x"]  # forwarded and answered upstream; the client never got it
