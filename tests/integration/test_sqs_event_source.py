"""The local SQS event source mapping behaves like Lambda's, against moto's SQS."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lambdaloop_local.functions import FunctionPool, LocalFunction
from lambdaloop_local.sqs import BatchOutcome, SqsEventSource, SqsEventSourceConfig, sqs_event
from lambdaloop_local.stack import LocalStack
from support import handlers_folder, logging_function

T = TypeVar("T")

#: The keys of a record of `sam local generate-event sqs receive-message` (SAM CLI 1.x).
SAM_RECORD_KEYS = {
    "messageId",
    "receiptHandle",
    "body",
    "attributes",
    "messageAttributes",
    "md5OfBody",
    "eventSource",
    "eventSourceARN",
    "awsRegion",
}
SAM_ATTRIBUTE_KEYS = {
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
}

HANDLERS = """
import json, os, pathlib, time

LOG_DIR = pathlib.Path(os.environ["LOG_DIR"])

def first_record(event, context):
    return event["Records"][0]

def report(event, context):
    with (LOG_DIR / "records.jsonl").open("a") as log:
        for record in event["Records"]:
            seen = {"id": record["messageId"], "body": record["body"],
                    "count": record["attributes"]["ApproximateReceiveCount"]}
            log.write(json.dumps(seen) + "\\n")
    return {"batchItemFailures": [{"itemIdentifier": record["messageId"]}
                                  for record in event["Records"]
                                  if record["body"].startswith("fail")]}

def poison(event, context):
    raise RuntimeError("poison")

def together(event, context):
    (LOG_DIR / f"marker-{os.getpid()}").write_text(event["Records"][0]["body"])
    deadline = time.monotonic() + 10
    while len(list(LOG_DIR.glob("marker-*"))) < 3:
        if time.monotonic() > deadline:
            raise TimeoutError("the other invocations never ran alongside this one")
        time.sleep(0.05)
    return None
"""


@dataclass(frozen=True)
class Queues:
    sqs: Any
    url: str
    arn: str
    dlq_url: str
    region: str

    def config(self, **overrides: Any) -> SqsEventSourceConfig:
        return SqsEventSourceConfig(
            queue_url=self.url, queue_arn=self.arn, region=self.region, **overrides
        )

    def send(self, *bodies: str, **extra: Any) -> list[str]:
        return [
            self.sqs.send_message(QueueUrl=self.url, MessageBody=body, **extra)["MessageId"]
            for body in bodies
        ]

    def counts(self, url: str | None = None) -> tuple[int, int]:
        """(visible, in flight) messages of the queue."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url or self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        )


QueueFactory = Callable[..., Queues]


@pytest.fixture
def make_queues(local_stack: LocalStack) -> Iterator[QueueFactory]:
    """A main queue (redrive to its own DLQ after 2 receives) per call, deleted afterwards."""
    sqs = local_stack.aws_client("sqs")
    made: list[str] = []

    def make(visibility_s: int = 1, fifo: bool = False) -> Queues:
        name = f"test-{uuid.uuid4().hex[:12]}"
        suffix = ".fifo" if fifo else ""
        fifo_attributes = {"FifoQueue": "true"} if fifo else {}
        dlq_url = sqs.create_queue(QueueName=f"{name}-dlq{suffix}", Attributes=fifo_attributes)[
            "QueueUrl"
        ]
        made.append(dlq_url)
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}
        url = sqs.create_queue(
            QueueName=f"{name}{suffix}",
            Attributes={
                **fifo_attributes,
                "VisibilityTimeout": str(visibility_s),
                "RedrivePolicy": json.dumps(redrive),
            },
        )["QueueUrl"]
        made.append(url)
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        return Queues(sqs, url, arn, dlq_url, local_stack.config.pseudo.region)

    yield make
    for url in made:
        sqs.delete_queue(QueueUrl=url)


@pytest.fixture
def queues(make_queues: QueueFactory) -> Queues:
    return make_queues()


@pytest.fixture
def code(tmp_path: Path) -> Path:
    return handlers_folder(tmp_path, HANDLERS)


def local_function(code: Path, log_dir: Path, handler: str, timeout: int = 5) -> LocalFunction:
    return logging_function(code, log_dir, handler, timeout)


def with_pool(
    function: LocalFunction,
    scenario: Callable[[Callable[[dict[str, Any]], Awaitable[Any]]], Awaitable[T]],
    max_environments: int = 1,
) -> T:
    """Run ``scenario(invoke)`` in its own loop, with warm environments for ``function``."""

    async def main() -> T:
        pool = FunctionPool(function, max_environments)

        async def invoke(event: dict[str, Any]) -> Any:
            return (await pool.invoke(event)).result

        try:
            await pool.warm()  # the cold start is not counted against the 1 s visibility
            return await scenario(invoke)
        finally:
            await pool.aclose()

    return asyncio.run(main())


async def poll_until(
    source: SqsEventSource, done: Callable[[BatchOutcome], bool], attempts: int = 20
) -> list[BatchOutcome]:
    """poll_once until a batch satisfies ``done`` (each empty poll long-polls about 1 s)."""
    outcomes: list[BatchOutcome] = []
    for _ in range(attempts):
        outcome = await source.poll_once()
        if outcome is not None:
            outcomes.append(outcome)
            if done(outcome):
                return outcomes
    raise AssertionError(f"no such batch after {attempts} polls: {outcomes}")


def logged_records(log_dir: Path) -> list[dict[str, str]]:
    lines = (log_dir / "records.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# ------------------------------------------------------------------ the event


def test_the_event_has_the_shape_lambda_delivers(queues: Queues, code: Path, log_dir: Path) -> None:
    [message_id] = queues.send("hello")
    source_config = queues.config()

    async def scenario(invoke: Callable[[dict[str, Any]], Awaitable[Any]]) -> Any:
        seen: list[Any] = []

        async def keep(event: dict[str, Any]) -> Any:
            seen.append(await invoke(event))
            return seen[-1]

        outcome = await SqsEventSource(source_config, keep, queues.sqs).poll_once()
        assert outcome == BatchOutcome(received=1, deleted=1, failed=[])
        return seen[0]

    record = with_pool(local_function(code, log_dir, "first_record"), scenario)

    assert set(record) == SAM_RECORD_KEYS
    assert set(record["attributes"]) == SAM_ATTRIBUTE_KEYS
    assert record["messageId"] == message_id
    assert record["body"] == "hello"
    assert record["md5OfBody"] == "5d41402abc4b2a76b9719d911017c592"  # md5("hello")
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageAttributes"] == {}
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == queues.arn
    assert record["awsRegion"] == queues.region


def test_message_attributes_and_fifo_attributes_are_delivered_as_lambda_does(
    make_queues: QueueFactory,
) -> None:
    queues = make_queues(fifo=True)
    queues.send(
        "hello",
        MessageGroupId="group-1",
        MessageDeduplicationId="dedup-1",
        MessageAttributes={
            "kind": {"DataType": "String", "StringValue": "greeting"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        },
    )
    events: list[dict[str, Any]] = []

    async def invoke(event: dict[str, Any]) -> None:
        events.append(event)

    outcome = asyncio.run(SqsEventSource(queues.config(), invoke, queues.sqs).poll_once())

    assert outcome == BatchOutcome(received=1, deleted=1, failed=[])
    [record] = events[0]["Records"]
    assert record["messageAttributes"] == {
        "kind": {
            "stringValue": "greeting",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        },
        "blob": {
            "binaryValue": "AAE=",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Binary",
        },
    }
    assert record["md5OfMessageAttributes"]
    assert record["attributes"]["MessageGroupId"] == "group-1"
    assert record["attributes"]["MessageDeduplicationId"] == "dedup-1"
    assert record["attributes"]["SequenceNumber"]
    assert set(record["attributes"]) >= SAM_ATTRIBUTE_KEYS
    assert json.loads(json.dumps(events[0])) == events[0]  # what a function receives is JSON


def test_the_event_of_a_batch_has_one_record_per_message(queues: Queues) -> None:
    messages = [
        {"MessageId": f"id-{n}", "ReceiptHandle": f"rh-{n}", "Body": str(n), "MD5OfBody": "x"}
        for n in range(3)
    ]

    event = sqs_event(messages, queues.config())

    assert [record["messageId"] for record in event["Records"]] == ["id-0", "id-1", "id-2"]


def test_a_template_event_gives_the_mapping() -> None:
    properties = {
        "Queue": {"Fn::GetAtt": ["NotifyQueue", "Arn"]},
        "BatchSize": 25,
        "MaximumBatchingWindowInSeconds": 2,
        "ScalingConfig": {"MaximumConcurrency": 5},
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
    }
    arn = "arn:aws:sqs:eu-west-1:123456789012:notify"

    config = SqsEventSourceConfig.from_event(properties, "http://queue", arn)

    assert config == SqsEventSourceConfig(
        queue_url="http://queue",
        queue_arn=arn,
        batch_size=25,
        window_s=2.0,
        max_concurrency=5,
        report_batch_item_failures=True,
        region="eu-west-1",
    )
    defaults = SqsEventSourceConfig.from_event({}, "http://queue", arn)
    assert (defaults.batch_size, defaults.window_s, defaults.max_concurrency) == (10, 0.0, 2)
    assert not defaults.report_batch_item_failures


def test_provisioned_pollers_are_accepted_and_ignored_saying_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an event in Lambda's provisioned mode (which replaces ScalingConfig)
    arn = "arn:aws:sqs:eu-west-1:123456789012:notify"
    pollers = {"MinimumPollers": 3, "MaximumPollers": 8}
    caplog.set_level(logging.INFO, logger="lambdaloop_local.sqs")
    # When the emulator reads it
    config = SqsEventSourceConfig.from_event(
        {"BatchSize": 4, "ProvisionedPollerConfig": pollers}, "http://queue", arn
    )
    # Then it polls as without it, and says that it ignored it
    assert config == SqsEventSourceConfig.from_event({"BatchSize": 4}, "http://queue", arn)
    [record] = [r for r in caplog.records if "ProvisionedPollerConfig" in r.getMessage()]
    assert arn in record.getMessage()
    assert "ignored" in record.getMessage()


# ------------------------------------------------------------ response rules


def test_a_successful_batch_is_deleted(queues: Queues, code: Path, log_dir: Path) -> None:
    queues.send("a", "b", "c")

    async def scenario(invoke: Callable[[dict[str, Any]], Awaitable[Any]]) -> BatchOutcome | None:
        config = queues.config(report_batch_item_failures=True)
        return await SqsEventSource(config, invoke, queues.sqs).poll_once()

    outcome = with_pool(local_function(code, log_dir, "report"), scenario)

    assert outcome == BatchOutcome(received=3, deleted=3, failed=[])
    assert queues.counts() == (0, 0)
    assert "Messages" not in queues.sqs.receive_message(QueueUrl=queues.url, WaitTimeSeconds=0)


def test_only_the_reported_failures_come_back(queues: Queues, code: Path, log_dir: Path) -> None:
    [_, failing, _] = queues.send("ok-1", "fail-1", "ok-2")

    async def scenario(
        invoke: Callable[[dict[str, Any]], Awaitable[Any]],
    ) -> list[BatchOutcome]:
        config = queues.config(report_batch_item_failures=True)
        source = SqsEventSource(config, invoke, queues.sqs)
        first = await source.poll_once()
        assert first == BatchOutcome(received=3, deleted=2, failed=[failing])
        # After the 1 s visibility timeout the failed message is delivered again, alone.
        return await poll_until(source, lambda outcome: True)

    [again] = with_pool(local_function(code, log_dir, "report"), scenario)

    assert again == BatchOutcome(received=1, deleted=0, failed=[failing])
    records = logged_records(log_dir)
    assert sorted(r["body"] for r in records) == ["fail-1", "fail-1", "ok-1", "ok-2"]
    assert records[-1] == {"id": failing, "body": "fail-1", "count": "2"}


def test_without_report_batch_item_failures_the_response_is_ignored(
    queues: Queues, code: Path, log_dir: Path
) -> None:
    queues.send("ok", "fail")

    async def scenario(invoke: Callable[[dict[str, Any]], Awaitable[Any]]) -> BatchOutcome | None:
        return await SqsEventSource(queues.config(), invoke, queues.sqs).poll_once()

    outcome = with_pool(local_function(code, log_dir, "report"), scenario)

    assert outcome == BatchOutcome(received=2, deleted=2, failed=[])
    assert queues.counts() == (0, 0)


@pytest.mark.parametrize(
    "response",
    [None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}],
    ids=["null", "empty-object", "empty-list", "null-list"],
)
def test_an_empty_response_deletes_the_whole_batch(queues: Queues, response: Any) -> None:
    queues.send("a", "b")

    async def invoke(event: dict[str, Any]) -> Any:
        return response

    config = queues.config(report_batch_item_failures=True)
    outcome = asyncio.run(SqsEventSource(config, invoke, queues.sqs).poll_once())

    assert outcome == BatchOutcome(received=2, deleted=2, failed=[])
    assert queues.counts() == (0, 0)


@pytest.mark.parametrize(
    "failures",
    [
        [{"itemIdentifier": ""}],
        [{"itemIdentifier": None}],
        [{"itemidentifier": "wrong key name"}],
        [{"itemIdentifier": "not-a-message-of-this-batch"}],
        [{"itemIdentifier": 7}],
        "not a list",
        ["not an object"],
    ],
    ids=["empty", "null", "bad-key", "unknown-id", "not-a-string", "not-a-list", "not-objects"],
)
def test_an_unreadable_response_fails_the_whole_batch(queues: Queues, failures: Any) -> None:
    ids = queues.send("a", "b")

    async def invoke(event: dict[str, Any]) -> Any:
        return {"batchItemFailures": failures}

    config = queues.config(report_batch_item_failures=True)
    outcome = asyncio.run(SqsEventSource(config, invoke, queues.sqs).poll_once())

    assert outcome is not None
    assert (outcome.received, outcome.deleted) == (2, 0)
    assert sorted(outcome.failed) == sorted(ids)
    assert outcome.error
    assert queues.counts() == (0, 2)  # nothing deleted: in flight until the visibility ends


def test_a_failed_invocation_leaves_the_whole_batch(
    queues: Queues, code: Path, log_dir: Path
) -> None:
    ids = queues.send("a", "b", "c")

    async def scenario(invoke: Callable[[dict[str, Any]], Awaitable[Any]]) -> BatchOutcome | None:
        config = queues.config(report_batch_item_failures=True)
        return await SqsEventSource(config, invoke, queues.sqs).poll_once()

    outcome = with_pool(local_function(code, log_dir, "poison"), scenario)

    assert outcome is not None
    assert (outcome.received, outcome.deleted) == (3, 0)
    assert sorted(outcome.failed) == sorted(ids)
    assert outcome.error == "RuntimeError: poison"
    assert queues.counts() == (0, 3)


def test_a_poison_message_ends_in_the_dead_letter_queue(
    queues: Queues, code: Path, log_dir: Path
) -> None:
    [poison_id] = queues.send("poison")

    async def scenario(invoke: Callable[[dict[str, Any]], Awaitable[Any]]) -> list[BatchOutcome]:
        source = SqsEventSource(queues.config(), invoke, queues.sqs)
        outcomes: list[BatchOutcome] = []
        for _ in range(20):  # each empty poll long-polls about 1 s
            outcome = await source.poll_once()
            if outcome is not None:
                outcomes.append(outcome)
            if queues.counts(queues.dlq_url)[0] == 1:
                return outcomes
        raise AssertionError(f"the message never reached the DLQ: {outcomes}")

    outcomes = with_pool(local_function(code, log_dir, "poison"), scenario)

    assert [o.failed for o in outcomes] == [[poison_id], [poison_id]]  # maxReceiveCount = 2
    dead = queues.sqs.receive_message(QueueUrl=queues.dlq_url, WaitTimeSeconds=0)["Messages"]
    assert [m["MessageId"] for m in dead] == [poison_id]
    assert queues.counts() == (0, 0)


# ------------------------------------------------------------------- batching


def test_a_batch_fills_up_to_the_batch_size_within_the_window(queues: Queues) -> None:
    queues.send(*(f"m{n}" for n in range(12)))
    sizes: list[int] = []

    async def invoke(event: dict[str, Any]) -> None:
        sizes.append(len(event["Records"]))

    config = queues.config(batch_size=12, window_s=5)
    outcome = asyncio.run(SqsEventSource(config, invoke, queues.sqs).poll_once())

    assert outcome == BatchOutcome(received=12, deleted=12, failed=[])
    assert sizes == [12]  # two ReceiveMessage calls (10 + 2), one invocation


async def run_until(
    source_for: Callable[[Callable[[BatchOutcome], None]], SqsEventSource],
    done: Callable[[list[BatchOutcome]], bool],
) -> list[BatchOutcome]:
    """Run the event source until ``done(outcomes)``, then stop it (both bounded)."""
    outcomes: list[BatchOutcome] = []
    finished = asyncio.Event()

    def on_batch(outcome: BatchOutcome) -> None:
        outcomes.append(outcome)
        if done(outcomes):
            finished.set()

    stop = asyncio.Event()
    running = asyncio.create_task(source_for(on_batch).run(stop))
    try:
        await asyncio.wait_for(finished.wait(), 30)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)  # a hang guard: run() must end once stop is set
    return outcomes


def test_batches_never_exceed_the_batch_size(
    make_queues: QueueFactory, code: Path, log_dir: Path
) -> None:
    queues = make_queues(visibility_s=30)
    queues.send(*(f"m{n}" for n in range(12)))
    config = queues.config(batch_size=5, max_concurrency=2)

    async def scenario(invoke: Callable[[dict[str, Any]], Awaitable[Any]]) -> list[BatchOutcome]:
        return await run_until(
            lambda on_batch: SqsEventSource(config, invoke, queues.sqs, on_batch=on_batch),
            lambda outcomes: sum(o.deleted for o in outcomes) >= 12,
        )

    outcomes = with_pool(local_function(code, log_dir, "report"), scenario, max_environments=2)

    assert all(1 <= o.received <= 5 for o in outcomes)
    assert sum(o.received for o in outcomes) == 12
    assert all(not o.failed for o in outcomes)
    assert sorted(r["body"] for r in logged_records(log_dir)) == sorted(f"m{n}" for n in range(12))
    assert queues.counts() == (0, 0)


def test_max_concurrency_runs_invocations_at_once(
    make_queues: QueueFactory, code: Path, log_dir: Path
) -> None:
    queues = make_queues(visibility_s=30)
    queues.send("one", "two", "three")
    config = queues.config(batch_size=1, max_concurrency=3)

    async def scenario(invoke: Callable[[dict[str, Any]], Awaitable[Any]]) -> list[BatchOutcome]:
        return await run_until(
            lambda on_batch: SqsEventSource(config, invoke, queues.sqs, on_batch=on_batch),
            lambda outcomes: sum(o.deleted for o in outcomes) >= 3,
        )

    # Each invocation succeeds only once all three have started: they ran at the same time.
    function = local_function(code, log_dir, "together", timeout=15)
    outcomes = with_pool(function, scenario, max_environments=3)

    assert outcomes == [BatchOutcome(received=1, deleted=1, failed=[])] * 3
    markers = sorted(log_dir.glob("marker-*"))
    assert len(markers) == 3  # three execution environments (one pid each)
    assert sorted(m.read_text() for m in markers) == ["one", "three", "two"]
    assert queues.counts() == (0, 0)


def test_run_stops_when_told(queues: Queues) -> None:
    async def invoke(event: dict[str, Any]) -> None:
        raise AssertionError("the queue is empty")

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(
            SqsEventSource(queues.config(max_concurrency=3), invoke, queues.sqs).run(stop)
        )
        await asyncio.sleep(0)  # let the pollers start their first receive
        stop.set()
        await asyncio.wait_for(running, 10)

    asyncio.run(scenario())
