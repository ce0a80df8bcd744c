"""The SQS publisher and its envelopes, on a fake of the low-level boto3 SQS client."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from lambdaloop.backoff import Backoff
from lambdaloop.errors import (
    DependencyError,
    DependencyTimeout,
    DependencyUnavailable,
    PublishError,
)
from lambdaloop.queue import MAX_BATCH_BYTES, Envelope, OutgoingMessage, Publisher
from support import run

Raw = dict[str, Any]

QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/notify"
FIFO_QUEUE = QUEUE + ".fifo"


class FakeSQS:
    """Stands in for ``boto3.client("sqs")``: records SendMessageBatch calls.

    ``failures`` scripts per envelope id the failures of its next sends, as
    ``(code, sender_fault)``; once the script is used up the entry succeeds. ``always``
    names envelope ids that fail (as the server's fault) on every send.
    """

    def __init__(
        self,
        *,
        failures: dict[str, list[tuple[str, bool]]] | None = None,
        always: frozenset[str] = frozenset(),
        error: Exception | None = None,
    ) -> None:
        self.calls: list[Raw] = []
        self.failures = {k: list(v) for k, v in (failures or {}).items()}
        self.always = always
        self.error = error
        self._lock = threading.Lock()

    def send_message_batch(self, **params: Any) -> Raw:
        with self._lock:
            self.calls.append(params)
            if self.error is not None:
                raise self.error
            successful: list[Raw] = []
            failed: list[Raw] = []
            for entry in params["Entries"]:
                envelope_id = json.loads(entry["MessageBody"])["id"]
                script = self.failures.get(envelope_id) or []
                if envelope_id in self.always:
                    failed.append(_failure(entry["Id"], "InternalError", sender_fault=False))
                elif script:
                    code, sender_fault = script.pop(0)
                    failed.append(_failure(entry["Id"], code, sender_fault=sender_fault))
                else:
                    successful.append({"Id": entry["Id"], "MessageId": f"m-{envelope_id}"})
            return {"Successful": successful, "Failed": failed}

    def sent_ids(self, call: int) -> list[str]:
        return [json.loads(e["MessageBody"])["id"] for e in self.calls[call]["Entries"]]


def _failure(entry_id: str, code: str, *, sender_fault: bool) -> Raw:
    return {"Id": entry_id, "SenderFault": sender_fault, "Code": code, "Message": f"{code}!"}


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_publisher(
    client: FakeSQS, sleep: RecordingSleep | None = None, url: str = QUEUE, **options: Any
) -> Publisher:
    return Publisher(url, client=client, sleep=sleep or RecordingSleep(), **options)


def messages(count: int, payload: Raw | None = None, **options: Any) -> list[OutgoingMessage]:
    return [
        OutgoingMessage(Envelope("user.created", f"e{n}", payload or {"n": n}), **options)
        for n in range(count)
    ]


def entry_size(entry: Raw) -> int:
    """What SQS counts: the body, and each attribute's name, type and value, in bytes."""
    size = len(entry["MessageBody"].encode())
    for name, attribute in entry.get("MessageAttributes", {}).items():
        size += len(name.encode()) + len(attribute["DataType"].encode())
        size += len(attribute["StringValue"].encode())
    return size


# ----------------------------------------------------------------------------- batching


def test_messages_go_in_batches_of_ten_in_order() -> None:
    client = FakeSQS()

    ids = run(make_publisher(client).publish_many(messages(25)))

    assert ids == [f"e{n}" for n in range(25)]
    # Chunks are sent concurrently: the calls may arrive in any order.
    assert sorted(len(call["Entries"]) for call in client.calls) == [5, 10, 10]
    assert all(call["QueueUrl"] == QUEUE for call in client.calls)
    assert sorted(i for c in range(3) for i in client.sent_ids(c)) == sorted(ids)
    for call in client.calls:  # entry ids are the index within the batch
        assert [e["Id"] for e in call["Entries"]] == [str(i) for i in range(len(call["Entries"]))]


def test_batches_are_cut_at_256_kib_of_bodies_and_attributes() -> None:
    client = FakeSQS()
    big = messages(10, {"blob": "x" * 30 * 1024}, correlation_id="corr-1")

    run(make_publisher(client).publish_many(big))

    sizes = [sum(entry_size(e) for e in call["Entries"]) for call in client.calls]
    assert all(size <= MAX_BATCH_BYTES for size in sizes)
    # ~30.8 KB each: 8 fit in 256 KiB, 9 do not.
    assert sorted(len(call["Entries"]) for call in client.calls) == [2, 8]


def test_a_message_over_256_kib_is_refused_before_anything_is_sent() -> None:
    client = FakeSQS()
    huge = OutgoingMessage(Envelope("user.created", "huge", {"blob": "x" * MAX_BATCH_BYTES}))
    batch = [*messages(3), huge]

    with pytest.raises(ValueError, match="huge"):
        run(make_publisher(client).publish_many(batch))

    assert client.calls == []


def test_duplicate_envelope_ids_are_refused() -> None:
    client = FakeSQS()

    with pytest.raises(ValueError, match="e1"):
        run(make_publisher(client).publish_many([*messages(3), *messages(2)]))

    assert client.calls == []


def test_nothing_to_publish_makes_no_call() -> None:
    client = FakeSQS()

    assert run(make_publisher(client).publish_many([])) == []
    assert client.calls == []


# ----------------------------------------------------------------------------- retries


def test_entries_failed_by_sqs_are_retried_alone_with_capped_jittered_backoff() -> None:
    # Given two entries SQS fails twice (its fault), then accepts
    flaky = [("InternalError", False), ("ServiceUnavailable", False)]
    client = FakeSQS(failures={"e3": list(flaky), "e7": list(flaky)})
    sleep = RecordingSleep()
    publisher = make_publisher(client, sleep, backoff=Backoff(0.05, 0.08, random=lambda: 0.5))

    # When
    ids = run(publisher.publish_many(messages(10)))

    # Then only the failed entries are resent, after jittered, capped delays
    assert ids == [f"e{n}" for n in range(10)]
    assert [client.sent_ids(c) for c in range(len(client.calls))] == [
        [f"e{n}" for n in range(10)],
        ["e3", "e7"],
        ["e3", "e7"],
    ]
    assert [e["Id"] for e in client.calls[1]["Entries"]] == ["3", "7"]
    assert sleep.delays == [0.5 * 0.05, 0.5 * 0.08]
    assert all(0 <= d <= 0.08 for d in sleep.delays)


def test_sender_fault_entries_are_not_retried() -> None:
    client = FakeSQS(failures={"e1": [("InvalidParameterValue", True)]})

    with pytest.raises(PublishError) as caught:
        run(make_publisher(client).publish_many(messages(3)))

    assert len(client.calls) == 1
    assert caught.value.failed == {"e1": "InvalidParameterValue: InvalidParameterValue!"}


def test_persistent_failures_raise_publish_error_after_max_attempts() -> None:
    client = FakeSQS(always=frozenset({"e2", "e14"}))
    sleep = RecordingSleep()

    with pytest.raises(PublishError) as caught:
        run(make_publisher(client, sleep, max_attempts=3).publish_many(messages(15)))

    assert set(caught.value.failed) == {"e2", "e14"}
    assert list(caught.value.failed) == ["e2", "e14"]  # publish order
    assert all(r.startswith("InternalError: ") for r in caught.value.failed.values())
    # Two batches, each sent 3 times in all (1 + 2 retries of its failed entry)
    assert len(client.calls) == 6
    assert len(sleep.delays) == 4
    assert "e2" in str(caught.value)
    assert "e14" in str(caught.value)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (EndpointConnectionError(endpoint_url="http://sqs"), DependencyUnavailable),
        (ReadTimeoutError(endpoint_url="http://sqs"), DependencyTimeout),
        (
            ClientError(
                {"Error": {"Code": "AWS.SimpleQueueService.NonExistentQueue", "Message": "no"}},
                "SendMessageBatch",
            ),
            DependencyError,
        ),
        (
            ClientError(
                {"Error": {"Code": "ThrottlingException", "Message": "slow down"}},
                "SendMessageBatch",
            ),
            DependencyUnavailable,
        ),
    ],
)
def test_whole_call_errors_are_translated(error: Exception, expected: type[Exception]) -> None:
    client = FakeSQS(error=error)

    with pytest.raises(expected) as caught:
        run(make_publisher(client).publish_many(messages(12)))

    assert type(caught.value) is expected
    assert caught.value.__cause__ is error
    assert len(client.calls) == 2  # both batches ran before the error was raised


# ----------------------------------------------------------------------------- entries


def test_publish_sends_one_envelope_and_returns_its_id() -> None:
    client = FakeSQS()
    publisher = make_publisher(client)

    given = run(publisher.publish("user.created", {"user": "u1"}, id="evt-1"))
    generated = run(publisher.publish("user.created", {"user": "u2"}))

    assert given == "evt-1"
    assert len(generated) == 32
    int(generated, 16)  # a uuid4 hex
    body = Envelope.from_json(client.calls[0]["Entries"][0]["MessageBody"])
    assert body == Envelope("user.created", "evt-1", {"user": "u1"})


def test_the_correlation_id_is_a_message_attribute() -> None:
    client = FakeSQS()
    publisher = make_publisher(client)

    run(publisher.publish("t", {}, id="with", correlation_id="req-42"))
    run(publisher.publish("t", {}, id="without"))

    with_attr, without = (call["Entries"][0] for call in client.calls)
    assert with_attr["MessageAttributes"] == {
        "correlation_id": {"DataType": "String", "StringValue": "req-42"}
    }
    assert "MessageAttributes" not in without


def test_a_delay_is_sent_only_when_positive() -> None:
    client = FakeSQS()
    publisher = make_publisher(client)

    run(publisher.publish("t", {}, id="later", delay_s=900))
    run(publisher.publish("t", {}, id="now"))

    later, now = (call["Entries"][0] for call in client.calls)
    assert later["DelaySeconds"] == 900
    assert "DelaySeconds" not in now


@pytest.mark.parametrize("delay", [-1, 901, 1.5])
def test_a_delay_out_of_range_is_refused(delay: Any) -> None:
    with pytest.raises(ValueError, match="delay_s"):
        OutgoingMessage(Envelope("t", "x", {}), delay_s=delay)


def test_fifo_entries_carry_group_and_deduplication_ids() -> None:
    client = FakeSQS()
    publisher = make_publisher(client, url=FIFO_QUEUE)

    run(
        publisher.publish_many(
            [
                OutgoingMessage(Envelope("t", "a", {}), group_id="g"),
                OutgoingMessage(Envelope("t", "b", {}), group_id="g", deduplication_id="d"),
            ]
        )
    )

    first, second = client.calls[0]["Entries"]
    assert publisher.fifo
    assert (first["MessageGroupId"], first["MessageDeduplicationId"]) == ("g", "a")
    assert (second["MessageGroupId"], second["MessageDeduplicationId"]) == ("g", "d")


def test_fifo_messages_need_a_group_and_take_no_delay() -> None:
    client = FakeSQS()
    publisher = make_publisher(client, url=FIFO_QUEUE)

    with pytest.raises(ValueError, match="no-group"):
        run(publisher.publish("t", {}, id="no-group"))
    with pytest.raises(ValueError, match="delayed"):
        run(publisher.publish("t", {}, id="delayed", group_id="g", delay_s=5))

    assert client.calls == []


def test_standard_queues_take_no_group_or_deduplication_id() -> None:
    client = FakeSQS()

    with pytest.raises(ValueError, match="FIFO"):
        run(make_publisher(client).publish("t", {}, id="x", group_id="g"))

    assert client.calls == []


# ----------------------------------------------------------------------------- envelopes


def test_an_envelope_makes_the_json_round_trip() -> None:
    envelope = Envelope("user.created", "evt-1", {"user": {"id": "u1", "tags": ["a", "é"]}})

    text = envelope.to_json()

    assert json.loads(text) == {
        "type": "user.created",
        "id": "evt-1",
        "version": 1,
        "payload": {"user": {"id": "u1", "tags": ["a", "é"]}},
    }
    assert Envelope.from_json(text) == envelope
    assert Envelope.from_json(text.encode()) == envelope


GOOD: Raw = {"type": "t", "id": "i", "version": 1, "payload": {}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"\xff\xfe", "body"),
        ("not json", "body"),
        ("[1, 2]", "body"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "type"}), "type"),
        (json.dumps({**GOOD, "type": ""}), "type"),
        (json.dumps({**GOOD, "type": 3}), "type"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "id"}), "id"),
        (json.dumps({**GOOD, "id": ""}), "id"),
        (json.dumps({**GOOD, "id": "x" * 129}), "id"),
        (json.dumps({**GOOD, "id": 7}), "id"),
        (json.dumps({**GOOD, "version": 2}), "version"),
        (json.dumps({**GOOD, "version": "1"}), "version"),
        (json.dumps({**GOOD, "version": True}), "version"),
        (json.dumps({**GOOD, "version": 1.0}), "version"),
        (json.dumps({**GOOD, "payload": [1]}), "payload"),
        (json.dumps({**GOOD, "payload": None}), "payload"),
        (json.dumps({**GOOD, "extra": 1}), "extra"),
    ],
)
def test_from_json_names_the_field_that_is_wrong(body: str | bytes, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        Envelope.from_json(body)


def test_an_id_of_128_characters_is_accepted() -> None:
    assert Envelope.from_json(json.dumps({**GOOD, "id": "x" * 128})).id == "x" * 128


def test_fifo_batches_go_one_after_another_and_stop_at_a_failed_call() -> None:
    # Concurrent batches would interleave a group; a later batch must not overtake a failed one.
    ok = FakeSQS()
    run(make_publisher(ok, url=FIFO_QUEUE).publish_many(messages(15, group_id="g")))
    failing = FakeSQS(error=EndpointConnectionError(endpoint_url="http://sqs"))

    with pytest.raises(DependencyUnavailable):
        run(make_publisher(failing, url=FIFO_QUEUE).publish_many(messages(15, group_id="g")))

    assert [ok.sent_ids(c) for c in range(2)] == [
        [f"e{n}" for n in range(10)],
        [f"e{n}" for n in range(10, 15)],
    ]
    assert len(failing.calls) == 1
