"""One webhook attempt against a real loopback receiver, and secrets read from moto."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from lambdaloop.errors import DependencyError
from lambdaloop.runtime import get_loop
from lambdaloop.secrets_manager import SecretsManager
from lambdaloop.webhooks import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, Verdict, post, verify
from lambdaloop_local.stack import LocalStack

T = TypeVar("T")
SECRET = "loopback-secret"
TIMEOUT = aiohttp.ClientTimeout(total=0.3)


def run(work: Awaitable[T]) -> T:
    async def wrapped() -> T:
        return await work

    return get_loop().run_until_complete(wrapped())


class Receiver:
    """Answers ``/{status}`` with that status (``/hang`` never answers); keeps what it got."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, str]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = request.headers
        ok = verify(SECRET, body, headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER))
        self.seen.append((ok, headers.get(ID_HEADER, "")))
        if request.match_info["status"] == "hang":
            await self.release.wait()
        return web.Response(status=int(request.match_info["status"].replace("hang", "200")))

    async def _start(self) -> web.AppRunner:
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{status}", self._hook)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = runner.addresses[0][1]
        return runner

    def __enter__(self) -> Receiver:
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.release.set)
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


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
