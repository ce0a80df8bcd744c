"""The SQS publisher against moto (server mode).

Every test publishes to its own queue (a random name, deleted afterwards): the template's
queues are shared by the whole session, and their consumers may run in other tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest

from lambdaloop.queue import Envelope, OutgoingMessage, Publisher
from lambdaloop_local.stack import LocalStack
from support import run

T = TypeVar("T")

#: Bounded receiving: give up after this many receives that bring nothing.
MAX_EMPTY_RECEIVES = 5


@pytest.fixture
def sqs(local_stack: LocalStack) -> Any:
    return local_stack.aws_client("sqs")


@pytest.fixture
def queue_url(sqs: Any) -> Iterator[str]:
    url: str = sqs.create_queue(QueueName=f"t-{uuid.uuid4().hex}")["QueueUrl"]
    yield url
    sqs.delete_queue(QueueUrl=url)


@pytest.fixture
def fifo_url(sqs: Any) -> Iterator[str]:
    url: str = sqs.create_queue(
        QueueName=f"t-{uuid.uuid4().hex}.fifo", Attributes={"FifoQueue": "true"}
    )["QueueUrl"]
    yield url
    sqs.delete_queue(QueueUrl=url)


def receive_all(sqs: Any, url: str, expected: int) -> list[dict[str, Any]]:
    """Receive (and delete) until ``expected`` messages came or receiving keeps coming back
    empty."""
    received: list[dict[str, Any]] = []
    empty = 0
    while len(received) < expected and empty < MAX_EMPTY_RECEIVES:
        batch = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        empty = 0 if batch else empty + 1
        received.extend(batch)
        if batch:
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(batch)
                ],
            )
    return received


def test_published_envelopes_arrive_whole_with_their_correlation_ids(
    sqs: Any, queue_url: str
) -> None:
    # Given 25 envelopes, each with its own correlation id
    publisher = Publisher(queue_url, client=sqs)
    outgoing = [
        OutgoingMessage(
            Envelope("user.created", f"evt-{n}", {"n": n, "name": "Adà"}),
            correlation_id=f"req-{n}",
        )
        for n in range(25)
    ]

    # When
    ids = run(publisher.publish_many(outgoing))
    received = receive_all(sqs, queue_url, 25)

    # Then each arrives once, parses back, and carries its correlation id
    assert ids == [m.envelope.id for m in outgoing]
    envelopes = {Envelope.from_json(m["Body"]).id: m for m in received}
    assert sorted(envelopes) == sorted(ids)
    assert len(received) == 25
    for message in outgoing:
        arrived = envelopes[message.envelope.id]
        assert Envelope.from_json(arrived["Body"]) == message.envelope
        attribute = arrived["MessageAttributes"]["correlation_id"]
        assert attribute == {"DataType": "String", "StringValue": message.correlation_id}


def test_a_fifo_group_is_received_in_publish_order(sqs: Any, fifo_url: str) -> None:
    publisher = Publisher(fifo_url, client=sqs)
    assert publisher.fifo
    outgoing = [
        OutgoingMessage(Envelope("order.step", f"step-{n}", {"n": n}), group_id="order-1")
        for n in range(15)
    ]

    run(publisher.publish_many(outgoing))
    received = receive_all(sqs, fifo_url, 15)

    assert [Envelope.from_json(m["Body"]).id for m in received] == [f"step-{n}" for n in range(15)]


def test_publish_one_envelope(sqs: Any, queue_url: str) -> None:
    publisher = Publisher(queue_url, client=sqs)

    published = run(publisher.publish("user.deleted", {"user": "u1"}, correlation_id="req-1"))
    (received,) = receive_all(sqs, queue_url, 1)

    assert Envelope.from_json(received["Body"]) == Envelope(
        "user.deleted", published, {"user": "u1"}
    )


def test_a_delayed_message_is_not_visible_at_once(sqs: Any, queue_url: str) -> None:
    publisher = Publisher(queue_url, client=sqs)

    run(publisher.publish("reminder", {}, id="later", delay_s=1))
    right_away = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0)

    assert right_away.get("Messages", []) == []
