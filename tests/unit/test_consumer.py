"""The SQS batch processor on hand-made events (records shaped as Lambda delivers them)."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import pytest

# Shared from its test module until it moves to tests/fakes.py.
from fakes import FakeIdempotencyTable
from lambdaloop.consumer import RecordContext, RetryPolicy, SqsProcessor
from lambdaloop.errors import RetryLater
from lambdaloop.idempotency import IdempotencyGuard
from lambdaloop.queue import Envelope
from lambdaloop.runtime import Deadline, lambda_handler
from lambdaloop.settings import get_runtime_settings
from support import lambda_context, run


def record(
    message_id: str,
    type_: str = "ping",
    *,
    envelope_id: str | None = None,
    payload: dict[str, Any] | None = None,
    body: str | None = None,
    group: str | None = None,
    receive_count: int = 1,
    message_attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if body is None:
        body = Envelope(type_, envelope_id or f"env-{message_id}", payload or {}).to_json()
    attributes = {"ApproximateReceiveCount": str(receive_count), "SentTimestamp": "1"}
    if group is not None:
        attributes |= {"MessageGroupId": group, "SequenceNumber": "1"}
    return {
        "messageId": message_id,
        "receiptHandle": f"rh-{message_id}",
        "body": body,
        "attributes": attributes,
        "messageAttributes": message_attributes or {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:q",
        "awsRegion": "eu-west-1",
    }


def event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def failed(response: Mapping[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


class Recorder:
    """A handler that records what it was given and fails for payloads asking it to."""

    def __init__(self) -> None:
        self.seen: list[tuple[Envelope, RecordContext]] = []

    async def __call__(self, envelope: Envelope, context: RecordContext) -> None:
        self.seen.append((envelope, context))
        if envelope.payload.get("fail"):
            raise RuntimeError("handler failed")


def test_a_good_batch_has_no_failures_and_handlers_get_the_record_context() -> None:
    handler = Recorder()
    attributes = {"correlation_id": {"stringValue": "c-1", "dataType": "String"}}
    batch = event(
        record("m1", payload={"n": 1}, receive_count=3, message_attributes=attributes),
        record("m2", payload={"n": 2}),
    )

    response = run(SqsProcessor({"ping": handler}).process(batch))

    assert response == {"batchItemFailures": []}
    envelope, context = handler.seen[0]
    assert envelope == Envelope("ping", "env-m1", {"n": 1})
    assert context == RecordContext("m1", 3, attributes, Deadline.never())
    assert sorted(e.payload["n"] for e, _ in handler.seen) == [1, 2]


def test_an_empty_batch_has_no_failures() -> None:
    assert run(SqsProcessor({}).process({"Records": []})) == {"batchItemFailures": []}


def test_bad_records_fail_alone_with_the_reason_logged(
    layer_caplog: pytest.LogCaptureFixture,
) -> None:
    handler = Recorder()
    not_an_envelope = json.dumps({"type": "ping", "id": "x", "version": 2, "payload": {}})
    batch = event(
        record("ok1"),
        record("bad-json", body="{not json"),
        record("bad-envelope", body=not_an_envelope),
        record("unknown", "pong"),
        record("raises", payload={"fail": True}),
        record("ok2"),
    )

    response = run(SqsProcessor({"ping": handler}).process(batch))

    assert failed(response) == ["bad-json", "bad-envelope", "unknown", "raises"]
    assert sorted(c.message_id for _, c in handler.seen) == ["ok1", "ok2", "raises"]
    assert "bad-json failed: invalid envelope: body: not a UTF-8 JSON" in layer_caplog.text
    assert "bad-envelope failed: invalid envelope: version" in layer_caplog.text
    assert "unknown failed: no handler for type 'pong'" in layer_caplog.text
    assert "raises failed: handler for 'ping' raised" in layer_caplog.text


def test_no_more_records_run_at_once_than_the_concurrency_bound() -> None:
    bound, in_flight, peak = 3, [0], [0]
    full, gate = asyncio.Event(), asyncio.Event()

    async def handler(envelope: Envelope, context: RecordContext) -> None:
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        if in_flight[0] == bound:
            full.set()
        await gate.wait()
        in_flight[0] -= 1

    async def scenario() -> dict[str, Any]:
        processing = asyncio.ensure_future(
            SqsProcessor({"ping": handler}, concurrency=bound).process(
                event(*(record(f"m{i}") for i in range(10)))
            )
        )
        await full.wait()
        assert in_flight[0] == bound
        gate.set()
        return await processing

    assert run(scenario()) == {"batchItemFailures": []}
    assert peak[0] == bound


def test_fifo_groups_run_in_order_and_stop_at_a_failure() -> None:
    order: list[str] = []
    running: defaultdict[str, int] = defaultdict(int)
    peak: defaultdict[str, int] = defaultdict(int)

    async def handler(envelope: Envelope, context: RecordContext) -> None:
        group = context.group_id or ""
        running[group] += 1
        peak[group] = max(peak[group], running[group])
        for _ in range(3):  # give any other record of the group a chance to interleave
            await asyncio.sleep(0)
        order.append(context.message_id)
        running[group] -= 1
        if envelope.payload.get("fail"):
            raise RuntimeError("handler failed")

    batch = event(
        record("a1", group="A"),
        record("b1", group="B"),
        record("a2", group="A", payload={"fail": True}),
        record("b2", group="B"),
        record("a3", group="A"),
        record("b3", group="B"),
    )

    response = run(SqsProcessor({"ping": handler}).process(batch))

    assert failed(response) == ["a2", "a3"]
    assert [m for m in order if m.startswith("a")] == ["a1", "a2"]
    assert [m for m in order if m.startswith("b")] == ["b1", "b2", "b3"]
    assert peak == {"A": 1, "B": 1}


def test_a_bad_record_in_a_fifo_group_fails_the_rest_of_it() -> None:
    handler = Recorder()
    batch = event(
        record("a1", group="A", body="nope"),
        record("a2", group="A"),
        record("b1", group="B"),
    )

    response = run(SqsProcessor({"ping": handler}).process(batch))

    assert failed(response) == ["a1", "a2"]
    assert [c.message_id for _, c in handler.seen] == ["b1"]


def test_records_running_at_the_deadline_are_cancelled_and_reported_with_the_unstarted() -> None:
    started: list[str] = []
    cancelled: list[str] = []

    async def handler(envelope: Envelope, context: RecordContext) -> None:
        started.append(context.message_id)
        if envelope.payload.get("slow"):
            try:
                await asyncio.Event().wait()  # never set: runs into the deadline
            except asyncio.CancelledError:
                cancelled.append(context.message_id)
                raise

    processor = SqsProcessor({"ping": handler}, concurrency=2, margin_s=0)

    @lambda_handler
    async def function(batch: dict[str, Any], context: Any) -> dict[str, Any]:
        return await processor.process(batch)

    batch = event(
        record("fast", payload={}),
        record("slow1", payload={"slow": True}),
        record("slow2", payload={"slow": True}),
        record("later", payload={}),
    )

    response = function(batch, lambda_context(timeout_s=1.5))

    assert failed(response) == ["slow1", "slow2", "later"]
    assert started == ["fast", "slow1", "slow2"]
    assert sorted(cancelled) == ["slow1", "slow2"]


def test_records_finishing_in_the_turn_the_reserve_is_reached_all_succeed() -> None:
    # Given a deadline already inside the report reserve (the wait for the records times out
    # at once), and records that finish without awaiting anything
    handler = Recorder()
    processor = SqsProcessor({"ping": handler}, margin_s=0)

    @lambda_handler
    async def function(batch: dict[str, Any], context: Any) -> dict[str, Any]:
        return await processor.process(batch)

    margin = get_runtime_settings().deadline_margin_s
    response = function(event(record("m1"), record("m2")), lambda_context(margin + 0.15))

    # Then they are reported as the successes they are: nothing is left to cancel
    assert failed(response) == []
    assert sorted(context.message_id for _, context in handler.seen) == ["m1", "m2"]


def test_no_record_starts_within_the_margin_of_the_deadline() -> None:
    handler = Recorder()
    processor = SqsProcessor({"ping": handler}, margin_s=60)

    @lambda_handler
    async def function(batch: dict[str, Any], context: Any) -> dict[str, Any]:
        return await processor.process(batch)

    response = function(event(record("m1"), record("m2", group="G")), lambda_context(5))

    assert failed(response) == ["m1", "m2"]
    assert handler.seen == []


def test_duplicate_envelope_ids_in_one_batch_run_the_work_once() -> None:
    runs: list[str] = []

    async def handler(envelope: Envelope, context: RecordContext) -> dict[str, str]:
        runs.append(context.message_id)
        await asyncio.sleep(0)  # the other records of the batch meet it in progress
        return {"done": envelope.id}

    guard = IdempotencyGuard(FakeIdempotencyTable())
    batch = event(*(record(f"m{i}", envelope_id="same", payload={"n": 1}) for i in range(5)))

    one_at_a_time = run(SqsProcessor({"ping": handler}, concurrency=1, guard=guard).process(batch))
    assert one_at_a_time == {"batchItemFailures": []}  # the duplicates replayed

    concurrent = run(
        SqsProcessor({"ping": handler}, concurrency=5, guard=guard).process(
            event(*(record(f"n{i}", envelope_id="other", payload={"n": 2}) for i in range(5)))
        )
    )

    assert runs == ["m0", runs[1]]
    assert runs[1].startswith("n")
    # The ones that met the first in progress are redelivered later (and then replay).
    assert failed(concurrent) == [f"n{i}" for i in range(5) if f"n{i}" != runs[1]]


def test_a_reused_envelope_id_with_another_payload_fails_its_record() -> None:
    handler = Recorder()
    guard = IdempotencyGuard(FakeIdempotencyTable())
    processor = SqsProcessor({"ping": handler}, concurrency=1, guard=guard)

    response = run(
        processor.process(
            event(
                record("m1", envelope_id="same", payload={"n": 1}),
                record("m2", envelope_id="same", payload={"n": 2}),
            )
        )
    )

    assert failed(response) == ["m2"]
    assert len(handler.seen) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"concurrency": 0}, "concurrency"), ({"margin_s": -1}, "margin_s")]
)
def test_invalid_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SqsProcessor({}, **kwargs)


class FakeSqs:
    """Records ChangeMessageVisibility calls; can be told to fail them."""

    def __init__(self, fail: bool = False) -> None:
        self.visibility: list[tuple[str, str, int]] = []
        self.fail = fail

    def change_message_visibility(self, **params: Any) -> dict[str, Any]:
        if self.fail:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="http://sqs.local")
        self.visibility.append(
            (params["QueueUrl"], params["ReceiptHandle"], params["VisibilityTimeout"])
        )
        return {}


def test_retry_later_sets_a_capped_jittered_backoff_on_the_receive_count() -> None:
    async def transient(envelope: Envelope, context: RecordContext) -> None:
        delay = envelope.payload.get("delay")
        raise RetryLater("downstream busy", delay_s=delay)

    sqs = FakeSqs()
    policy = RetryPolicy("http://sqs.local/123/q", base_s=2, max_s=10, random=lambda: 0.5)
    processor = SqsProcessor({"ping": transient}, retry=policy, sqs_client=sqs)
    batch = event(
        *(record(f"m{n}", receive_count=n) for n in (1, 2, 3, 5)),
        record("asked", payload={"delay": 7}),
    )

    response = run(processor.process(batch))

    assert sorted(failed(response)) == ["asked", "m1", "m2", "m3", "m5"]
    delays = {handle: seconds for _, handle, seconds in sqs.visibility}
    # ceiling = min(10, 2 * 2**(n-1)); half of it fixed, half jittered (random = 0.5)
    assert delays == {"rh-m1": 1, "rh-m2": 3, "rh-m3": 6, "rh-m5": 7, "rh-asked": 7}
    assert {url for url, _, _ in sqs.visibility} == {"http://sqs.local/123/q"}


def test_retry_later_without_a_policy_or_with_sqs_down_is_just_a_failure() -> None:
    async def transient(envelope: Envelope, context: RecordContext) -> None:
        raise RetryLater("downstream busy")

    sqs = FakeSqs(fail=True)
    with_policy = SqsProcessor(
        {"ping": transient}, retry=RetryPolicy("http://sqs.local/123/q"), sqs_client=sqs
    )
    without = SqsProcessor({"ping": transient})

    assert failed(run(with_policy.process(event(record("a"))))) == ["a"]
    assert failed(run(without.process(event(record("b"))))) == ["b"]
    assert sqs.visibility == []


class GivingUp:
    """A handler that fails records asking it to (with RetryLater for ``retry``), and a
    give-up that records what it was given and can be told to fail itself."""

    def __init__(self, *, give_up_fails: bool = False) -> None:
        self.given_up: list[tuple[str, int, str]] = []
        self.give_up_fails = give_up_fails

    async def __call__(self, envelope: Envelope, context: RecordContext) -> None:
        if envelope.payload.get("retry"):
            raise RetryLater("downstream busy", delay_s=120)
        if envelope.payload.get("fail"):
            raise RuntimeError("handler failed")

    async def give_up(self, envelope: Envelope, context: RecordContext, error: Exception) -> None:
        self.given_up.append((context.message_id, context.receive_count, repr(error)))
        if self.give_up_fails:
            raise RuntimeError("give-up failed")


def test_the_give_up_runs_when_a_record_fails_on_its_last_receive_only() -> None:
    handler = GivingUp()
    processor = SqsProcessor(
        {"ping": handler}, give_up={"ping": handler.give_up}, max_receive_count=3
    )
    batch = event(
        record("early", payload={"fail": True}, receive_count=2),
        record("last", payload={"fail": True}, receive_count=3),
        record("beyond", payload={"fail": True}, receive_count=4),  # maxReceiveCount lowered
        record("last-ok", receive_count=3),
        record("last-retry", payload={"retry": True}, receive_count=3),
    )

    response = run(processor.process(batch))

    assert failed(response) == ["early", "last", "beyond", "last-retry"]
    assert sorted(handler.given_up) == [
        ("beyond", 4, "RuntimeError('handler failed')"),
        ("last", 3, "RuntimeError('handler failed')"),
        ("last-retry", 3, "RetryLater('downstream busy')"),
    ]


def test_handlers_know_the_last_attempt() -> None:
    handler = Recorder()
    told = SqsProcessor({"ping": handler}, max_receive_count=2)
    untold = SqsProcessor({"ping": handler})

    run(told.process(event(record("m1", receive_count=1), record("m2", receive_count=2))))
    run(untold.process(event(record("m3", receive_count=99))))

    last = {context.message_id: context.last_attempt for _, context in handler.seen}
    assert last == {"m1": False, "m2": True, "m3": False}


def test_a_failing_give_up_is_logged_and_its_record_still_fails(
    layer_caplog: pytest.LogCaptureFixture,
) -> None:
    handler = GivingUp(give_up_fails=True)
    processor = SqsProcessor(
        {"ping": handler}, give_up={"ping": handler.give_up}, max_receive_count=1
    )

    response = run(processor.process(event(record("m1", payload={"fail": True}), record("m2"))))

    assert failed(response) == ["m1"]
    assert [message_id for message_id, _, _ in handler.given_up] == ["m1"]
    assert "m1: the give-up for 'ping' raised" in layer_caplog.text
    assert "give-up failed" in layer_caplog.text


def test_records_that_did_not_run_are_not_given_up() -> None:
    # A bad body, a type without a handler, a key reused with another payload: none ran.
    handler = GivingUp()
    guard = IdempotencyGuard(FakeIdempotencyTable())
    processor = SqsProcessor(
        {"ping": handler},
        give_up={"ping": handler.give_up},
        max_receive_count=1,
        guard=guard,
    )
    batch = event(
        record("bad", body="nope"),
        record("unknown", "pong"),
        record("m1", envelope_id="same", payload={"n": 1}),
        record("m2", envelope_id="same", payload={"n": 2}),  # reused with another payload
    )

    response = run(processor.process(batch))

    assert failed(response) == ["bad", "unknown", "m2"]
    assert handler.given_up == []


def test_retry_later_on_the_last_receive_comes_back_at_once() -> None:
    # (with or without a give-up: that receive moves it to the dead-letter queue)
    async def transient(envelope: Envelope, context: RecordContext) -> None:
        raise RetryLater("downstream busy", delay_s=120)

    sqs = FakeSqs()
    policy = RetryPolicy("http://sqs.local/123/q", random=lambda: 0.5)
    processor = SqsProcessor({"ping": transient}, max_receive_count=3, retry=policy, sqs_client=sqs)

    run(processor.process(event(record("early", receive_count=2), record("last", receive_count=3))))

    assert {handle: seconds for _, handle, seconds in sqs.visibility} == {
        "rh-early": 120,
        "rh-last": 0,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_receive_count": 0}, "max_receive_count must be at least 1"),
        ({"give_up": {"ping": GivingUp().give_up}}, "give_up needs max_receive_count"),
        (
            {"give_up": {"pong": GivingUp().give_up}, "max_receive_count": 3},
            "give_up for types with no handler: pong",
        ),
    ],
)
def test_an_inconsistent_last_attempt_setup_is_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SqsProcessor({"ping": GivingUp()}, **kwargs)
