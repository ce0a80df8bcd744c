"""The local DynamoDB stream event source mapping behaves like Lambda's, against moto's streams."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lambdaloop_local.context import ACCOUNT_ID
from lambdaloop_local.functions import FunctionPool, LocalFunction
from lambdaloop_local.stack import LocalStack, StackConfig
from lambdaloop_local.streams import (
    EventFilter,
    FilterError,
    StreamBatchOutcome,
    StreamEventSource,
    StreamEventSourceConfig,
)
from support import handlers_folder, logging_function

T = TypeVar("T")
Invoke = Callable[[dict[str, Any]], Awaitable[Any]]

#: Every wait on the source is bounded by this, generously: a busy machine still passes.
BOUND_S = 30.0
FUNCTION_ARN = f"arn:aws:lambda:us-east-1:{ACCOUNT_ID}:function:TestFunction"
#: The keys of a record of Lambda's DynamoDB event, and of its `dynamodb` part (NEW_IMAGE).
RECORD_KEYS = {
    "eventID",
    "eventName",
    "eventVersion",
    "eventSource",
    "awsRegion",
    "dynamodb",
    "eventSourceARN",
}
NEW_IMAGE_KEYS = {
    "ApproximateCreationDateTime",
    "Keys",
    "NewImage",
    "SequenceNumber",
    "SizeBytes",
    "StreamViewType",
}

HANDLERS = """
import json, os, pathlib

LOG_DIR = pathlib.Path(os.environ["LOG_DIR"])

def _log(event):
    with (LOG_DIR / "batches.jsonl").open("a") as log:
        log.write(json.dumps(event) + "\\n")

def _pk(record):
    return record["dynamodb"]["Keys"]["pk"]["S"]

def keep(event, context):
    _log(event)

def report_once(event, context):
    # Names the first "fail" record as failed, the first time only.
    _log(event)
    marker = LOG_DIR / "reported"
    for record in event["Records"]:
        if _pk(record).startswith("fail") and not marker.exists():
            marker.write_text("")
            sequence = record["dynamodb"]["SequenceNumber"]
            return {"batchItemFailures": [{"itemIdentifier": sequence}]}
    return {"batchItemFailures": []}

def poison(event, context):
    _log(event)
    if any(_pk(record).startswith("poison") for record in event["Records"]):
        raise RuntimeError("poison")
"""


@dataclass(frozen=True)
class Stream:
    """A table with a NEW_IMAGE stream, and a queue for the on-failure records."""

    dynamodb: Any
    streams: Any
    sqs: Any
    table: str
    arn: str
    dlq_url: str
    region: str

    def config(self, **overrides: Any) -> StreamEventSourceConfig:
        settings: dict[str, Any] = {
            "stream_arn": self.arn,
            "region": self.region,
            "on_failure_queue_url": self.dlq_url,
            "function_arn": FUNCTION_ARN,
            "retry_delay_s": 0.05,
            **overrides,
        }
        return StreamEventSourceConfig(**settings)

    def source(
        self,
        config: StreamEventSourceConfig,
        invoke: Invoke,
        on_batch: Callable[[StreamBatchOutcome], None] | None = None,
        checkpoints: dict[str, str] | None = None,
    ) -> StreamEventSource:
        return StreamEventSource(
            config, invoke, self.streams, self.sqs, on_batch=on_batch, checkpoints=checkpoints
        )

    def put(self, pk: str, sk: str = "META", **attributes: dict[str, Any]) -> None:
        item = {"pk": {"S": pk}, "sk": {"S": sk}, **attributes}
        self.dynamodb.put_item(TableName=self.table, Item=item)

    def dead_letters(self) -> list[dict[str, Any]]:
        letters: list[dict[str, Any]] = []
        while messages := self.sqs.receive_message(
            QueueUrl=self.dlq_url, MaxNumberOfMessages=10
        ).get("Messages"):
            letters += [json.loads(message["Body"]) for message in messages]
        return letters


@pytest.fixture
def stream(local_stack: LocalStack) -> Iterator[Stream]:
    dynamodb = local_stack.aws_client("dynamodb")
    sqs = local_stack.aws_client("sqs")
    name = f"stream-{uuid.uuid4().hex[:12]}"
    table = dynamodb.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )["TableDescription"]
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    try:
        yield Stream(
            dynamodb,
            local_stack.aws_client("dynamodbstreams"),
            sqs,
            name,
            table["LatestStreamArn"],
            dlq_url,
            local_stack.config.pseudo.region,
        )
    finally:
        dynamodb.delete_table(TableName=name)
        sqs.delete_queue(QueueUrl=dlq_url)


@pytest.fixture
def code(tmp_path: Path) -> Path:
    return handlers_folder(tmp_path, HANDLERS)


def local_function(code: Path, log_dir: Path, handler: str, timeout: int = 10) -> LocalFunction:
    return logging_function(code, log_dir, handler, timeout)


def with_function(function: LocalFunction, scenario: Callable[[Invoke], Awaitable[T]]) -> T:
    """Run ``scenario(invoke)`` in its own loop, with a warm environment for ``function``."""

    async def main() -> T:
        pool = FunctionPool(function)

        async def invoke(event: dict[str, Any]) -> Any:
            return (await pool.invoke(event)).result

        try:
            await pool.warm()
            return await scenario(invoke)
        finally:
            await pool.aclose()

    return asyncio.run(main())


async def run_until(
    source_for: Callable[[Callable[[StreamBatchOutcome], None]], StreamEventSource],
    done: Callable[[list[StreamBatchOutcome]], bool],
    meanwhile: Callable[[StreamEventSource], Awaitable[None]] | None = None,
) -> list[StreamBatchOutcome]:
    """Run the source until ``done(outcomes)``, then stop it (both bounded); ``meanwhile``
    runs beside it (to write while the source reads)."""
    outcomes: list[StreamBatchOutcome] = []
    finished = asyncio.Event()

    def on_batch(outcome: StreamBatchOutcome) -> None:
        outcomes.append(outcome)
        if done(outcomes):
            finished.set()

    source = source_for(on_batch)
    stop = asyncio.Event()
    running = asyncio.create_task(source.run(stop))
    try:
        if meanwhile is not None:
            await asyncio.wait_for(meanwhile(source), BOUND_S)
        await asyncio.wait_for(finished.wait(), BOUND_S)
    finally:
        stop.set()
        await asyncio.wait_for(running, BOUND_S)  # a hang guard: run() ends once stop is set
    return outcomes


def logged_events(log_dir: Path) -> list[dict[str, Any]]:
    path = log_dir / "batches.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def logged_batches(log_dir: Path) -> list[list[str]]:
    """The pk of each record, batch by batch, as the function saw them."""
    return [
        [record["dynamodb"]["Keys"]["pk"]["S"] for record in event["Records"]]
        for event in logged_events(log_dir)
    ]


def delivered(count: int) -> Callable[[list[StreamBatchOutcome]], bool]:
    """Done once ``count`` records have been done with (delivered or given up)."""
    return lambda outcomes: sum(o.done + len(o.discarded) for o in outcomes) >= count


# ------------------------------------------------------------------ the event


def test_records_reach_the_function_in_order_in_the_shape_lambda_delivers(
    stream: Stream, code: Path, log_dir: Path
) -> None:
    stream.put("a", blob={"B": b"\x00\x01"}, count={"N": "5"})
    stream.put("b")
    stream.dynamodb.update_item(
        TableName=stream.table,
        Key={"pk": {"S": "a"}, "sk": {"S": "META"}},
        UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": {"S": "done"}},
    )
    started = time.time()

    async def scenario(invoke: Invoke) -> list[StreamBatchOutcome]:
        return await run_until(
            lambda on_batch: stream.source(stream.config(), invoke, on_batch), delivered(3)
        )

    outcomes = with_function(local_function(code, log_dir, "keep"), scenario)

    [event] = logged_events(log_dir)
    records = event["Records"]
    assert [(r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"]) for r in records] == [
        ("INSERT", "a"),
        ("INSERT", "b"),
        ("MODIFY", "a"),
    ]
    for record in records:
        assert set(record) == RECORD_KEYS
        assert set(record["dynamodb"]) == NEW_IMAGE_KEYS
        assert record["eventVersion"] == "1.1"
        assert record["eventSource"] == "aws:dynamodb"
        assert record["awsRegion"] == stream.region
        assert record["eventSourceARN"] == stream.arn
        assert record["dynamodb"]["StreamViewType"] == "NEW_IMAGE"
        assert isinstance(record["dynamodb"]["SizeBytes"], int)
        created = record["dynamodb"]["ApproximateCreationDateTime"]
        assert isinstance(created, float)
        assert created <= started  # epoch seconds, rounded down, of a write made before
    first, _, modified = records
    assert first["dynamodb"]["Keys"] == {"pk": {"S": "a"}, "sk": {"S": "META"}}
    assert first["dynamodb"]["NewImage"] == {
        "pk": {"S": "a"},
        "sk": {"S": "META"},
        "blob": {"B": "AAE="},  # binary arrives as base64 text
        "count": {"N": "5"},
    }
    assert modified["dynamodb"]["NewImage"]["status"] == {"S": "done"}
    sequences = [int(r["dynamodb"]["SequenceNumber"]) for r in records]
    assert sequences == sorted(sequences)
    assert outcomes == [
        StreamBatchOutcome(
            outcomes[0].shard_id, [r["dynamodb"]["SequenceNumber"] for r in records], 3
        )
    ]


# ------------------------------------------------------------------ batching


def test_batches_never_exceed_the_batch_size(stream: Stream, code: Path, log_dir: Path) -> None:
    for n in range(7):
        stream.put(f"r{n}")

    async def scenario(invoke: Invoke) -> list[StreamBatchOutcome]:
        config = stream.config(batch_size=3)
        return await run_until(
            lambda on_batch: stream.source(config, invoke, on_batch), delivered(7)
        )

    with_function(local_function(code, log_dir, "keep"), scenario)

    assert logged_batches(log_dir) == [["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6"]]


def test_a_batching_window_gathers_records_written_apart(
    stream: Stream, code: Path, log_dir: Path
) -> None:
    stream.put("first")

    async def write_once_the_first_is_read(source: StreamEventSource) -> None:
        deadline = time.monotonic() + BOUND_S
        while source.pending < 1:  # the source holds "first", waiting for its batch to fill
            assert time.monotonic() < deadline, "the source never read the first record"
            await asyncio.sleep(0.01)
        await asyncio.to_thread(stream.put, "second")

    async def scenario(invoke: Invoke) -> list[StreamBatchOutcome]:
        # A window far longer than the test: the batch goes once full, not once it passes.
        config = stream.config(batch_size=2, window_s=BOUND_S * 4)
        return await run_until(
            lambda on_batch: stream.source(config, invoke, on_batch),
            delivered(2),
            meanwhile=write_once_the_first_is_read,
        )

    with_function(local_function(code, log_dir, "keep"), scenario)

    assert logged_batches(log_dir) == [["first", "second"]]


# ------------------------------------------------------------------ filtering


def test_a_filter_drops_the_records_it_does_not_match(
    stream: Stream, code: Path, log_dir: Path
) -> None:
    stream.put("a")  # INSERT of a META item: delivered
    stream.put("a", "R#1")  # not a META item
    stream.put("a", status={"S": "done"})  # a MODIFY
    stream.put("b")  # delivered
    pattern = {"eventName": ["INSERT"], "dynamodb": {"Keys": {"sk": {"S": ["META"]}}}}
    criteria = {"Filters": [{"Pattern": json.dumps(pattern)}]}

    async def scenario(invoke: Invoke) -> list[StreamBatchOutcome]:
        config = stream.config(filter=EventFilter.from_criteria(criteria))
        return await run_until(
            lambda on_batch: stream.source(config, invoke, on_batch), delivered(2)
        )

    outcomes = with_function(local_function(code, log_dir, "keep"), scenario)

    records = [record for event in logged_events(log_dir) for record in event["Records"]]
    assert [(r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"]) for r in records] == [
        ("INSERT", "a"),
        ("INSERT", "b"),
    ]
    assert all(r["dynamodb"]["Keys"]["sk"] == {"S": "META"} for r in records)
    assert sum(len(o.records) for o in outcomes) == 2


MATCHING = {"eventName": "INSERT", "dynamodb": {"Keys": {"sk": {"S": "META#1"}}, "n": {"N": "7"}}}


@pytest.mark.parametrize(
    ("pattern", "matches"),
    [
        ({"eventName": ["INSERT", "MODIFY"]}, True),
        ({"eventName": ["REMOVE"]}, False),
        ({"dynamodb": {"Keys": {"sk": {"S": [{"prefix": "META"}]}}}}, True),
        ({"dynamodb": {"Keys": {"sk": {"S": [{"prefix": "R#"}]}}}}, False),
        ({"dynamodb": {"Keys": {"sk": {"S": [{"suffix": "#1"}]}}}}, True),
        ({"eventName": [{"equals-ignore-case": "insert"}]}, True),
        ({"eventName": [{"anything-but": ["MODIFY", "REMOVE"]}]}, True),
        ({"eventName": [{"anything-but": "INSERT"}]}, False),
        ({"eventName": [{"anything-but": {"prefix": "IN"}}]}, False),
        ({"dynamodb": {"n": {"N": [{"numeric": [">", 5, "<=", 7]}]}}}, True),
        ({"dynamodb": {"n": {"N": [{"numeric": ["<", 5]}]}}}, False),
        ({"dynamodb": {"n": {"N": [{"numeric": ["=", 7]}]}}}, True),
        ({"dynamodb": {"NewImage": [{"exists": False}]}}, True),
        ({"dynamodb": {"NewImage": [{"exists": True}]}}, False),
        ({"dynamodb": {"Keys": {"sk": {"S": [{"exists": True}]}}}}, True),
        # An attribute is an object ({"S": ...}): only a nested pattern reaches its value.
        ({"dynamodb": {"Keys": {"sk": [{"exists": True}]}}}, False),
        ({"eventName": ["INSERT"], "dynamodb": {"Keys": {"sk": {"S": ["R#1"]}}}}, False),
        ({"$or": [{"eventName": ["REMOVE"]}, {"dynamodb": {"n": {"N": ["7"]}}}]}, True),
        ({"dynamodb": {"n": {"N": [7]}}}, False),  # "7" is text, not the number 7
        ({"missing": [None]}, False),
    ],
)
def test_event_filter_patterns(pattern: dict[str, Any], matches: bool) -> None:
    assert EventFilter([pattern]).matches(MATCHING) is matches


def test_several_filters_match_when_any_does_and_none_match_everything() -> None:
    either = EventFilter([{"eventName": ["REMOVE"]}, {"eventName": ["INSERT"]}])
    assert either.matches(MATCHING)
    assert not either.matches({"eventName": "MODIFY"})
    assert EventFilter().matches({"anything": "at all"})


@pytest.mark.parametrize(
    "pattern",
    [
        '{"eventName": [{"wildcard": "IN*"}]}',  # an operator the local source lacks
        '{"eventName": [{"cidr": "10.0.0.0/24"}]}',
        '{"eventName": "INSERT"}',  # values must be in a list
        '{"eventName": []}',
        '{"n": [{"numeric": ["<", 1, ">", 0]}]}',  # a range is low bound then high bound
        '{"n": [{"exists": "yes"}]}',
        "not json",
    ],
)
def test_a_filter_the_source_cannot_apply_is_refused_at_start(pattern: str) -> None:
    properties = {
        "Stream": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/1",
        "StartingPosition": "LATEST",
        "FilterCriteria": {"Filters": [{"Pattern": pattern}]},
    }
    with pytest.raises(FilterError, match="filter 1"):
        StreamEventSourceConfig.from_event(properties)


# ------------------------------------------------------------------ failures


def test_a_reported_failure_retries_the_batch_from_that_record(
    stream: Stream, code: Path, log_dir: Path
) -> None:
    for pk in ("ok-1", "ok-2", "fail-1", "ok-3"):
        stream.put(pk)

    async def scenario(invoke: Invoke) -> list[StreamBatchOutcome]:
        config = stream.config(report_batch_item_failures=True)
        return await run_until(
            lambda on_batch: stream.source(config, invoke, on_batch), delivered(4)
        )

    outcomes = with_function(local_function(code, log_dir, "report_once"), scenario)

    # The records before the reported one are done; it and those after it come again.
    assert logged_batches(log_dir) == [["ok-1", "ok-2", "fail-1", "ok-3"], ["fail-1", "ok-3"]]
    first, again = outcomes
    assert (first.done, first.failed) == (2, first.records[2:])
    assert (again.records, again.done, again.failed) == (first.records[2:], 2, [])
    assert stream.dead_letters() == []


def test_an_unreadable_response_fails_the_whole_batch(stream: Stream) -> None:
    stream.put("a")
    stream.put("b")

    async def invoke(event: dict[str, Any]) -> Any:
        return {"batchItemFailures": [{"itemIdentifier": "not-a-record-of-this-batch"}]}

    config = stream.config(report_batch_item_failures=True)
    outcome = asyncio.run(stream.source(config, invoke).poll_once())

    assert outcome is not None
    assert (outcome.done, outcome.failed, outcome.discarded) == (0, outcome.records, [])
    assert len(outcome.records) == 2
    assert outcome.error is not None
    assert "itemIdentifier" in outcome.error


def test_a_batch_that_keeps_failing_goes_to_the_on_failure_destination(
    stream: Stream, code: Path, log_dir: Path
) -> None:
    stream.put("poison")
    stream.put("later")

    async def scenario(invoke: Invoke) -> list[StreamBatchOutcome]:
        config = stream.config(batch_size=1, max_retry_attempts=2)
        return await run_until(
            lambda on_batch: stream.source(config, invoke, on_batch), delivered(2)
        )

    outcomes = with_function(local_function(code, log_dir, "poison"), scenario)

    # One attempt and two retries, then the source goes on with the next record.
    assert logged_batches(log_dir) == [["poison"]] * 3 + [["later"]]
    poison_sequence = outcomes[0].records[0]
    assert outcomes[2].discarded == [poison_sequence]
    [letter] = stream.dead_letters()
    assert letter["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert letter["requestContext"]["approximateInvokeCount"] == 3
    assert letter["requestContext"]["functionArn"] == FUNCTION_ARN
    assert letter["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    assert letter["version"] == "1.0"
    info = letter["DDBStreamBatchInfo"]
    assert info["shardId"] == outcomes[0].shard_id
    assert (info["startSequenceNumber"], info["endSequenceNumber"]) == (poison_sequence,) * 2
    assert info["batchSize"] == 1
    assert info["streamArn"] == stream.arn
    assert info["approximateArrivalOfFirstRecord"].endswith("Z")


def test_bisecting_a_failing_batch_isolates_the_record_at_fault(
    stream: Stream, code: Path, log_dir: Path
) -> None:
    for pk in ("a", "poison", "b", "c"):
        stream.put(pk)

    async def scenario(invoke: Invoke) -> list[StreamBatchOutcome]:
        config = stream.config(bisect_on_error=True, max_retry_attempts=0)
        return await run_until(
            lambda on_batch: stream.source(config, invoke, on_batch), delivered(4)
        )

    with_function(local_function(code, log_dir, "poison"), scenario)

    # Halving costs no retry; the record alone fails its one attempt and is given up.
    assert logged_batches(log_dir) == [
        ["a", "poison", "b", "c"],
        ["a", "poison"],
        ["a"],
        ["poison"],
        ["b", "c"],
    ]
    [letter] = stream.dead_letters()
    assert letter["DDBStreamBatchInfo"]["batchSize"] == 1
    assert letter["requestContext"]["condition"] == "RetryAttemptsExhausted"


# ------------------------------------------------------------------ position and lifecycle


def test_latest_skips_the_records_written_before_the_start(
    stream: Stream, code: Path, log_dir: Path
) -> None:
    stream.put("before")

    async def scenario(invoke: Invoke) -> list[StreamBatchOutcome]:
        config = stream.config(starting_position="LATEST")

        async def write_after_the_start(source: StreamEventSource) -> None:
            await source.start()  # run() starts it too; this is the moment LATEST names
            await asyncio.to_thread(stream.put, "after")

        return await run_until(
            lambda on_batch: stream.source(config, invoke, on_batch),
            delivered(1),
            meanwhile=write_after_the_start,
        )

    with_function(local_function(code, log_dir, "keep"), scenario)

    assert logged_batches(log_dir) == [["after"]]


def test_a_source_given_an_earlier_ones_position_goes_on_from_there(
    stream: Stream, code: Path, log_dir: Path
) -> None:
    checkpoints: dict[str, str] = {}
    stream.put("first")

    async def scenario(invoke: Invoke) -> None:
        config = stream.config()
        await run_until(lambda on: stream.source(config, invoke, on, checkpoints), delivered(1))
        await asyncio.to_thread(stream.put, "second")
        await run_until(lambda on: stream.source(config, invoke, on, checkpoints), delivered(1))

    with_function(local_function(code, log_dir, "keep"), scenario)

    assert logged_batches(log_dir) == [["first"], ["second"]]  # "first" was not read again
    assert checkpoints  # the position is kept per shard


def test_run_stops_when_told(stream: Stream) -> None:
    async def invoke(event: dict[str, Any]) -> None:
        raise AssertionError("the stream is empty")

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(stream.source(stream.config(), invoke).run(stop))
        await asyncio.sleep(0)  # let it start its first read
        stop.set()
        await asyncio.wait_for(running, BOUND_S)

    asyncio.run(scenario())


# ------------------------------------------------------------------ the template


def test_a_template_event_gives_the_mapping() -> None:
    stream_arn = "arn:aws:dynamodb:eu-west-1:123456789012:table/jobs/stream/2026-01-01T00:00:00"
    queue_arn = "arn:aws:sqs:eu-west-1:123456789012:relay-dlq"
    pattern = '{"eventName": ["INSERT"]}'
    properties = {
        "Stream": stream_arn,
        "StartingPosition": "TRIM_HORIZON",
        "BatchSize": 25,
        "MaximumBatchingWindowInSeconds": 2,
        "MaximumRetryAttempts": 5,
        "MaximumRecordAgeInSeconds": 3600,
        "BisectBatchOnFunctionError": True,
        "ParallelizationFactor": 1,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "FilterCriteria": {"Filters": [{"Pattern": pattern}]},
        "DestinationConfig": {"OnFailure": {"Type": "SQS", "Destination": queue_arn}},
    }

    config = StreamEventSourceConfig.from_event(
        properties, {queue_arn: "http://queue"}, function_arn=FUNCTION_ARN
    )

    assert config == StreamEventSourceConfig(
        stream_arn=stream_arn,
        starting_position="TRIM_HORIZON",
        batch_size=25,
        window_s=2.0,
        max_retry_attempts=5,
        max_record_age_s=3600,
        bisect_on_error=True,
        report_batch_item_failures=True,
        filter=EventFilter([{"eventName": ["INSERT"]}]),
        on_failure_queue_url="http://queue",
        function_arn=FUNCTION_ARN,
        region="eu-west-1",
    )
    defaults = StreamEventSourceConfig.from_event(
        {"Stream": stream_arn, "StartingPosition": "LATEST"}
    )
    assert (defaults.batch_size, defaults.window_s, defaults.max_retry_attempts) == (100, 0.0, -1)
    assert not defaults.bisect_on_error
    assert not defaults.report_batch_item_failures
    assert defaults.on_failure_queue_url is None
    with pytest.raises(ValueError, match="not a queue of the template"):
        StreamEventSourceConfig.from_event(properties, {})
    with pytest.raises(ValueError, match="StartingPosition"):
        StreamEventSourceConfig.from_event({"Stream": stream_arn})
    with pytest.raises(ValueError, match="TumblingWindowInSeconds"):
        StreamEventSourceConfig.from_event({**properties, "TumblingWindowInSeconds": 60})


TEMPLATE = """
Transform: AWS::Serverless-2016-10-31
Resources:
  Outbox:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: {table}
      AttributeDefinitions:
        - AttributeName: pk
          AttributeType: S
        - AttributeName: sk
          AttributeType: S
      KeySchema:
        - AttributeName: pk
          KeyType: HASH
        - AttributeName: sk
          KeyType: RANGE
      BillingMode: PAY_PER_REQUEST
      StreamSpecification:
        StreamViewType: NEW_IMAGE
  DeadLetters:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: {table}-dlq
  Relay:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: code/
      Handler: handlers.keep
      Runtime: python3.13
      Timeout: 10
      Environment:
        Variables:
          LOG_DIR: {log_dir}
      Events:
        OutboxStream:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt Outbox.StreamArn
            StartingPosition: TRIM_HORIZON
            BatchSize: 10
            MaximumRetryAttempts: 3
            FunctionResponseTypes: [ReportBatchItemFailures]
            FilterCriteria:
              Filters:
                - Pattern: '{{"eventName": ["INSERT"]}}'
            DestinationConfig:
              OnFailure:
                Type: SQS
                Destination: !GetAtt DeadLetters.Arn
        Disabled:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt Outbox.StreamArn
            StartingPosition: LATEST
            Enabled: false
"""


def test_the_stack_reads_the_template_streams(
    local_stack: LocalStack, tmp_path: Path, code: Path, log_dir: Path
) -> None:
    # Given a template whose function reads a table's stream (code/ is the handlers' folder)
    table = f"outbox-{uuid.uuid4().hex[:12]}"
    template = TEMPLATE.format(table=table, log_dir=json.dumps(str(log_dir)))
    (tmp_path / "template.yaml").write_text(template)
    stack = LocalStack(
        StackConfig(
            template_path=tmp_path / "template.yaml",
            aws_endpoint=local_stack.aws_endpoint,
            redis_url=local_stack.redis_url,
        )
    )
    stack.start()  # creates the table with its stream, and the queue
    dynamodb = stack.aws_client("dynamodb")
    try:
        stream_arn = dynamodb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
        assert stack.resources.attributes["Outbox.StreamArn"] == stream_arn

        [source] = stack.stream_event_sources()  # the disabled event gets none
        assert source.config.stream_arn == stream_arn
        assert source.config.on_failure_queue_url == stack.resources.refs["DeadLetters"]
        assert source.config.function_arn.endswith(":function:Relay")

        for pk in ("a", "b"):
            dynamodb.put_item(TableName=table, Item={"pk": {"S": pk}, "sk": {"S": "META"}})
        dynamodb.put_item(  # a MODIFY: filtered out
            TableName=table, Item={"pk": {"S": "a"}, "sk": {"S": "META"}, "x": {"S": "y"}}
        )

        async def consume() -> None:
            stop = asyncio.Event()
            running = asyncio.create_task(source.run(stop))
            try:
                deadline = time.monotonic() + BOUND_S
                while sum(map(len, logged_batches(log_dir))) < 2:  # the function's own log
                    assert time.monotonic() < deadline, "the records never reached the function"
                    await asyncio.sleep(0.05)
            finally:
                stop.set()
                await asyncio.wait_for(running, BOUND_S)
                await stack.aclose_functions()

        asyncio.run(consume())

        assert logged_batches(log_dir) == [["a", "b"]]
    finally:
        dynamodb.delete_table(TableName=table)
        sqs = stack.aws_client("sqs")
        sqs.delete_queue(QueueUrl=stack.resources.refs["DeadLetters"])
        stack.stop()
