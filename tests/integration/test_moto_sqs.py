"""moto's SQS as the moto child serves it (lambdaloop_local.moto_sqs): with its queues indexed,
a queue still counts, hides, delays, redrives and orders its messages as SQS does.

One moto child for the module; each test makes its own queues.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from lambdaloop_local.services import MotoServer

_COUNTS = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


@pytest.fixture(scope="module")
def sqs() -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            env.setenv(name, value)
        env.delenv("AWS_PROFILE", raising=False)
        env.delenv("AWS_ENDPOINT_URL", raising=False)
        with MotoServer(port=0) as moto:
            client = boto3.client("sqs", endpoint_url=moto.endpoint_url)
            yield client
            client.close()


def _queue(sqs: Any, fifo: bool = False, **attributes: str) -> str:
    name = f"q-{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
    if fifo:
        attributes["FifoQueue"] = "true"
    url: str = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    return url


def _counts(sqs: Any, url: str) -> tuple[int, int, int]:
    """(visible, in flight, delayed)."""
    got = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    visible, in_flight, delayed = (int(got[name]) for name in _COUNTS)
    return visible, in_flight, delayed


def _receive(sqs: Any, url: str, count: int = 10, **options: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=count, **options
    ).get("Messages", [])
    return messages


def test_counts_follow_sends_receives_visibility_changes_deletes_and_purges(sqs: Any) -> None:
    url = _queue(sqs, VisibilityTimeout="300")
    for n in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{n}", DelaySeconds=900 if n >= 3 else 0)
    assert _counts(sqs, url) == (3, 0, 2)

    first, second = _receive(sqs, url, 2)
    assert [first["Body"], second["Body"]] == ["m0", "m1"]
    assert _counts(sqs, url) == (1, 2, 2)

    sqs.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
    assert _counts(sqs, url) == (1, 1, 2)
    # Visible again at once, and the next receive gets it (with a new handle) before m2.
    sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=0
    )
    assert _counts(sqs, url) == (2, 0, 2)
    # A receive with no visibility timeout leaves its messages visible.
    assert [m["Body"] for m in _receive(sqs, url, VisibilityTimeout=0)] == ["m1", "m2"]
    assert _counts(sqs, url) == (2, 0, 2)

    again = _receive(sqs, url)
    assert [m["Body"] for m in again] == ["m1", "m2"]
    assert _counts(sqs, url) == (0, 2, 2)
    # Any handle a message had deletes it; a handle no message had is refused.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"])
    assert _counts(sqs, url) == (0, 1, 2)
    with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid):
        sqs.delete_message(QueueUrl=url, ReceiptHandle="no-such-handle")
    with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid):
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle="no-such-handle", VisibilityTimeout=10
        )

    sqs.purge_queue(QueueUrl=url)
    assert _counts(sqs, url) == (0, 0, 0)
    assert _receive(sqs, url) == []
    sqs.send_message(QueueUrl=url, MessageBody="after the purge")
    assert [m["Body"] for m in _receive(sqs, url)] == ["after the purge"]


def test_a_delayed_and_an_in_flight_message_come_back_to_a_long_poll(sqs: Any) -> None:
    url = _queue(sqs)
    sqs.send_message(QueueUrl=url, MessageBody="late", DelaySeconds=1)
    assert _counts(sqs, url) == (0, 0, 1)
    assert _receive(sqs, url) == []

    # The long poll is woken when the delay ends (20 s is only its bound).
    (late,) = _receive(sqs, url, WaitTimeSeconds=20, VisibilityTimeout=1)
    assert late["Body"] == "late"
    assert _counts(sqs, url) in {(0, 1, 0), (1, 0, 0)}  # its second may be over already

    (again,) = _receive(sqs, url, WaitTimeSeconds=20, AttributeNames=["ApproximateReceiveCount"])
    assert again["MessageId"] == late["MessageId"]
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"
    assert again["ReceiptHandle"] != late["ReceiptHandle"]


def test_a_message_received_max_receive_count_times_moves_to_the_dead_letter_queue(
    sqs: Any,
) -> None:
    dlq = _queue(sqs)
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": 2}}'
    url = _queue(sqs, RedrivePolicy=policy)
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    sqs.send_message(QueueUrl=url, MessageBody="fine")

    # Twice received and not deleted (visible again at once): the third receive moves it.
    for _ in range(2):
        assert [m["Body"] for m in _receive(sqs, url, 1, VisibilityTimeout=0)] == ["poison"]
    assert [m["Body"] for m in _receive(sqs, url, 1, VisibilityTimeout=0)] == ["fine"]
    assert _counts(sqs, url) == (1, 0, 0)
    assert _counts(sqs, dlq) == (1, 0, 0)
    (dead,) = _receive(sqs, dlq, AttributeNames=["ApproximateReceiveCount"])
    assert dead["Body"] == "poison"
    assert dead["Attributes"]["ApproximateReceiveCount"] == "3"


def test_a_fifo_queue_keeps_group_order_hides_a_group_in_flight_and_deduplicates(
    sqs: Any,
) -> None:
    url = _queue(sqs, fifo=True, VisibilityTimeout="300")

    def send(body: str, group: str, dedup: str) -> None:
        sqs.send_message(
            QueueUrl=url, MessageBody=body, MessageGroupId=group, MessageDeduplicationId=dedup
        )

    send("a1", "a", "1")
    send("a2", "a", "2")
    send("b1", "b", "3")
    send("a1 again", "a", "1")  # the same deduplication id: accepted, not delivered
    send("a3", "a", "4")
    assert _counts(sqs, url) == (4, 0, 0)

    (a1,) = _receive(sqs, url, 1)
    assert a1["Body"] == "a1"
    # Group a is in flight: nothing more of it until a1 is deleted, only b.
    (b1,) = _receive(sqs, url)
    assert b1["Body"] == "b1"
    assert _receive(sqs, url) == []
    assert _counts(sqs, url) == (2, 2, 0)

    sqs.delete_message(QueueUrl=url, ReceiptHandle=a1["ReceiptHandle"])
    # One batch may hold several messages of a group, in their order.
    assert [m["Body"] for m in _receive(sqs, url)] == ["a2", "a3"]

    # SQS remembers a deduplication id for 5 minutes, deleted message or not.
    send("a1 once more", "a", "1")
    sqs.delete_message(QueueUrl=url, ReceiptHandle=b1["ReceiptHandle"])
    assert _counts(sqs, url) == (0, 2, 0)
    assert _receive(sqs, url) == []


def test_a_fifo_queue_with_content_based_deduplication_drops_a_repeated_body(sqs: Any) -> None:
    url = _queue(sqs, fifo=True, ContentBasedDeduplication="true")
    for body in ("same", "same", "other"):
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId="g")
    assert [m["Body"] for m in _receive(sqs, url)] == ["same", "other"]


def test_a_deep_queue_drains_in_order_with_every_message_once(sqs: Any) -> None:
    url = _queue(sqs, VisibilityTimeout="300")
    bodies = [f"m{n:04d}" for n in range(1_000)]
    for first in range(0, len(bodies), 10):
        entries = [{"Id": str(n), "MessageBody": b} for n, b in enumerate(bodies[first:][:10])]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert _counts(sqs, url) == (1_000, 0, 0)

    received: list[str] = []
    while batch := _receive(sqs, url):
        received.extend(m["Body"] for m in batch)
        entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(batch)]
        assert not sqs.delete_message_batch(QueueUrl=url, Entries=entries).get("Failed")
    assert received == bodies
    assert _counts(sqs, url) == (0, 0, 0)
