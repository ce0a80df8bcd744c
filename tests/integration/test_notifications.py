"""Notifications end to end on the local stack: the API function in this process, the notify
function in real worker processes fed by the emulator's SQS event source (Lambda's rules,
the queue's real redrive to the dead-letter queue), and a real webhook receiver on loopback
that verifies every signature."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from lambdaloop.webhooks import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from lambdaloop_local.stack import LocalStack
from support import (
    TENANT,
    InProcessApi,
    LoopbackHttpServer,
    attached_stack,
    in_process_api,
    run_event_source,
)

#: Short webhook timeouts and no backoff, so retries happen within the test.
NOTIFY_ENV = {
    "WEBHOOK_TIMEOUT_S": "0.5",
    "WEBHOOK_CONNECT_TIMEOUT_S": "0.5",
    "NOTIFY_RETRY_BASE_S": "0",
}


@dataclass
class Received:
    script: str
    notification_id: str
    verified: bool
    body: dict[str, Any]


class WebhookReceiver:
    """A real webhook receiver; ``/{script}`` answers as its script says, attempt by attempt
    (the last answer repeats): a status code, or ``hang`` (never answers in time)."""

    def __init__(self, secret: str, scripts: dict[str, list[str]]) -> None:
        self.secret = secret
        self.scripts = scripts
        self.received: list[Received] = []
        self.server = LoopbackHttpServer(lambda router: router.add_post("/{script}", self._hook))

    async def _hook(self, request: web.Request) -> web.Response:
        name = request.match_info["script"]
        body = await request.read()
        headers = request.headers
        self.received.append(
            Received(
                name,
                headers.get(ID_HEADER, ""),
                verify(
                    self.secret, body, headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
                ),
                json.loads(body),
            )
        )
        attempt = sum(1 for r in self.received if r.script == name)
        answer = self.scripts[name][min(attempt, len(self.scripts[name])) - 1]
        if answer == "hang":
            await self.server.closing.wait()
            answer = "503"
        return web.Response(status=int(answer))

    def __enter__(self) -> WebhookReceiver:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    def url(self, script: str) -> str:
        return f"{self.server.url}/{script}"

    def attempts(self, notification_id: str) -> list[Received]:
        return [r for r in self.received if r.notification_id == notification_id]


@pytest.fixture(scope="module")
def stack(session_stack: LocalStack) -> LocalStack:
    """The session's services, with the notify function's test settings."""
    return attached_stack(session_stack, {"NotifyFunction": NOTIFY_ENV})


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[InProcessApi]:
    with in_process_api(stack) as api:
        yield api


def signing_secret(stack: LocalStack) -> str:
    secret_id = stack.function_environment("NotifyFunction")["WEBHOOK_SECRET_ID"]
    value: str = stack.aws_client("secretsmanager").get_secret_value(SecretId=secret_id)[
        "SecretString"
    ]
    return value


def create_user(api: InProcessApi, webhook_url: str | None) -> int:
    tag = uuid.uuid4().hex[:10]
    response = api.request(
        "POST",
        "/users",
        json={"name": f"N {tag}", "email": f"n-{tag}@example.com", "webhook_url": webhook_url},
    )
    assert response.status == 201, response.text
    user_id: int = response.json["id"]
    return user_id


def notify(api: InProcessApi, user_id: int, message: str) -> str:
    response = api.request("POST", f"/users/{user_id}/notify", json={"message": message})
    assert response.status == 202, response.text
    assert response.json["status"] == "queued"
    assert response.headers["location"] == f"/notifications/{response.json['notification_id']}"
    notification_id: str = response.json["notification_id"]
    return notification_id


def notified(envelope: dict[str, Any]) -> str:
    """The notification a message (an envelope's JSON) is about."""
    notification_id: str = envelope["payload"]["notification_id"]
    assert envelope["id"] == f"T#{TENANT}#NOTIFICATION#{notification_id}"
    return notification_id


def dead_letters(stack: LocalStack) -> list[dict[str, Any]]:
    """The bodies waiting in the notify dead-letter queue (read, left in place)."""
    sqs = stack.aws_client("sqs")
    url = stack.resources.refs["NotifyDeadLetterQueue"]
    bodies: dict[str, dict[str, Any]] = {}
    for _ in range(5):  # a receive samples the queue: a few, to see every message
        messages = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
        ).get("Messages", [])
        bodies |= {m["MessageId"]: json.loads(m["Body"]) for m in messages}
    return list(bodies.values())


@dataclass
class World:
    """What happened to one notification per receiver behaviour."""

    ids: dict[str, str]
    received: WebhookReceiver
    statuses: dict[str, dict[str, Any]]
    dead: list[dict[str, Any]]


SCRIPTS = {
    "ok": ["200"],
    "flaky": ["500", "500", "200"],
    "down": ["500"],
    "hang": ["hang", "204"],
    "gone": ["410"],
}


@pytest.fixture(scope="module")
def world(stack: LocalStack, api: InProcessApi) -> Iterator[World]:
    stack.create_resources()
    with WebhookReceiver(signing_secret(stack), SCRIPTS) as receiver:
        ids = {
            name: notify(api, create_user(api, receiver.url(name)), f"hello {name}")
            for name in SCRIPTS
        }
        ids["inbox"] = notify(api, create_user(api, None), "hello inbox")

        def statuses() -> dict[str, dict[str, Any]]:
            return {
                name: api.request("GET", f"/notifications/{notification_id}").json
                for name, notification_id in ids.items()
            }

        def settled() -> bool:
            final = all(s["status"] != "queued" for s in statuses().values())
            return final and any(notified(d) == ids["down"] for d in dead_letters(stack))

        run_event_source(stack, "NotifyQueue", settled)
        yield World(ids, receiver, statuses(), dead_letters(stack))


def test_a_user_with_a_webhook_gets_one_signed_request_and_the_notification_is_delivered(
    world: World,
) -> None:
    [request] = world.received.attempts(world.ids["ok"])
    status = world.statuses["ok"]

    assert request.verified
    assert request.body["id"] == world.ids["ok"]
    assert request.body["message"] == "hello ok"
    assert (status["status"], status["attempts"], status["channel"]) == ("delivered", 1, "webhook")
    assert status["delivered_at"] is not None
    assert status["error"] is None


def test_a_receiver_failing_twice_gets_the_notification_on_the_third_attempt(world: World) -> None:
    attempts = world.received.attempts(world.ids["flaky"])
    status = world.statuses["flaky"]

    assert len(attempts) == 3
    assert all(a.verified for a in attempts)
    assert (status["status"], status["attempts"]) == ("delivered", 3)


def test_a_receiver_that_hangs_times_out_and_the_retry_delivers(world: World) -> None:
    status = world.statuses["hang"]

    assert len(world.received.attempts(world.ids["hang"])) == 2
    assert (status["status"], status["attempts"]) == ("delivered", 2)


def test_a_receiver_that_always_fails_ends_in_the_dead_letter_queue_marked_failed(
    world: World,
) -> None:
    status = world.statuses["down"]
    [dead] = [d for d in world.dead if notified(d) == world.ids["down"]]

    # Then every one of the queue's maxReceiveCount attempts reached the receiver
    assert len(world.received.attempts(world.ids["down"])) == 5
    assert (status["status"], status["attempts"]) == ("failed", 5)
    assert status["error"] == "gave up after 5 attempts: HTTP 500"
    assert dead["type"] == "notification.deliver"


def test_a_receiver_that_refuses_for_good_is_not_retried(world: World) -> None:
    status = world.statuses["gone"]

    assert len(world.received.attempts(world.ids["gone"])) == 1
    assert (status["status"], status["error"]) == ("failed", "refused: HTTP 410")
    assert all(notified(d) != world.ids["gone"] for d in world.dead)


def test_a_user_without_a_webhook_finds_it_delivered_in_the_inbox(
    world: World, api: InProcessApi
) -> None:
    status = world.statuses["inbox"]
    inbox = api.request("GET", f"/users/{status['user_id']}/notifications").json

    assert (status["status"], status["channel"], status["attempts"]) == ("delivered", "inbox", 1)
    assert [n["id"] for n in inbox["notifications"]] == [world.ids["inbox"]]
    assert inbox["next_cursor"] is None


def test_only_delivered_or_failed_for_good_messages_left_the_queue(world: World) -> None:
    dead_ids = {notified(d) for d in world.dead}

    assert world.ids["down"] in dead_ids
    assert dead_ids.isdisjoint({world.ids[n] for n in ("ok", "flaky", "hang", "gone", "inbox")})


def test_notifying_an_unknown_user_or_with_a_bad_message_is_a_problem(api: InProcessApi) -> None:
    user_id = create_user(api, None)

    unknown = api.request("POST", "/users/999999999/notify", json={"message": "hi"})
    empty = api.request("POST", f"/users/{user_id}/notify", json={"message": ""})
    extra = api.request("POST", f"/users/{user_id}/notify", json={"message": "hi", "to": "x"})
    missing = api.request("GET", "/notifications/nope")

    assert unknown.status == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert (empty.status, empty.json["errors"][0]["field"]) == (422, "body.message")
    assert (extra.status, extra.json["errors"][0]["field"]) == (422, "body.to")
    assert (missing.status, missing.json["detail"]) == (404, "Notification nope does not exist")


def test_the_inbox_lists_newest_first_page_by_page(api: InProcessApi) -> None:
    user_id = create_user(api, None)
    ids = [notify(api, user_id, f"message {n}") for n in range(5)]

    pages: list[list[str]] = []
    cursor = ""
    while True:
        query = f"limit=2&cursor={cursor}" if cursor else "limit=2"
        page = api.request("GET", f"/users/{user_id}/notifications", query=query).json
        pages.append([n["id"] for n in page["notifications"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert [i for page in pages for i in page] == ids[::-1]
    assert all(1 <= len(page) <= 2 for page in pages[:-1])


def test_a_cursor_from_elsewhere_is_a_bad_request(api: InProcessApi) -> None:
    owner, other = create_user(api, None), create_user(api, None)
    for n in range(3):
        notify(api, owner, f"m{n}")
    cursor = api.request("GET", f"/users/{owner}/notifications", query="limit=1").json[
        "next_cursor"
    ]

    stolen = api.request("GET", f"/users/{other}/notifications", query=f"cursor={cursor}")
    # of the cursors' alphabet (URL-safe base64) but not one the listing gave: 400; outside
    # it, the schema's pattern refuses it (422)
    garbage = api.request("GET", f"/users/{owner}/notifications", query="cursor=bm90LWEtY3Vyc29y")
    foreign = api.request("GET", f"/users/{owner}/notifications", query="cursor=%21%21%21")

    assert (stolen.status, garbage.status, foreign.status) == (400, 400, 422)
    assert stolen.json["field"] == "query.cursor"
    assert [error["field"] for error in foreign.json["errors"]] == ["query.cursor"]


def test_a_webhook_at_an_unreachable_address_is_refused_when_it_is_set(api: InProcessApi) -> None:
    tag = uuid.uuid4().hex[:10]
    response = api.request(
        "POST",
        "/users",
        json={
            "name": "Mallory",
            "email": f"m-{tag}@example.com",
            "webhook_url": "https://169.254.169.254/latest/meta-data/",
        },
    )

    assert response.status == 422
    [error] = response.json["errors"]
    assert error["field"] == "body.webhook_url"
    assert "host name" in error["message"]  # an IP literal: refused by the URL's pattern
