"""The loss test at 10,000 messages, on an in-memory SQS queue that follows SQS's rules.

The same property as tests/integration/test_loss_moto.py, where moto would be too slow: every
message is either deleted after its work succeeded or in the dead-letter queue, only poison
reaches the dead-letter queue, and no envelope's side effect is applied twice, with poison,
duplicates and records that outlive the invocation's deadline in the mix.

The local event source mapping (:class:`~lambdaloop_local.sqs.SqsEventSource`) polls a
:class:`~memory_sqs.MemorySqs` whose clock only the test moves; each batch is one invocation
of a ``lambda_handler`` around :class:`~lambdaloop.consumer.SqsProcessor` (the runtime's
invocation scope and deadline), run in one thread: one execution environment, one invocation
at a time. The deadline is real time (it cannot be injected), so it is kept short: a slow
record costs a few hundredths of a second, and only in a batch that has one.

The memory queue's own rules are tested at the end of this module.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from fakes import FakeIdempotencyTable
from lambdaloop.consumer import _REPORT_RESERVE_S, RecordContext, SqsProcessor
from lambdaloop.idempotency import IdempotencyGuard
from lambdaloop.queue import Envelope
from lambdaloop.runtime import lambda_handler
from lambdaloop.settings import get_runtime_settings
from lambdaloop_local.sqs import BatchOutcome, SqsEventSource, SqsEventSourceConfig
from loss_plan import Planned, plan
from memory_sqs import ManualClock, MemorySqs
from support import lambda_context

MESSAGES = 10_000
SEED = 20_240_601
VISIBILITY_S = 30
#: The worst case of a good message is three receives (a slow envelope sent twice in a row:
#: both copies cut by the deadline, then one meets the other in progress, then it replays);
#: one more to spare.
MAX_RECEIVES = 4
#: How long the records of a batch get before the processor cancels what still runs.
RUN_WINDOW_S = 0.02


class Consumer:
    """The function under test: SqsProcessor with an idempotency guard, applying a side effect
    (a counter per envelope id) once per envelope."""

    def __init__(self, guard: IdempotencyGuard) -> None:
        self.applied: Counter[str] = Counter()
        self.cut: list[str] = []  # envelope ids cancelled at the deadline
        self.processor = SqsProcessor({"work": self.work}, guard=guard, margin_s=0)

    async def work(self, envelope: Envelope, context: RecordContext) -> dict[str, str]:
        if envelope.payload.get("fail"):
            raise RuntimeError(f"poison payload {envelope.id}")
        if envelope.payload.get("slow") and context.receive_count == 1:
            try:
                await asyncio.Event().wait()  # never set: runs into the deadline
            except asyncio.CancelledError:
                self.cut.append(envelope.id)
                raise
        await asyncio.sleep(0)  # the I/O a real side effect awaits: duplicates meet in progress
        self.applied[envelope.id] += 1
        return {"applied": envelope.id}


@dataclass
class Ledger:
    """What became of each message, seen from the invocations of the event source."""

    outcomes: list[BatchOutcome] = field(default_factory=list)
    #: By MessageId, each delivery: its ApproximateReceiveCount and whether it succeeded
    #: (the event source then deleted it).
    deliveries: defaultdict[str, list[tuple[int, bool]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def record(self, event: dict[str, Any], response: Any) -> None:
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        for record in event["Records"]:
            count = int(record["attributes"]["ApproximateReceiveCount"])
            self.deliveries[record["messageId"]].append((count, record["messageId"] not in failed))

    @property
    def deleted(self) -> list[str]:
        """MessageIds, once per deletion."""
        return [mid for mid, ds in self.deliveries.items() for _, ok in ds if ok]

    @property
    def failed_first(self) -> set[str]:
        """MessageIds failed on their first receive."""
        return {mid for mid, ds in self.deliveries.items() if (1, False) in ds}


def run_to_empty(
    sqs: MemorySqs, url: str, queue_arn: str, clock: ManualClock, consumer: Consumer
) -> Ledger:
    """Poll with the local event source until the queue is empty (bounded), moving the clock
    past the visibility timeout whenever nothing is visible."""
    config = SqsEventSourceConfig(
        queue_url=url, queue_arn=queue_arn, batch_size=10, report_batch_item_failures=True
    )
    # The runtime shortens the context's deadline by its margin; the processor cancels the
    # records still running _REPORT_RESERVE_S before that: the records get RUN_WINDOW_S.
    timeout_s = get_runtime_settings().deadline_margin_s + _REPORT_RESERVE_S + RUN_WINDOW_S

    @lambda_handler
    async def function(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return await consumer.processor.process(event)

    ledger = Ledger()

    async def scenario(environment: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()

        async def invoke(event: dict[str, Any]) -> Any:
            response = await loop.run_in_executor(
                environment, lambda: function(event, lambda_context(timeout_s))
            )
            ledger.record(event, response)
            return response

        source = SqsEventSource(config, invoke, sqs, on_batch=ledger.outcomes.append)
        for _ in range(5 * MESSAGES // config.batch_size):
            if await source.poll_once() is not None:
                continue
            if sum(counts(sqs, url)) == 0:
                return
            clock.advance(VISIBILITY_S)  # nothing visible: the messages in flight come back
        raise AssertionError(f"the queue is not empty: {counts(sqs, url)}")

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="execution-environment") as env:
        asyncio.run(scenario(env))
    return ledger


def counts(sqs: Any, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of the queue."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def make_queues(sqs: MemorySqs, max_receives: int = MAX_RECEIVES) -> tuple[str, str, str]:
    """A queue and its dead-letter queue: (url, arn, dead-letter url)."""
    dlq_url = sqs.create_queue(QueueName="loss-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives)}
    url = sqs.create_queue(
        QueueName="loss",
        Attributes={"VisibilityTimeout": str(VISIBILITY_S), "RedrivePolicy": json.dumps(redrive)},
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return url, arn, dlq_url


def send_all(sqs: Any, url: str, messages: list[Planned]) -> dict[str, Planned]:
    """Send ``messages`` in batches of 10; what was sent, by MessageId."""
    sent: dict[str, Planned] = {}
    for start in range(0, len(messages), 10):
        chunk = messages[start : start + 10]
        entries = [{"Id": str(n), "MessageBody": m.body} for n, m in enumerate(chunk)]
        response = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert not response.get("Failed")
        for success in response["Successful"]:
            sent[success["MessageId"]] = chunk[int(success["Id"])]
    return sent


def drain(sqs: Any, url: str) -> dict[str, str]:
    """Receive every message of a queue (bounded); their bodies by MessageId."""
    found: dict[str, str] = {}
    for _ in range(MESSAGES):
        messages = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=3600
        ).get("Messages", [])
        if not messages:
            return found
        found |= {m["MessageId"]: m["Body"] for m in messages}
    raise AssertionError("the queue never ran dry")


# ------------------------------------------------------------------------ the loss test


def test_ten_thousand_messages_are_each_deleted_after_success_or_dead_lettered_as_poison() -> None:
    # Given 10,000 messages: 5 % poison, 3 % duplicates, 1 % that outlive the deadline once
    clock = ManualClock()
    sqs = MemorySqs(clock)
    url, arn, dlq_url = make_queues(sqs)
    sent = send_all(sqs, url, plan(MESSAGES, SEED, "env"))
    consumer = Consumer(IdempotencyGuard(FakeIdempotencyTable(), clock=clock))

    # When the event source consumes the queue until it is empty
    ledger = run_to_empty(sqs, url, arn, clock, consumer)

    # Then every message was either deleted once, after its work succeeded, or dead-lettered
    dead = drain(sqs, dlq_url)
    assert len(sent) == MESSAGES
    assert counts(sqs, url) == (0, 0)
    assert sum(o.deleted for o in ledger.outcomes) + len(dead) == MESSAGES
    assert len(ledger.deleted) == len(set(ledger.deleted))  # none deleted twice
    assert set(ledger.deleted) | set(dead) == set(sent)
    assert not set(ledger.deleted) & set(dead)
    assert [o.error for o in ledger.outcomes if o.error] == []  # every invocation answered
    # And the dead-letter queue holds the poison and nothing else
    poison = {mid for mid, m in sent.items() if m.poison}
    assert set(dead) == poison, {mid: ledger.deliveries[mid] for mid in set(dead) - poison}
    assert sorted(dead.values()) == sorted(sent[mid].body for mid in poison)
    # And each good envelope's side effect was applied exactly once, poison's never
    good = {m.envelope_id for m in sent.values() if not m.poison}
    assert consumer.applied == dict.fromkeys(good, 1)
    # And the slow records were cut by the deadline on their first receive, then succeeded
    slow = {mid for mid, m in sent.items() if m.kind == "slow"}
    assert slow <= ledger.failed_first
    assert set(consumer.cut) == {m.envelope_id for m in sent.values() if m.kind == "slow"}


def test_the_loss_tests_mix_is_what_the_issue_asks_for() -> None:
    # Given the message mix of the loss tests
    messages = plan(1_000, SEED, "env")

    # Then 1,000 messages: 5 % poison of three kinds, 1 % slow, 3 % duplicates
    kinds = Counter(m.kind for m in messages)
    copies = Counter(messages)
    assert len(messages) == 1_000
    assert (kinds["not-json"], kinds["no-handler"], kinds["fails"]) == (17, 17, 16)
    assert sum(n - 1 for n in copies.values()) == 30
    assert {m.kind for m, n in copies.items() if n > 1} == {"good", "slow"}
    assert sum(n for m, n in copies.items() if m.kind == "slow") == 11  # 10 and one copy
    # And some copies follow their original at once (into one batch), others come later
    adjacent = sum(a == b for a, b in itertools.pairwise(messages))
    assert 0 < adjacent < 30


# ----------------------------------------------------------------- the memory queue itself


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sqs(clock: ManualClock) -> MemorySqs:
    return MemorySqs(clock)


def receive(sqs: MemorySqs, url: str, count: int = 10) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=count, AttributeNames=["All"]
    ).get("Messages", [])
    return messages


def test_a_received_message_is_invisible_until_its_visibility_timeout_passes(
    sqs: MemorySqs, clock: ManualClock
) -> None:
    # Given a message received once
    url, _, _ = make_queues(sqs)
    sent = sqs.send_message(QueueUrl=url, MessageBody="hello")["MessageId"]
    [first] = receive(sqs, url)

    # When the clock moves to just before, then to the end of, the visibility timeout
    clock.advance(VISIBILITY_S - 0.001)
    before = receive(sqs, url)
    in_flight = counts(sqs, url)
    clock.advance(0.001)
    [again] = receive(sqs, url)

    # Then it came back only then, counted, with a new receipt handle
    assert before == []
    assert in_flight == (0, 1)
    assert first["MessageId"] == again["MessageId"] == sent
    assert (first["Body"], first["MD5OfBody"]) == ("hello", "5d41402abc4b2a76b9719d911017c592")
    assert first["Attributes"]["ApproximateReceiveCount"] == "1"
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"
    assert again["ReceiptHandle"] != first["ReceiptHandle"]
    assert again["Attributes"]["ApproximateFirstReceiveTimestamp"] == str(
        int(clock() * 1000) - VISIBILITY_S * 1000
    )


def test_only_the_latest_receipt_handle_deletes_a_message(
    sqs: MemorySqs, clock: ManualClock
) -> None:
    # Given a message received twice
    url, _, _ = make_queues(sqs)
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    [first] = receive(sqs, url)
    clock.advance(VISIBILITY_S)
    [second] = receive(sqs, url)

    # When it is deleted with the old handle, then with an unknown one, then the latest
    stale = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "old", "ReceiptHandle": first["ReceiptHandle"]},
            {"Id": "unknown", "ReceiptHandle": "no-such-handle"},
        ],
    )
    after_stale = counts(sqs, url)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"])
    clock.advance(VISIBILITY_S)

    # Then the old handle deleted nothing, the unknown one failed, the latest deleted it
    assert stale["Successful"] == [{"Id": "old"}]
    assert [(f["Id"], f["Code"], f["SenderFault"]) for f in stale["Failed"]] == [
        ("unknown", "ReceiptHandleIsInvalid", True)
    ]
    assert after_stale == (0, 1)
    assert receive(sqs, url) == []
    assert counts(sqs, url) == (0, 0)


def test_after_max_receive_count_receives_the_next_receive_moves_it_to_the_dlq(
    sqs: MemorySqs, clock: ManualClock
) -> None:
    # Given a queue that redrives after 2 receives, and a message received twice
    url, arn, dlq_url = make_queues(sqs, max_receives=2)
    sent = sqs.send_message(QueueUrl=url, MessageBody="poison")["MessageId"]
    deliveries = [receive(sqs, url)]
    clock.advance(VISIBILITY_S)
    deliveries.append(receive(sqs, url))

    # When it is visible again and the queue is polled
    clock.advance(VISIBILITY_S)
    third = receive(sqs, url)

    # Then it was not delivered a third time but moved, as it was, to the dead-letter queue
    assert [[m["MessageId"] for m in d] for d in deliveries] == [[sent], [sent]]
    assert third == []
    assert counts(sqs, url) == (0, 0)
    [dead] = receive(sqs, dlq_url)
    assert (dead["MessageId"], dead["Body"]) == (sent, "poison")
    assert dead["Attributes"]["DeadLetterQueueSourceArn"] == arn


def test_change_message_visibility_brings_a_message_back_sooner_or_later(
    sqs: MemorySqs, clock: ManualClock
) -> None:
    # Given two messages in flight
    url, _, _ = make_queues(sqs)
    sqs.send_message(QueueUrl=url, MessageBody="sooner")
    sqs.send_message(QueueUrl=url, MessageBody="later")
    sooner, later = receive(sqs, url)

    # When one is put back at once and the other for longer than the queue's timeout
    sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=sooner["ReceiptHandle"], VisibilityTimeout=0
    )
    sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=later["ReceiptHandle"], VisibilityTimeout=VISIBILITY_S * 2
    )
    at_once = [m["Body"] for m in receive(sqs, url)]
    clock.advance(VISIBILITY_S)
    at_the_queues_timeout = [m["Body"] for m in receive(sqs, url)]
    clock.advance(VISIBILITY_S)
    at_its_own = [m["Body"] for m in receive(sqs, url)]

    # Then each came back when its visibility said
    assert (at_once, at_the_queues_timeout) == (["sooner"], ["sooner"])
    assert at_its_own == ["sooner", "later"]
    # And a handle that is no longer in flight cannot change anything
    with pytest.raises(ClientError, match="MessageNotInflight"):
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=later["ReceiptHandle"], VisibilityTimeout=5
        )


def test_receives_and_batches_keep_to_sqs_limits(sqs: MemorySqs) -> None:
    # Given a queue with 12 messages, sent in batches of at most 10
    url, _, _ = make_queues(sqs)
    for bodies in (range(10), range(10, 12)):
        sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": str(n)} for n in bodies]
        )

    # When more than 10 are asked for, or sent, at once
    too_many: list[Callable[[], Any]] = [
        lambda: sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=11),
        lambda: sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": str(n), "MessageBody": "x"} for n in range(11)]
        ),
    ]

    # Then SQS's errors are raised, and a receive gives at most 10, in the order sent
    for call in too_many:
        with pytest.raises(ClientError):
            call()
    assert [m["Body"] for m in receive(sqs, url)] == [str(n) for n in range(10)]
    assert [m["Body"] for m in receive(sqs, url)] == ["10", "11"]
    assert sqs.receive_message(QueueUrl=url) == {}  # boto3 leaves "Messages" out
    with pytest.raises(ClientError, match="NonExistentQueue"):
        sqs.receive_message(QueueUrl=url + "-missing")
