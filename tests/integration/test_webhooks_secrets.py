"""One webhook attempt against a real loopback receiver, and secrets read from moto."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from lambdaloop.errors import DependencyError
from lambdaloop.http_outcome import Verdict
from lambdaloop.secrets_manager import SecretsManager
from lambdaloop.webhooks import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, post, verify
from lambdaloop_local.stack import LocalStack
from support import LoopbackHttpServer, run

T = TypeVar("T")
SECRET = "loopback-secret"
TIMEOUT = aiohttp.ClientTimeout(total=0.3)


class Receiver:
    """Answers ``/{status}`` with that status (``/hang`` never answers); keeps what it got."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, str]] = []
        self.server = LoopbackHttpServer(lambda router: router.add_post("/{status}", self._hook))

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = request.headers
        ok = verify(SECRET, body, headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER))
        self.seen.append((ok, headers.get(ID_HEADER, "")))
        if request.match_info["status"] == "hang":
            await self.server.closing.wait()
            return web.Response(status=503)
        return web.Response(status=int(request.match_info["status"]))

    def __enter__(self) -> Receiver:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    @property
    def port(self) -> int:
        return self.server.port


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def attempt(url: str) -> Any:
    async def once() -> Any:
        async with aiohttp.ClientSession() as session:
            return await post(
                session, url, b'{"x":1}', secret=SECRET, event_id="evt-1", client_timeout=TIMEOUT
            )

    return run(once())


@pytest.mark.parametrize(
    ("path", "verdict", "status"),
    [
        ("200", Verdict.DELIVERED, 200),
        ("404", Verdict.REJECTED, 404),
        ("503", Verdict.RETRY, 503),
        ("hang", Verdict.RETRY, None),
    ],
)
def test_one_signed_attempt_is_judged_by_the_receivers_answer(
    receiver: Receiver, path: str, verdict: Verdict, status: int | None
) -> None:
    before = len(receiver.seen)

    result = attempt(f"http://127.0.0.1:{receiver.port}/{path}")

    assert (result.verdict, result.status) == (verdict, status)
    assert receiver.seen[before:] == [(True, "evt-1")]


def test_a_receiver_that_is_not_there_is_worth_a_retry() -> None:
    with Receiver() as gone:
        port = gone.port

    result = attempt(f"http://127.0.0.1:{port}/200")

    assert (result.verdict, result.status) == (Verdict.RETRY, None)
    assert result.detail.startswith("connection: ")


def test_a_secret_is_read_once_then_served_from_memory_until_it_ages(
    local_stack: LocalStack,
) -> None:
    client = local_stack.aws_client("secretsmanager")
    arn = client.create_secret(Name=f"test-{uuid.uuid4().hex}", SecretString="first")["ARN"]
    now = [0.0]
    secrets = SecretsManager(client, max_age_s=60, clock=lambda: now[0])

    first = run(secrets.get(arn))
    client.put_secret_value(SecretId=arn, SecretString="rotated")
    cached = run(secrets.get(arn))
    now[0] = 61.0
    fresh = run(secrets.get(arn))

    assert (first, cached, fresh) == ("first", "first", "rotated")


def test_a_missing_secret_is_a_dependency_error(local_stack: LocalStack) -> None:
    secrets = SecretsManager(local_stack.aws_client("secretsmanager"))

    with pytest.raises(DependencyError, match="ResourceNotFoundException"):
        run(secrets.get("no-such-secret"))
