"""The relay (the outbox's publisher): which messages new records ask for, and what a batch
reports when some of them could not be sent."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from lambdaloop.compute.kinds import plan
from lambdaloop.errors import DependencyUnavailable, PublishError
from lambdaloop.jobs import JobRef
from lambdaloop.messages import COMPUTE, DELIVER, FETCH, ComputeChunk, Delivery, FetchPart
from lambdaloop.outbox import messages_for
from lambdaloop.queue import Envelope, OutgoingMessage
from relay.relay import Relay


def image(item: dict[str, Any]) -> dict[str, Any]:
    """The item in DynamoDB's JSON, as a stream record carries it."""
    from boto3.dynamodb.types import TypeSerializer

    return {name: TypeSerializer().serialize(value) for name, value in item.items()}


def notification(tenant: str, notification_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "pk": f"T#{tenant}#NOTIFICATION#{notification_id}",
        "id": notification_id,
        "tenant": tenant,
        "user_id": 7,
        "status": "queued",
        **extra,
    }


def job(tenant: str, job_id: str, type_: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "pk": f"T#{tenant}#JOB#{job_id}",
        "sk": "META",
        "id": job_id,
        "tenant": tenant,
        "type": type_,
        "params": params,
        "status": "queued",
    }


def stream_event(*items: dict[str, Any]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventName": "INSERT",
                "dynamodb": {"SequenceNumber": str(100 + n), "NewImage": image(item)},
            }
            for n, item in enumerate(items)
        ]
    }


class FakeQueue:
    """A queue behind the publisher's interface; it refuses the envelope ids in ``refuse``,
    or everything with ``down``."""

    def __init__(self, refuse: Sequence[str] = (), *, down: bool = False) -> None:
        self.sent: list[OutgoingMessage] = []
        self._refuse = set(refuse)
        self._down = down

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        if self._down:
            raise DependencyUnavailable("sqs", "connection reset")
        refused = {m.envelope.id: "InternalError: try again" for m in messages}
        refused = {i: why for i, why in refused.items() if i in self._refuse}
        self.sent.extend(m for m in messages if m.envelope.id not in refused)
        if refused:
            raise PublishError(refused)
        return [m.envelope.id for m in messages]


def queues(**overrides: FakeQueue) -> dict[str, FakeQueue]:
    return {name: overrides.get(name, FakeQueue()) for name in ("notify", "jobs", "compute")}


def relay(event: dict[str, Any], found: dict[str, FakeQueue]) -> dict[str, Any]:
    return asyncio.run(Relay(found).process(event))  # type: ignore[arg-type]


COMPUTE_PARAMS = {"kind": "prime_count", "params": {"n": 100_000}, "chunks": 4}


def test_each_new_record_becomes_the_messages_its_consumer_expects() -> None:
    found = queues()
    event = stream_event(
        notification("alice", "n1", correlation_id="corr-1"),
        job("alice", "j1", "fetch", {"urls": ["https://example.com/"]}),
        job("bob", "j2", "compute", COMPUTE_PARAMS),
    )

    response = relay(event, found)

    assert response == {"batchItemFailures": []}
    [delivery] = found["notify"].sent
    assert delivery.envelope == Delivery("alice", "n1", 7).envelope()
    assert delivery.envelope.type == DELIVER
    assert delivery.correlation_id == "corr-1"
    [part] = found["jobs"].sent
    assert part.envelope == FetchPart(JobRef("alice", "j1"), 0).envelope()
    assert part.envelope.type == FETCH
    assert part.correlation_id is None
    kind, _, works = plan("prime_count", {"n": 100_000}, 4)
    chunks = [ComputeChunk.parse(m.envelope) for m in found["compute"].sent]
    assert chunks == [
        ComputeChunk(JobRef("bob", "j2"), n, kind.name, w) for n, w in enumerate(works)
    ]
    assert {m.envelope.type for m in found["compute"].sent} == {COMPUTE}


def test_a_failed_send_reports_its_record_so_it_and_every_later_one_come_again() -> None:
    failing = FetchPart(JobRef("alice", "j2"), 0).envelope().id
    found = queues(jobs=FakeQueue(refuse=[failing]))
    event = stream_event(
        job("alice", "j1", "fetch", {"urls": ["https://example.com/"]}),
        job("alice", "j2", "fetch", {"urls": ["https://example.com/"]}),
        notification("alice", "n3"),
    )

    response = relay(event, found)

    assert response == {"batchItemFailures": [{"itemIdentifier": "101"}]}
    # What did go out goes out again with the retry: the same envelope ids, applied once.
    assert [m.envelope.id for m in found["jobs"].sent] == [
        FetchPart(JobRef("alice", "j1"), 0).envelope().id
    ]


def test_a_queue_that_is_down_fails_from_its_first_record() -> None:
    found = queues(notify=FakeQueue(down=True))
    event = stream_event(
        job("alice", "j1", "fetch", {"urls": ["https://example.com/"]}),
        notification("alice", "n2"),
    )

    assert relay(event, found) == {"batchItemFailures": [{"itemIdentifier": "101"}]}


def test_a_malformed_work_record_is_reported_not_skipped() -> None:
    found = queues()
    event = stream_event(
        notification("alice", "n1"),
        notification("alice", "n2", user_id="seven"),
        notification("alice", "n3"),
    )

    assert relay(event, found) == {"batchItemFailures": [{"itemIdentifier": "101"}]}
    # Lambda counts the records before the reported one as done, so they went out; the ones
    # after it come again with the retry.
    assert [m.envelope for m in found["notify"].sent] == [Delivery("alice", "n1", 7).envelope()]


def test_records_that_are_not_work_are_passed_over() -> None:
    found = queues()
    result = {"pk": "T#alice#JOB#j1", "sk": "R#000001", "index": 1, "tenant": "alice", "id": "x"}
    event = stream_event(result, {"pk": "T#alice#COUNTER#users", "sk": "COUNTER", "value": 3})

    assert relay(event, found) == {"batchItemFailures": []}
    assert all(queue.sent == [] for queue in found.values())


def test_work_stored_as_already_taken_up_is_not_sent() -> None:
    found = queues()
    running = job("alice", "j1", "compute", COMPUTE_PARAMS) | {"status": "running"}

    assert relay(stream_event(running, notification("alice", "n1", status="failed")), found) == {
        "batchItemFailures": []
    }
    assert all(queue.sent == [] for queue in found.values())


def test_a_record_seen_twice_in_one_batch_is_sent_once() -> None:
    found = queues()
    record = notification("alice", "n1")

    assert relay(stream_event(record, record), found) == {"batchItemFailures": []}
    assert len(found["notify"].sent) == 1


@pytest.mark.parametrize(
    "item",
    [
        # A record of one tenant whose key names another: it is not ours to publish.
        notification("alice", "n1", pk="T#bob#NOTIFICATION#n1"),
        job("alice", "j1", "fetch", {}) | {"pk": "T#bob#JOB#j1"},
    ],
)
def test_a_record_whose_key_and_tenant_disagree_asks_for_nothing(item: dict[str, Any]) -> None:
    assert messages_for(item) == []


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (job("alice", "j1", "unknown", {}), "type"),
        (job("alice", "j1", "compute", {"kind": "nope", "params": {}}), "params"),
        (job("alice", "j1", "compute", {"kind": "prime_count", "params": {"n": -1}}), "params"),
    ],
)
def test_a_job_record_that_cannot_be_planned_is_an_error(item: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        messages_for(item)


@pytest.mark.parametrize(
    ("kind", "params", "chunks"),
    [
        ("prime_count", {"n": 10}, None),
        ("prime_count", {"n": 1_000_000}, 7),
        ("sha256_chain", {"seed": "x", "chains": 5, "rounds": 1000}, 8),
    ],
)
def test_the_relay_plans_the_chunks_the_api_planned(
    kind: str, params: dict[str, Any], chunks: int | None
) -> None:
    # The API stores the number of chunks its plan made; the relay plans again from it.
    planned, _, works = plan(kind, params, chunks)
    stored = {"kind": planned.name, "params": params, "chunks": len(works)}

    outgoing = messages_for(job("alice", "j1", "compute", stored))

    assert [ComputeChunk.parse(o.message.envelope).work for o in outgoing] == works
    assert {o.queue for o in outgoing} == {"compute"}


def test_an_envelope_whose_id_is_not_its_records_is_refused() -> None:
    envelope = FetchPart(JobRef("alice", "j1"), 0).envelope()
    forged = Envelope(envelope.type, "T#alice#JOB#other.0", envelope.payload)

    with pytest.raises(ValueError, match=r"^id"):
        FetchPart.parse(forged)
