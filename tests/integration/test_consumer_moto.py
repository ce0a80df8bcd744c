"""RetryLater against a real queue (moto): the message's visibility is what the consumer set."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lambdaloop.consumer import RecordContext, RetryPolicy, SqsProcessor
from lambdaloop.errors import RetryLater
from lambdaloop.queue import Envelope
from lambdaloop.runtime import get_loop
from lambdaloop_local.sqs import SqsEventSourceConfig, sqs_event
from lambdaloop_local.stack import LocalStack


@pytest.fixture
def queue(local_stack: LocalStack) -> Iterator[tuple[Any, str]]:
    sqs = local_stack.aws_client("sqs")
    url = sqs.create_queue(
        QueueName=f"retry-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "300"}
    )["QueueUrl"]
    yield sqs, url
    sqs.delete_queue(QueueUrl=url)


def receive(sqs: Any, url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, AttributeNames=["All"]
    ).get("Messages", [])
    return messages


@pytest.mark.parametrize(("delay", "visible_again"), [(0, True), (120, False)])
def test_retry_later_sets_the_messages_visibility(
    queue: tuple[Any, str], delay: int, visible_again: bool
) -> None:
    sqs, url = queue
    sqs.send_message(QueueUrl=url, MessageBody=Envelope("job", "e-1", {}).to_json())
    [message] = receive(sqs, url)
    config = SqsEventSourceConfig(queue_url=url, queue_arn="arn:aws:sqs:us-east-1:1:q")

    async def busy(envelope: Envelope, context: RecordContext) -> None:
        raise RetryLater("downstream busy", delay_s=delay)

    processor = SqsProcessor({"job": busy}, retry=RetryPolicy(url), sqs_client=sqs)
    response = get_loop().run_until_complete(processor.process(sqs_event([message], config)))

    assert response == {"batchItemFailures": [{"itemIdentifier": message["MessageId"]}]}
    # The queue's own visibility timeout is 300 s: only the consumer's delay brings it back now.
    assert bool(receive(sqs, url)) is visible_again


def test_a_last_receive_is_given_up_and_comes_back_at_once_whatever_delay_was_asked(
    queue: tuple[Any, str],
) -> None:
    sqs, url = queue
    sqs.send_message(QueueUrl=url, MessageBody=Envelope("job", "e-2", {}).to_json())
    [message] = receive(sqs, url)
    message["Attributes"]["ApproximateReceiveCount"] = "5"  # as if received 4 times before
    config = SqsEventSourceConfig(queue_url=url, queue_arn="arn:aws:sqs:us-east-1:1:q")
    given_up: list[str] = []

    async def busy(envelope: Envelope, context: RecordContext) -> None:
        raise RetryLater("downstream busy", delay_s=120)

    async def give_up(envelope: Envelope, context: RecordContext, error: Exception) -> None:
        given_up.append(envelope.id)

    processor = SqsProcessor(
        {"job": busy},
        give_up={"job": give_up},
        max_receive_count=5,
        retry=RetryPolicy(url),
        sqs_client=sqs,
    )
    response = get_loop().run_until_complete(processor.process(sqs_event([message], config)))

    assert response == {"batchItemFailures": [{"itemIdentifier": message["MessageId"]}]}
    assert given_up == ["e-2"]
    # Visible at once (120 s asked, 300 s the queue's): the receive that moves it to the DLQ.
    assert [m["MessageId"] for m in receive(sqs, url)] == [message["MessageId"]]
