"""The local gateway against bad clients: the real gateway server on loopback, raw sockets.

Whatever a client sends, the gateway answers what it does not pass on the way API Gateway
answers its own errors (JSON ``{"message": ...}``) or closes the connection, within its
configured limits; it never answers 500 or text/plain, and never waits forever. The bounds
are set short here; the tests assert the answers, never how long they took.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from lambdaloop_local.apigw import HttpRoute, http_api_routes, make_app, make_server
from lambdaloop_local.apigw_http import GatewayLimits
from lambdaloop_local.auth import JwtAuthorizer, SigningKey, template_scopes
from lambdaloop_local.stack import LocalStack

#: Short bounds, so that a stalled client is answered soon; generous enough not to trip on a
#: loaded machine while a test client is still writing what it means to send.
LIMITS = GatewayLimits(payload_bytes=4096, idle_timeout_s=1.0, body_timeout_s=1.0)
#: An upper bound on any one read: far above every bound the gateway is given.
SOCKET_TIMEOUT_S = 60.0

ROUTES = [HttpRoute.parse("ANY", "/{proxy+}", "Proxy"), HttpRoute.parse("ANY", "/", "Root")]


class RunningGateway:
    """``make_server`` (or, ``as_app``, ``make_app`` in an aiohttp app) on 127.0.0.1 on its
    own loop in a thread, in front of ``invoke`` (by default a function that records its
    events and answers 200)."""

    def __init__(
        self,
        limits: GatewayLimits = LIMITS,
        *,
        cleanup: Callable[[], Awaitable[None]] | None = None,
        as_app: bool = False,
        **server_args: Any,
    ) -> None:
        self.limits = limits
        self.as_app = as_app
        self.server_args = server_args
        self._cleanup = cleanup
        self.events: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _record(self, function: str, event: dict[str, Any]) -> Any:
        self.events.append(event)
        return {"statusCode": 200, "body": json.dumps({"function": function})}

    def __enter__(self) -> RunningGateway:
        async def start() -> web.BaseRunner:
            args = {"routes": ROUTES, "invoke": self._record, **self.server_args}
            runner: web.BaseRunner = (
                web.AppRunner(make_app(limits=self.limits, **args))
                if self.as_app
                else web.ServerRunner(make_server(limits=self.limits, **args))
            )
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.port = runner.addresses[0][1]
            return runner

        self._thread.start()
        self._runner = asyncio.run_coroutine_threadsafe(start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
            if self._cleanup is not None:
                await self._cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=SOCKET_TIMEOUT_S)

    def send(self, raw: bytes) -> Answer:
        """Send ``raw`` and read everything the gateway writes until it closes."""
        with self.connect() as client:
            client.sendall(raw)
            return Answer.parse(read_until_closed(client))


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    interim: list[int]

    @classmethod
    def parse(cls, raw: bytes) -> Answer:
        interim = []
        while raw.startswith(b"HTTP/1.1 1"):  # 100 Continue
            head, _, raw = raw.partition(b"\r\n\r\n")
            interim.append(int(head.split()[1]))
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", len(body)))
        assert len(body) == length, f"the connection closed mid-answer: {raw!r}"
        return cls(int(status_line.split()[1]), headers, body, interim)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def is_gateway_error(self, status: int, message: str) -> bool:
        return (
            self.status == status
            and self.headers["content-type"].startswith("application/json")
            and self.json == {"message": message}
        )


def read_until_closed(client: socket.socket) -> bytes:
    """What the peer writes before it closes (a read that outlasts SOCKET_TIMEOUT_S fails).
    A reset ends the connection too: a peer that closes with bytes of ours unread resets it."""
    received = b""
    while True:
        try:
            chunk = client.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


def request(method: str, target: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway.test", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def post(body: bytes, content_type: str | None) -> bytes:
    headers = {"Content-Length": str(len(body))}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return request("POST", "/users", headers, body)


@pytest.fixture
def gateway() -> Iterator[RunningGateway]:
    with RunningGateway() as running:
        yield running


# ---------------------------------------------------------------------------------- bodies


def test_a_json_body_that_is_not_utf8_reaches_the_function_base64_encoded(
    gateway: RunningGateway,
) -> None:
    answer = gateway.send(post(b"\xff\xfe", "application/json"))

    assert answer.status == 200
    [event] = gateway.events
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\xff\xfe"


@pytest.mark.parametrize(
    ("content_type", "as_text"),
    [
        ("application/json; charset=utf-8", True),
        ("text/plain", True),
        ("application/xml", True),
        ("application/octet-stream", False),
        ("application/x-www-form-urlencoded", False),
        ("application/merge-patch+json", False),
        (None, False),
    ],
)
def test_bodies_are_text_only_for_api_gateways_text_types(
    gateway: RunningGateway, content_type: str | None, as_text: bool
) -> None:
    body = b'{"name": "Zo\xc3\xab"}'

    gateway.send(post(body, content_type))

    [event] = gateway.events
    assert event["isBase64Encoded"] is not as_text
    sent = event["body"].encode() if as_text else base64.b64decode(event["body"])
    assert sent == body


def test_a_binary_body_reaches_the_function_byte_for_byte(gateway: RunningGateway) -> None:
    body = bytes(range(256)) * 8

    gateway.send(post(body, "image/png"))

    [event] = gateway.events
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body


def test_a_compressed_body_is_passed_as_it_came(gateway: RunningGateway) -> None:
    body = b"\x1f\x8b\x08\x00 not really gzip"
    raw = request(
        "POST",
        "/upload",
        {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Content-Length": str(len(body)),
        },
        body,
    )

    gateway.send(raw)

    [event] = gateway.events
    assert base64.b64decode(event["body"]) == body


def test_expect_100_continue_gets_its_interim_answer(gateway: RunningGateway) -> None:
    with gateway.connect() as client:
        expecting = {"Content-Type": "application/json", "Expect": "100-continue"}
        client.sendall(request("POST", "/x", {**expecting, "Content-Length": "2"}))
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):  # the interim answer comes before the body
            interim += client.recv(1)
        client.sendall(b"{}")
        answer = Answer.parse(interim + read_until_closed(client))

    assert answer.interim == [100]
    assert answer.status == 200
    assert gateway.events[0]["body"] == "{}"


# ---------------------------------------------------------------------------------- limits


def test_a_payload_over_the_limit_is_413_before_it_is_read(gateway: RunningGateway) -> None:
    declared = request("POST", "/x", {"Content-Length": str(LIMITS.payload_bytes + 1)})

    answer = gateway.send(declared)  # and no body at all: the answer does not wait for it

    assert answer.is_gateway_error(413, "Request Entity Too Large")
    assert answer.headers["connection"] == "close"
    assert gateway.events == []


def test_a_chunked_payload_that_grows_over_the_limit_is_413(gateway: RunningGateway) -> None:
    chunk = b"a" * 1024
    chunks = b"".join(b"400\r\n" + chunk + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"

    answer = gateway.send(request("POST", "/x", {"Transfer-Encoding": "chunked"}, chunks))

    assert answer.is_gateway_error(413, "Request Entity Too Large")
    assert gateway.events == []


def test_a_payload_of_exactly_the_limit_passes(gateway: RunningGateway) -> None:
    body = b"a" * LIMITS.payload_bytes

    answer = gateway.send(post(body, "text/plain"))

    assert answer.status == 200
    assert gateway.events[0]["body"] == body.decode()


def test_the_default_limits_are_api_gateways_quotas() -> None:
    limits = GatewayLimits()

    assert limits.payload_bytes == 10 * 1024 * 1024
    assert limits.head_bytes == 10240


def test_a_payload_over_10_mb_is_413_with_the_default_limits() -> None:
    with RunningGateway(GatewayLimits()) as gateway:
        answer = gateway.send(request("POST", "/x", {"Content-Length": str(10 * 1024 * 1024 + 1)}))

    assert answer.is_gateway_error(413, "Request Entity Too Large")


def _head(path: str, values: list[str]) -> bytes:
    """A GET whose request line and header values come to a size the test computes."""
    lines = [f"GET {path} HTTP/1.1", "Host: g", *(f"X-{n}: {v}" for n, v in enumerate(values))]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _head_size(path: str, values: list[str]) -> int:
    return len(f"GET {path} HTTP/1.1") + len("g") + sum(len(v) for v in values)


def test_a_head_of_exactly_the_quota_passes_and_one_byte_more_is_431(
    gateway: RunningGateway,
) -> None:
    values = ["a" * 5000, "b" * 5000]
    filler = LIMITS.head_bytes - _head_size("/", values)
    values[1] += "c" * filler
    assert _head_size("/", values) == LIMITS.head_bytes

    within = gateway.send(_head("/", values))
    values[1] += "d"
    over = gateway.send(_head("/", values))

    assert within.status == 200
    assert over.is_gateway_error(431, "Request Header Fields Too Large")
    assert over.headers["connection"] == "close"
    assert len(gateway.events) == 1


def test_one_header_far_over_the_quota_is_431(gateway: RunningGateway) -> None:
    answer = gateway.send(_head("/", ["a" * (5 * LIMITS.head_bytes)]))

    assert answer.is_gateway_error(431, "Request Header Fields Too Large")
    assert gateway.events == []


@pytest.mark.parametrize("length", [LIMITS.head_bytes, 5 * LIMITS.head_bytes])
def test_a_url_over_the_quota_is_414(gateway: RunningGateway, length: int) -> None:
    answer = gateway.send(_head("/" + "a" * length, []))

    assert answer.is_gateway_error(414, "Request-URI Too Long")
    assert gateway.events == []


# ---------------------------------------------------------------------------------- methods


def test_a_method_the_gateway_does_not_know_is_501(gateway: RunningGateway) -> None:
    answer = gateway.send(b"FOO / HTTP/1.1\r\nHost: gateway.test\r\n\r\n")

    assert answer.is_gateway_error(501, "Not Implemented")
    assert gateway.events == []


def test_trace_reaches_an_any_route_like_any_method(gateway: RunningGateway) -> None:
    answer = gateway.send(request("TRACE", "/users", {}))

    assert answer.status == 200
    assert gateway.events[0]["requestContext"]["http"]["method"] == "TRACE"


# ---------------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("target", "proxy"),
    [("/users/a%0Ab", "users/a\nb"), ("/x%0A", "x\n"), ("/%0A/y%0D%0A", "\n/y\r\n")],
)
@pytest.mark.parametrize("as_app", [False, True], ids=["server", "app"])
def test_a_decoded_line_feed_in_a_path_is_routed_like_any_character(
    target: str, proxy: str, as_app: bool
) -> None:
    with RunningGateway(as_app=as_app) as gateway:
        answer = gateway.send(request("GET", target, {}))

    assert answer.status == 200
    [event] = gateway.events
    assert event["pathParameters"] == {"proxy": proxy}
    assert event["rawPath"] == target


@pytest.mark.parametrize("as_app", [False, True], ids=["server", "app"])
@pytest.mark.parametrize(
    ("method", "target"),
    [("OPTIONS", "*"), ("GET", "/%0A"), ("GET", "//"), ("GET", "/items/1/more")],
)
def test_a_path_no_route_matches_is_api_gateways_json_404(
    method: str, target: str, as_app: bool
) -> None:
    # Given routes for / and /items/{id} only (no proxy)
    routes = [HttpRoute.parse("GET", "/", "Root"), HttpRoute.parse("GET", "/items/{id}", "Item")]
    with RunningGateway(routes=routes, as_app=as_app) as gateway:
        answer = gateway.send(request(method, target, {}))

    assert answer.is_gateway_error(404, "Not Found")
    assert gateway.events == []


def test_a_header_value_that_is_not_utf8_reaches_the_function_as_latin1_text(
    gateway: RunningGateway,
) -> None:
    raw = request("GET", "/users", {}).replace(b"\r\n\r\n", b"\r\nX-Note: caf\xe9\r\n\r\n")

    answer = gateway.send(raw)

    assert answer.status == 200
    [event] = gateway.events
    assert event["headers"]["x-note"] == "caf\u00e9"
    json.dumps(event).encode()  # what the function's pipe carries: text, no lone surrogates


# ---------------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\rHost: gateway.test\r\n\r\n",  # a bare CR after the request line
        b"GET / HTTP/1.1\r\nHost: gateway.test\rX-Evil: 1\r\n\r\n",  # in a header
        b"GET / HTTP/9.9\r\nHost: gateway.test\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
        b"POST / HTTP/1.1\r\nHost: g\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ],
    ids=["bare-cr-line", "bare-cr-header", "version", "bad-chunk", "two-lengths"],
)
def test_a_malformed_request_is_400_and_closed(gateway: RunningGateway, raw: bytes) -> None:
    answer = gateway.send(raw)

    assert answer.is_gateway_error(400, "Bad Request")
    assert gateway.events == []


# ---------------------------------------------------------------------------------- stalling


def test_a_lying_content_length_gets_408_and_the_connection_closes(
    gateway: RunningGateway,
) -> None:
    # Content-Length says 100 bytes; three come, and the client then waits for an answer
    answer = gateway.send(request("POST", "/x", {"Content-Length": "100"}, b"abc"))

    assert answer.is_gateway_error(408, "Request Timeout")
    assert answer.headers["connection"] == "close"
    assert gateway.events == []


def test_a_client_that_trickles_its_body_gets_408(gateway: RunningGateway) -> None:
    declared = 1000
    with gateway.connect() as client:
        client.sendall(request("POST", "/x", {"Content-Length": str(declared)}))
        sent = 0
        client.settimeout(0.2)
        answered = b""
        while sent < declared - 1 and not answered:  # never the whole body
            client.sendall(b"a")
            sent += 1
            try:
                answered = client.recv(65536)
            except TimeoutError:
                continue
        client.settimeout(SOCKET_TIMEOUT_S)
        answer = Answer.parse(answered + read_until_closed(client))

    assert answer.is_gateway_error(408, "Request Timeout")
    assert gateway.events == []


@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nHost: gateway.test\r\n"])
def test_a_connection_without_a_whole_request_head_is_closed(
    gateway: RunningGateway, sent: bytes
) -> None:
    with gateway.connect() as client:
        client.sendall(sent)

        assert read_until_closed(client) == b""
    assert gateway.events == []


def test_a_keep_alive_connection_is_served_then_closed_when_idle(gateway: RunningGateway) -> None:
    with gateway.connect() as client:
        client.sendall(b"GET /a HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        client.sendall(b"GET /b HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        received = read_until_closed(client)  # the idle bound closes it after both

    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert [e["rawPath"] for e in gateway.events] == ["/a", "/b"]


# ---------------------------------------------------------------------------------- the API


def test_the_api_answers_a_non_utf8_json_body_with_its_own_problem(
    local_stack: LocalStack,
) -> None:
    # Given the template's routes, its JWT authorizer and the real API function
    key = SigningKey.generate()
    token = key.mint("alice", template_scopes(local_stack.template))
    pool = local_stack.pool("ApiFunction")

    async def invoke(function: str, event: dict[str, Any]) -> Any:
        return (await pool.invoke(event)).result

    raw = request(
        "POST",
        "/users",
        {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Content-Length": "2",
            "Idempotency-Key": "gateway-clients-non-utf8",
        },
        b"\xff\xfe",
    )

    # When a body that is not UTF-8 comes with a JSON content type
    with RunningGateway(
        GatewayLimits(body_timeout_s=30.0),
        routes=http_api_routes(local_stack.template),
        invoke=invoke,
        authorizer=JwtAuthorizer(key),
        cleanup=local_stack.aclose_functions,
    ) as gateway:
        answer = gateway.send(raw)

    # Then the app (not the gateway) refuses it, in problem+json
    assert 400 <= answer.status < 500
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json["status"] == answer.status
