"""Writes whose outcome the caller does not learn: a real TCP proxy between the functions and
moto forwards a request and drops its answer, drops the request, or never answers, and the
API and the relay still leave nothing half-done and nothing applied twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from faultproxy import Blackhole, CutAnswer, Delay, FaultProxy, Refuse, running_proxy
from lambdaloop.jobs import JobRef
from lambdaloop.messages import Delivery, FetchPart
from lambdaloop.store import Table, item_from_image
from lambdaloop_local.functions import InvocationError
from lambdaloop_local.stack import LocalStack
from support import (
    ApiResponse,
    InProcessApi,
    attached_stack,
    http_event,
    in_process_api,
    job_store,
    run,
    run_event_source,
    with_claims,
)


@pytest.fixture(scope="module")
def proxy(session_stack: LocalStack) -> Iterator[FaultProxy]:
    with running_proxy(session_stack.aws_endpoint) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def no_faults_left(proxy: FaultProxy) -> Iterator[None]:
    proxy.clear()
    yield
    proxy.clear()


@pytest.fixture(scope="module")
def api(session_stack: LocalStack, proxy: FaultProxy) -> Iterator[InProcessApi]:
    """The API handler with DynamoDB behind the proxy, and one attempt per SDK call: what
    botocore would retry, the API must resolve itself."""
    session_stack.create_resources()
    env = {"AWS_ENDPOINT_URL_DYNAMODB": proxy.endpoint_url, "LAMBDALOOP_AWS_MAX_ATTEMPTS": "1"}
    with in_process_api(session_stack, env) as api:
        yield api


def new_tenant() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


def new_users(count: int) -> list[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    return [{"name": f"U {n}", "email": f"u{n}-{tag}@example.com"} for n in range(count)]


def claims(stack: LocalStack, tenant: str, emails: list[str]) -> dict[str, int | None]:
    """Who holds each address (read from moto directly, not through the proxy)."""
    client = stack.aws_client("dynamodb")
    table = stack.resources.refs["UsersTable"]
    held: dict[str, int | None] = {}
    for email in emails:
        key = {"pk": {"S": f"T#{tenant}#EMAIL#{email.lower()}"}, "sk": {"S": "EMAIL"}}
        item = client.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
        held[email] = int(item["user_id"]["N"]) if item else None
    return held


def users_of(stack: LocalStack, tenant: str) -> list[int]:
    """The ids of the tenant's user records (a scan of moto, not through the proxy)."""
    client = stack.aws_client("dynamodb")
    table = stack.resources.refs["UsersTable"]
    prefix = f"T#{tenant}#USER#"
    ids = []
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        ids += [int(i["id"]["N"]) for i in page["Items"] if i["pk"]["S"].startswith(prefix)]
    return sorted(ids)


def post_batch(api: InProcessApi, tenant: str, users: list[dict[str, str]]) -> ApiResponse:
    return api.request("POST", "/users/batch", json={"users": users}, tenant=tenant)


# ------------------------------------------------------------------- the all-or-nothing batch


def test_a_part_whose_answer_was_lost_is_asked_again_with_its_token(
    api: InProcessApi, proxy: FaultProxy, local_stack: LocalStack
) -> None:
    tenant, users = new_tenant(), new_users(60)
    cut = proxy.add_fault(CutAnswer("TransactWriteItems"))  # part 1 commits, unanswered

    created = post_batch(api, tenant, users)

    assert created.status == 201, created.text
    assert cut.hits == 1
    ids = [u["id"] for u in created.json["users"]]
    assert sorted(ids) == users_of(local_stack, tenant)  # each user once
    assert claims(local_stack, tenant, [u["email"] for u in users]) == {
        u["email"]: u["id"] for u in created.json["users"]
    }


def test_a_part_whose_outcome_stays_unknown_undoes_the_whole_batch(
    api: InProcessApi, proxy: FaultProxy, local_stack: LocalStack
) -> None:
    tenant, users = new_tenant(), new_users(60)
    emails = [u["email"] for u in users]
    proxy.add_fault(Delay("TransactWriteItems", 0))  # part 1 goes in, answered
    # part 2 goes in, and neither it nor the same call again (its token) is answered
    cut = proxy.add_fault(CutAnswer("TransactWriteItems", times=2))

    failed = post_batch(api, tenant, users)
    after = claims(local_stack, tenant, emails), users_of(local_stack, tenant)
    retried = post_batch(api, tenant, users)

    assert failed.status == 503, failed.text
    assert failed.headers["retry-after"] == "1"
    assert cut.hits == 2
    assert after == (dict.fromkeys(emails), [])  # nothing of either part is left
    assert retried.status == 201, retried.text
    assert set(claims(local_stack, tenant, emails).values()) == {
        u["id"] for u in retried.json["users"]
    }


def test_when_the_undo_cannot_run_the_cache_forgets_instead_of_claiming_absence(
    api: InProcessApi, proxy: FaultProxy, local_stack: LocalStack
) -> None:
    tenant, users = new_tenant(), new_users(2)
    before = api.request("GET", "/users/1", tenant=tenant)  # cached: absent
    proxy.add_fault(CutAnswer("TransactWriteItems", times=2))  # in, unanswered twice
    refused = proxy.add_fault(Refuse("TransactWriteItems", times=None))  # the undo

    failed = post_batch(api, tenant, users)
    proxy.clear()
    after = api.request("GET", "/users/1", tenant=tenant)

    assert (before.status, failed.status) == (404, 503)
    assert refused.hits >= 1
    # The users went in and could not be taken out: the API must not hide them.
    assert users_of(local_stack, tenant) == [1, 2]
    assert after.status == 200, after.text
    assert after.json["email"] == users[0]["email"]


# ------------------------------------------------------------------- conditional writes


def test_a_create_retried_by_the_sdk_after_a_lost_answer_is_its_own_success(
    proxy: FaultProxy, local_stack: LocalStack
) -> None:
    client = boto3.client(
        "dynamodb",
        endpoint_url=proxy.endpoint_url,
        config=Config(retries={"mode": "standard", "max_attempts": 3}, read_timeout=20),
    )
    table = Table(local_stack.resources.refs["JobsTable"], client=client)
    item = {"pk": f"T#x#JOB#{uuid.uuid4().hex}", "sk": "META", "n": 3.0, "tags": {"a", "b"}}
    cut = proxy.add_fault(CutAnswer("PutItem"))  # written; botocore sends it again
    before = len(proxy.seen)

    run(table.create(item))

    assert cut.hits == 1
    assert proxy.seen[before:] == ["PutItem", "PutItem", "GetItem"]  # the retry met its item


def test_a_job_whose_write_answer_was_lost_is_found_by_its_retry(
    api: InProcessApi, proxy: FaultProxy, local_stack: LocalStack
) -> None:
    tenant, key = new_tenant(), f"k-{uuid.uuid4().hex}"
    body = {"urls": ["https://example.com/once"]}
    headers = {"Idempotency-Key": key}
    proxy.add_fault(Delay("PutItem", 0))  # the Idempotency-Key's claim goes through
    cut = proxy.add_fault(CutAnswer("PutItem"))  # the job is stored, unanswered

    lost = api.request("POST", "/jobs/fetch", json=body, headers=headers, tenant=tenant)
    retried = api.request("POST", "/jobs/fetch", json=body, headers=headers, tenant=tenant)
    job_id = retried.json["job_id"]

    assert cut.hits == 1
    assert lost.status == 503, lost.text
    assert retried.status == 202, retried.text
    assert run(job_store(local_stack).in_flight(tenant, 10)) == 1  # one job, not two
    meta = run(job_store(local_stack).get(JobRef(tenant, job_id), consistent=True))
    assert meta is not None
    assert meta["params"]["urls"] == body["urls"]
    assert messages_on(local_stack, "JobsQueue", FetchPart(JobRef(tenant, job_id), 0)) == 1


# ------------------------------------------------------------------- the request budget


def test_a_dynamodb_that_never_answers_is_a_503_within_the_budget(
    api: InProcessApi, proxy: FaultProxy
) -> None:
    short = InProcessApi(api.handler, timeout_s=3.0)  # a 3 s function: 1.5 s for calls
    silent = proxy.add_fault(Blackhole("GetItem", times=None))

    response = short.request("GET", f"/users/{uuid.uuid4().int % 1000 + 1}", tenant=new_tenant())

    assert silent.hits >= 1
    assert response.status == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert response.json["detail"] == "A dependency is unavailable: dynamodb"


# ------------------------------------------------------------------- the outbox relay


def messages_on(stack: LocalStack, queue: str, message: Delivery | FetchPart) -> int:
    """Run the relay until ``message`` is on ``queue``; how many copies of it were there
    (taken off the queue)."""
    envelope_id = message.envelope().id
    sqs = stack.aws_client("sqs")
    url = stack.resources.refs[queue]
    copies: list[str] = []

    def arrived() -> bool:
        while batch := sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages"):
            for m in batch:
                if json.loads(m["Body"])["id"] == envelope_id:
                    copies.append(m["MessageId"])
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return bool(copies)

    run_event_source(stack, None, arrived)
    return len(copies)


@pytest.fixture(scope="module")
def relayed_through(session_stack: LocalStack, proxy: FaultProxy) -> LocalStack:
    """A stack whose relay reaches SQS through the proxy, one attempt per call."""
    env = {"AWS_ENDPOINT_URL_SQS": proxy.endpoint_url, "LAMBDALOOP_AWS_MAX_ATTEMPTS": "1"}
    return attached_stack(session_stack, {"RelayFunction": env})


@pytest.fixture(scope="module")
def plain_api(session_stack: LocalStack) -> Iterator[InProcessApi]:
    with in_process_api(session_stack) as api:
        yield api


def notify_new_user(api: InProcessApi, tenant: str) -> Delivery:
    user = api.request("POST", "/users", json=new_users(1)[0], tenant=tenant)
    assert user.status == 201, user.text
    user_id = user.json["id"]
    queued = api.request(
        "POST", f"/users/{user_id}/notify", json={"message": "hello"}, tenant=tenant
    )
    assert queued.status == 202, queued.text
    return Delivery(tenant, queued.json["notification_id"], user_id)


def test_work_the_queue_refused_is_relayed_again_until_it_is_there_once(
    plain_api: InProcessApi, relayed_through: LocalStack, proxy: FaultProxy
) -> None:
    refused = proxy.add_fault(Refuse("SendMessageBatch", times=2))
    delivery = notify_new_user(plain_api, new_tenant())

    copies = messages_on(relayed_through, "NotifyQueue", delivery)

    assert refused.hits == 2
    assert copies == 1


def test_a_send_whose_answer_was_lost_is_sent_again_and_delivered_once(
    plain_api: InProcessApi, relayed_through: LocalStack, proxy: FaultProxy
) -> None:
    cut = proxy.add_fault(CutAnswer("SendMessageBatch"))  # sent, the relay does not know
    before = len(proxy.seen)
    tenant = new_tenant()
    delivery = notify_new_user(plain_api, tenant)
    record = f"/notifications/{delivery.notification_id}"

    def delivered() -> bool:
        shown = plain_api.request("GET", record, tenant=tenant).json
        return bool(shown["status"] == "delivered")

    run_event_source(relayed_through, "NotifyQueue", delivered)
    shown: dict[str, Any] = plain_api.request("GET", record, tenant=tenant).json

    assert cut.hits == 1
    assert proxy.seen[before:].count("SendMessageBatch") >= 2  # the relay sent it again
    assert (shown["status"], shown["channel"], shown["attempts"]) == ("delivered", "inbox", 1)


def workers_of(handler: str) -> list[int]:
    """The pids of this process's local execution environments running ``handler``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == os.getpid() and handler.encode() in command:
            found.append(int(stat.parent.name))
    return found


def test_an_api_function_killed_right_after_its_write_still_gets_its_job_run(
    session_stack: LocalStack, proxy: FaultProxy
) -> None:
    stack = attached_stack(
        session_stack, {"ApiFunction": {"AWS_ENDPOINT_URL_DYNAMODB": proxy.endpoint_url}}
    )
    tenant, url = new_tenant(), f"https://example.com/{uuid.uuid4().hex}"
    request = http_event(
        "POST",
        "/jobs/fetch",
        headers={"content-type": "application/json"},
        body=json.dumps({"urls": [url]}).encode(),
    )
    stored = proxy.add_fault(Blackhole("PutItem"))  # the job is written, then no answer

    async def post_and_kill() -> BaseException | None:
        pool = stack.pool("ApiFunction")
        others = set(workers_of("api.handler.handler"))
        posting = asyncio.create_task(pool.invoke(with_claims(request, tenant)))
        try:
            async with asyncio.timeout(60):
                await stored.wait_fired()
            [worker] = set(workers_of("api.handler.handler")) - others
            os.kill(worker, signal.SIGKILL)
            [ended] = await asyncio.gather(posting, return_exceptions=True)
            return ended if isinstance(ended, BaseException) else None
        finally:
            posting.cancel()
            await stack.aclose_functions()

    outcome = asyncio.run(post_and_kill())
    [job] = [j for j in jobs_of(session_stack, tenant) if j["params"]["urls"] == [url]]

    # The kill comes as soon as the write is in, well within the request's budget, so the
    # function dies without answering (a machine slow enough to let the budget run out first
    # gets a 503 instead): either way the client never heard of its job.
    assert outcome is None or isinstance(outcome, InvocationError)
    assert job["status"] == "queued"
    assert messages_on(session_stack, "JobsQueue", FetchPart(JobRef(tenant, job["id"]), 0)) == 1


def jobs_of(stack: LocalStack, tenant: str) -> list[dict[str, Any]]:
    """The tenant's job records (META items), read from moto directly."""
    client = stack.aws_client("dynamodb")
    table = stack.resources.refs["JobsTable"]
    prefix = f"T#{tenant}#JOB#"
    items = []
    for scanned in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        items += [i for i in scanned["Items"] if i["pk"]["S"].startswith(prefix)]
    return [item_from_image(i) for i in items if i["sk"]["S"] == "META"]
