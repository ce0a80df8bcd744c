"""The notify function's delivery logic in this process, on moto's notifications table and a
real loopback receiver: the cases the end-to-end run does not reach."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from lambdaloop.consumer import RecordContext, SqsProcessor
from lambdaloop.errors import RetryLater
from lambdaloop.messages import DELIVER, Delivery
from lambdaloop.notifications import owner, record_key
from lambdaloop.runtime import Deadline
from lambdaloop.secrets_manager import SecretsManager
from lambdaloop.ssrf import Policy, aclose_sessions, guarded_session
from lambdaloop.store import Table
from lambdaloop_local.stack import LocalStack
from notify.delivery import Deliverer
from support import TENANT, LoopbackHttpServer, run

T = TypeVar("T")


class Receiver:
    """Answers 429 with Retry-After: 7 and counts the requests."""

    def __init__(self) -> None:
        self.requests = 0
        self.server = LoopbackHttpServer(lambda router: router.add_post("/", self._hook))

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(status=429, headers={"Retry-After": "7"})

    def __enter__(self) -> Receiver:
        self.server.__enter__()
        self.url = f"{self.server.url}/"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture
def table(local_stack: LocalStack) -> Table:
    return Table(
        local_stack.resources.refs["NotificationsTable"],
        client=local_stack.aws_client("dynamodb"),
        key_schema=("pk",),
    )


@pytest.fixture
def make(local_stack: LocalStack, table: Table) -> Iterator[Callable[[str], Deliverer]]:
    """Deliverers reading the signing key from ``secret_id``, sharing one closed-after session."""
    sessions: list[aiohttp.ClientSession] = []

    def session() -> aiohttp.ClientSession:
        if not sessions:
            sessions.append(aiohttp.ClientSession())
        return sessions[0]

    def build(secret_id: str) -> Deliverer:
        return Deliverer(
            table,
            SecretsManager(local_stack.aws_client("secretsmanager")),
            session,
            secret_id=secret_id,
            timeout=aiohttp.ClientTimeout(total=2),
        )

    yield build
    for open_session in sessions:
        run(open_session.close())


def secret_id(local_stack: LocalStack) -> str:
    return local_stack.function_environment("NotifyFunction")["WEBHOOK_SECRET_ID"]


def notification(table: Table, **fields: Any) -> str:
    """A notification of :data:`TENANT`'s user 1, stored as the API stores it; its id."""
    notification_id = uuid.uuid4().hex
    item = {
        **record_key(TENANT, notification_id),
        "owner": owner(TENANT, 1),
        "id": notification_id,
        "user_id": 1,
        "channel": "webhook",
        "message": "hi",
        "status": "queued",
        "attempts": 0,
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:00.000Z",
        **fields,
    }
    run(table.put(item))
    return notification_id


def deliver(target: Deliverer, notification_id: str, receive_count: int = 1) -> Any:
    envelope = Delivery(TENANT, notification_id, 1).envelope()
    context = RecordContext(notification_id, receive_count, {}, Deadline.never())
    return run(target(envelope, context))


def last_attempt(target: Deliverer, notification_id: str) -> list[str]:
    """The message's 5th receive of 5, through the consumer and the deliverer's give-up as
    the function wires them; the ids of the failed records."""
    envelope = Delivery(TENANT, notification_id, 1).envelope()
    message = {
        "messageId": notification_id,
        "receiptHandle": "rh",
        "body": envelope.to_json(),
        "attributes": {"ApproximateReceiveCount": "5"},
    }
    processor = SqsProcessor(
        {DELIVER: target}, give_up={DELIVER: target.give_up}, max_receive_count=5
    )
    response = run(processor.process({"Records": [message]}))
    return [failure["itemIdentifier"] for failure in response["batchItemFailures"]]


def test_a_delivered_notification_is_never_sent_again(
    local_stack: LocalStack, table: Table, receiver: Receiver, make: Callable[[str], Deliverer]
) -> None:
    done = notification(table, status="delivered", webhook_url=receiver.url, attempts=1)

    outcome = deliver(make(secret_id(local_stack)), done)

    assert outcome == {"status": "delivered"}
    assert receiver.requests == 0
    assert run(table.get(record_key(TENANT, done)))["attempts"] == 1  # type: ignore[index]


def test_a_message_whose_record_is_gone_is_dropped(
    local_stack: LocalStack, make: Callable[[str], Deliverer]
) -> None:
    outcome = deliver(make(secret_id(local_stack)), uuid.uuid4().hex)

    assert outcome == {"status": "missing"}


def test_429_keeps_the_receivers_delay_and_the_notification_queued(
    local_stack: LocalStack, table: Table, receiver: Receiver, make: Callable[[str], Deliverer]
) -> None:
    pending = notification(table, webhook_url=receiver.url)

    with pytest.raises(RetryLater) as retry:
        deliver(make(secret_id(local_stack)), pending)
    record = run(table.get(record_key(TENANT, pending)))

    assert retry.value.delay_s == 7
    assert record is not None
    assert (record["status"], record["attempts"], record["error"]) == ("queued", 1, "HTTP 429")


def test_the_last_attempt_marks_failed_whatever_broke_it(
    local_stack: LocalStack, table: Table, receiver: Receiver, make: Callable[[str], Deliverer]
) -> None:
    pending = notification(table, webhook_url=receiver.url)

    failed = last_attempt(make("no-such-secret"), pending)
    record = run(table.get(record_key(TENANT, pending)))

    assert failed == [pending]
    assert record is not None
    assert (record["status"], record["error"]) == ("failed", "gave up: DependencyError")
    assert receiver.requests == 0


def test_the_last_attempt_that_must_retry_records_why_it_gave_up(
    local_stack: LocalStack, table: Table, receiver: Receiver, make: Callable[[str], Deliverer]
) -> None:
    # (That it comes back at once, on to the dead-letter queue: test_consumer_moto.py.)
    pending = notification(table, webhook_url=receiver.url)

    failed = last_attempt(make(secret_id(local_stack)), pending)
    record = run(table.get(record_key(TENANT, pending)))

    assert failed == [pending]
    assert receiver.requests == 1
    assert record is not None
    assert (record["status"], record["error"]) == ("failed", "gave up after 5 attempts: HTTP 429")


def test_a_webhook_at_an_address_the_policy_refuses_fails_for_good_unsent(
    local_stack: LocalStack, table: Table, receiver: Receiver
) -> None:
    # Given the deployed policy (public addresses only) and a webhook on loopback
    deployed = Deliverer(
        table,
        SecretsManager(local_stack.aws_client("secretsmanager")),
        lambda: guarded_session(Policy.for_user_urls(False)),
        secret_id=secret_id(local_stack),
        timeout=aiohttp.ClientTimeout(total=2),
    )
    pending = notification(table, webhook_url=receiver.url)

    try:
        outcome = deliver(deployed, pending)
    finally:
        run(aclose_sessions())
    record = run(table.get(record_key(TENANT, pending)))

    # Then nothing reached the receiver, and the notification says why it failed
    assert outcome["status"] == "failed"
    assert receiver.requests == 0
    assert record is not None
    assert record["status"] == "failed"
    assert record["error"].startswith("refused: blocked: ")
