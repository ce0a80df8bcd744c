"""The loss test: 1,000 messages through moto's SQS, Lambda's event source mapping and real
execution environments, and not one lost or applied twice.

The mix: 5 % poison (not JSON, an envelope type without a handler, a payload the handler
always fails), 3 % duplicates (the same envelope id and payload sent again as another SQS
message, some right after the original, some later) and 1 % records whose first attempt
outlives the invocation's deadline (it waits on nothing that ever happens; which receive
brings it does not matter, so a receive lost on a loaded machine changes nothing). The local
event source
(:class:`~lambdaloop_local.sqs.SqsEventSource`) polls the queue and invokes a consumer
function in worker processes (:class:`~lambdaloop_local.functions.FunctionPool`); the
function is :class:`~lambdaloop.consumer.SqsProcessor` with an
:class:`~lambdaloop.idempotency.IdempotencyGuard` on the template's IdempotencyTable, and its
side effect is a DynamoDB counter per envelope id, so a side effect applied twice shows as 2.

Timing, chosen for Lambda's rules and for a loaded machine rather than for speed: the
function's Timeout is 8 s and its runtime keeps 3 s of it in reserve
(``LAMBDALOOP_DEADLINE_MARGIN_S``), the processor cancelling 0.5 s before that: a batch gets
4.5 s, about fifteen times what one takes here, and the report after a cut has 3.5 s to
reach Lambda even when the machine starves the worker (with 0.5 s it once did not: Lambda's
timeout, not the processor, ended the batch). The queue's VisibilityTimeout is 10 s, longer
than the Timeout as AWS requires of an event source's queue (a shorter one hands a batch to
a second poller while the first still runs it), and maxReceiveCount 5 (see MAX_RECEIVES).

The 10,000-message variant runs on an in-memory queue: tests/unit/test_loss_memory.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lambdaloop_local.functions import FunctionPool, LocalFunction
from lambdaloop_local.sqs import BatchOutcome, SqsEventSource, SqsEventSourceConfig
from lambdaloop_local.stack import LOCAL_CREDENTIALS, LocalStack
from loss_plan import Planned, plan
from support import function_in_folder

MESSAGES = 1_000
SEED = 20_240_601
TIMEOUT_S = 8
#: What the runtime keeps of the Timeout to report a cut batch.
DEADLINE_MARGIN_S = 3
VISIBILITY_S = 10
#: The worst case of a good message is three receives (a slow envelope sent twice in a row:
#: both copies cut by the deadline, then one meets the other in progress, then it replays);
#: two more to spare (the template's own minimum is 5).
MAX_RECEIVES = 5
#: Pollers (ScalingConfig.MaximumConcurrency), and as many execution environments.
CONCURRENCY = 2
#: Bound on the wait for the queue to empty: the first pass, then four receives of the last
#: poison, VISIBILITY_S apart, take about a minute: a bound, not an expectation.
DRAIN_LIMIT_S = 300
POLL_INTERVAL_S = 0.25
#: Messages sent and not yet deleted that the producer lets be (poison included).
BACKLOG = 100
#: Bound on the producer's wait for a batch to finish.
STALL_LIMIT_S = 30

CONSUMER = """
import asyncio
import os
import uuid

from lambdaloop.consumer import SqsProcessor
from lambdaloop.errors import ConditionFailed
from lambdaloop.idempotency import IdempotencyGuard
from lambdaloop.runtime import lambda_handler
from lambdaloop.store import Table

effects = Table(os.environ["EFFECTS_TABLE"], key_schema=("id",))
guard = IdempotencyGuard(Table(os.environ["IDEMPOTENCY_TABLE"], key_schema=("id",)))


async def first_attempt(envelope):
    # Whether no earlier attempt of this envelope's work began, in any environment and on any
    # receive: the first to store its claim is. The nonce makes another attempt's claim
    # differ from this one's, which a retried write of this one's finds equal.
    try:
        await effects.create({"id": f"slow-{envelope.id}", "nonce": uuid.uuid4().hex})
    except ConditionFailed:
        return False
    return True


# The records of this environment's batch still running, and a condition to wait on it.
running = 0
settled = asyncio.Condition()


async def until_alone():
    # A deadline's cut cannot recall a write already sent (boto3's call runs on in its
    # thread): a good record cut as its increment was under way would be applied, then
    # retried and applied again. So a slow record lets the rest of its batch finish first;
    # then the deadline cuts it alone.
    async with settled:
        await settled.wait_for(lambda: running == 1)


async def work(envelope, context):
    global running
    running += 1
    try:
        if envelope.payload.get("fail"):
            raise RuntimeError(f"poison payload {envelope.id}")
        if envelope.payload.get("slow") and await first_attempt(envelope):
            await until_alone()
            await asyncio.Event().wait()  # never set: only the deadline ends it
        await effects.increment({"id": envelope.id}, "applied")
        return {"applied": envelope.id}
    finally:
        running -= 1
        async with settled:
            settled.notify_all()


processor = SqsProcessor({"work": work}, guard=guard, margin_s=0.5)


@lambda_handler
async def handler(event, context):
    return await processor.process(event)
"""


@dataclass(frozen=True)
class Queues:
    sqs: Any
    url: str
    arn: str
    dlq_url: str
    region: str

    def counts(self) -> tuple[int, int]:
        """(visible, in flight) messages of the main queue."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        )

    def send(self, messages: list[Planned]) -> dict[str, Planned]:
        """Send up to 10 messages in one batch; what was sent, by MessageId."""
        entries = [{"Id": str(n), "MessageBody": m.body} for n, m in enumerate(messages)]
        response = self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
        assert not response.get("Failed")
        return {s["MessageId"]: messages[int(s["Id"])] for s in response["Successful"]}

    def dead_letters(self) -> dict[str, str]:
        """Every message of the dead-letter queue (bounded); bodies by MessageId."""
        found: dict[str, str] = {}
        for _ in range(MESSAGES):
            messages = self.sqs.receive_message(
                QueueUrl=self.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=600
            ).get("Messages", [])
            if not messages:
                return found
            found |= {m["MessageId"]: m["Body"] for m in messages}
        raise AssertionError("the dead-letter queue never ran dry")


@pytest.fixture
def queues(local_stack: LocalStack) -> Iterator[Queues]:
    """A queue that redrives to its own dead-letter queue after MAX_RECEIVES receives."""
    sqs = local_stack.aws_client("sqs")
    name = f"loss-{uuid.uuid4().hex[:12]}"
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVES)}
    url = sqs.create_queue(
        QueueName=name,
        Attributes={"VisibilityTimeout": str(VISIBILITY_S), "RedrivePolicy": json.dumps(redrive)},
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    try:
        yield Queues(sqs, url, arn, dlq_url, local_stack.config.pseudo.region)
    finally:
        sqs.delete_queue(QueueUrl=url)
        sqs.delete_queue(QueueUrl=dlq_url)


@pytest.fixture
def effects_table(local_stack: LocalStack) -> Iterator[str]:
    """A table of side-effect counters, one item per envelope id."""
    dynamodb = local_stack.aws_client("dynamodb")
    name = f"loss-effects-{uuid.uuid4().hex[:12]}"
    dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    try:
        yield name
    finally:
        dynamodb.delete_table(TableName=name)


def applied_effects(local_stack: LocalStack, table: str) -> dict[str, int]:
    paginator = local_stack.aws_client("dynamodb").get_paginator("scan")
    return {
        item["id"]["S"]: int(item["applied"]["N"])
        for page in paginator.paginate(TableName=table, ConsistentRead=True)
        for item in page["Items"]
        if "applied" in item  # not the slow envelopes' claims
    }


@pytest.fixture
def consumer(tmp_path: Path, local_stack: LocalStack, effects_table: str) -> LocalFunction:
    code = tmp_path / "code"
    code.mkdir()
    (code / "consumer.py").write_text(CONSUMER)
    region = local_stack.config.pseudo.region
    return function_in_folder(
        code,
        "consumer.handler",
        timeout=TIMEOUT_S,
        environment={
            **LOCAL_CREDENTIALS,
            "AWS_ENDPOINT_URL": local_stack.aws_endpoint,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "IDEMPOTENCY_TABLE": local_stack.resources.refs["IdempotencyTable"],
            "EFFECTS_TABLE": effects_table,
            "LAMBDALOOP_DEADLINE_MARGIN_S": str(DEADLINE_MARGIN_S),
        },
    )


@dataclass
class Ledger:
    """What became of each message, seen from the invocations of the event source."""

    outcomes: list[BatchOutcome] = field(default_factory=list)
    #: By MessageId, each delivery: its ApproximateReceiveCount and whether it succeeded
    #: (the event source then deleted it).
    deliveries: defaultdict[str, list[tuple[int, bool]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    succeeded: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, event: dict[str, Any], response: Any) -> None:
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        for record in event["Records"]:
            ok = record["messageId"] not in failed
            count = int(record["attributes"]["ApproximateReceiveCount"])
            self.deliveries[record["messageId"]].append((count, ok))
            self.succeeded += ok

    def on_batch(self, outcome: BatchOutcome) -> None:
        self.outcomes.append(outcome)
        self.progress.set()

    @property
    def deleted(self) -> list[str]:
        """MessageIds, once per deletion."""
        return [mid for mid, ds in self.deliveries.items() for _, ok in ds if ok]

    @property
    def failed(self) -> set[str]:
        """MessageIds failed on some receive."""
        return {mid for mid, ds in self.deliveries.items() if any(not ok for _, ok in ds)}


async def produce(queues: Queues, messages: list[Planned], ledger: Ledger) -> dict[str, Planned]:
    """Send ``messages`` in batches of 10, keeping at most BACKLOG of them unfinished (poison
    included); what was sent, by MessageId.

    moto's SQS scans every message of a queue several times per request: 1,000 messages deep,
    each receive costs about half a second of the one interpreter that also serves DynamoDB.
    """
    sent: dict[str, Planned] = {}
    for start in range(0, len(messages), 10):
        while len(sent) - ledger.succeeded >= BACKLOG:
            ledger.progress.clear()
            await asyncio.wait_for(ledger.progress.wait(), STALL_LIMIT_S)
        sent |= await asyncio.to_thread(queues.send, messages[start : start + 10])
    return sent


async def until_empty(queues: Queues) -> None:
    """Return once the queue has no message, visible or in flight (bounded)."""
    for _ in range(int(DRAIN_LIMIT_S / POLL_INTERVAL_S)):
        if sum(await asyncio.to_thread(queues.counts)) == 0:
            return
        await asyncio.sleep(POLL_INTERVAL_S)
    raise AssertionError(f"the queue is not empty: {queues.counts()}")


def drain_through(
    queues: Queues, function: LocalFunction, messages: list[Planned]
) -> tuple[dict[str, Planned], Ledger]:
    """Send ``messages`` while the event source runs ``function`` on the queue, until all are
    sent and the queue is empty; then stop it, letting the batches in progress finish. What
    was sent, by MessageId, and the ledger."""
    config = SqsEventSourceConfig(
        queue_url=queues.url,
        queue_arn=queues.arn,
        batch_size=10,
        max_concurrency=CONCURRENCY,
        report_batch_item_failures=True,
        region=queues.region,
    )

    async def scenario() -> tuple[dict[str, Planned], Ledger]:
        ledger = Ledger()
        pool = FunctionPool(function, CONCURRENCY)

        async def invoke(event: dict[str, Any]) -> Any:
            response = (await pool.invoke(event)).result
            ledger.record(event, response)
            return response

        source = SqsEventSource(config, invoke, queues.sqs, on_batch=ledger.on_batch)
        stop = asyncio.Event()
        try:
            # Cold starts happen before the first receive, not within a visibility timeout.
            await asyncio.gather(*(pool.warm() for _ in range(CONCURRENCY)))
            running = asyncio.create_task(source.run(stop))
            try:
                sent = await produce(queues, messages, ledger)
                await until_empty(queues)
            finally:
                stop.set()
                await asyncio.wait_for(running, 30)  # a hang guard: run() ends once stop is set
        finally:
            await pool.aclose()
        return sent, ledger

    return asyncio.run(scenario())


def test_a_thousand_messages_are_each_deleted_after_success_or_dead_lettered_as_poison(
    local_stack: LocalStack,
    queues: Queues,
    consumer: LocalFunction,
    effects_table: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given 1,000 messages: 5 % poison, 3 % duplicates, 1 % that outlive the deadline once
    messages = plan(MESSAGES, SEED, f"loss-{uuid.uuid4().hex[:8]}")
    caplog.set_level(logging.WARNING, logger="werkzeug")  # moto's line per request: CPU

    # When they are sent while the event source runs the consumer, until the queue is empty
    sent, ledger = drain_through(queues, consumer, messages)

    # Then every message was either deleted, after its work succeeded, or dead-lettered
    dead = queues.dead_letters()
    assert len(sent) == MESSAGES
    assert queues.counts() == (0, 0)
    assert sum(o.deleted for o in ledger.outcomes) == len(ledger.deleted)  # every success
    assert len(set(ledger.deleted)) + len(dead) == MESSAGES
    assert set(ledger.deleted) | set(dead) == set(sent)
    assert not set(ledger.deleted) & set(dead)
    # (SQS is at-least-once: a message whose deletion lands after its visibility timeout, as
    # on a loaded machine, is delivered and deleted again. Its work is then replayed, never
    # applied twice: the side effects below are counted once per envelope.)
    # And every invocation answered in time: the processor cut the slow records, not Lambda
    assert [o.error for o in ledger.outcomes if o.error] == []
    # And the dead-letter queue holds the poison and nothing else
    poison = {mid for mid, m in sent.items() if m.poison}
    assert set(dead) == poison, {mid: ledger.deliveries[mid] for mid in set(dead) - poison}
    assert sorted(dead.values()) == sorted(sent[mid].body for mid in poison)
    # And each good envelope's side effect was applied exactly once, poison's never
    good = {m.envelope_id for m in sent.values() if not m.poison}
    assert applied_effects(local_stack, effects_table) == dict.fromkeys(good, 1)
    # And each slow envelope was cut by the deadline once (its first attempt, on whichever
    # receive that came), then succeeded: cut, not lost, and not left to Lambda's timeout
    slow = {mid for mid, m in sent.items() if m.kind == "slow"}
    cut = {sent[mid].envelope_id for mid in ledger.failed}
    assert {sent[mid].envelope_id for mid in slow} <= cut
    assert (len(poison), len(slow)) == (50, 11)  # as planned: 10 slow envelopes, one sent twice
