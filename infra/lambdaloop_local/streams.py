"""Lambda's DynamoDB stream event source mapping, locally: a poller that turns stream records into
invocations (the counterpart of :mod:`lambdaloop_local.sqs`).

What AWS does, reproduced against moto's DynamoDB Streams:

- each shard is read in order from its starting position (TRIM_HORIZON, or LATEST: the end of
  the shard when the source starts), four times a second while it has nothing new; a shard
  split off another is read once its parent is done;
- a batch is up to ``batch_size`` records, gathered for at most ``window_s``
  (MaximumBatchingWindowInSeconds); one invocation per batch, one batch per shard at a time,
  with the event in the shape Lambda delivers;
- FilterCriteria: a record that no filter matches is dropped, never delivered, and the
  checkpoint moves past it;
- a successful invocation checkpoints past its batch; with ReportBatchItemFailures, past the
  records before the lowest sequence number the function names, and the batch is retried from
  that record. An error, a timeout, or a response Lambda cannot read fails the whole batch;
- a failed batch is retried after a backoff, up to MaximumRetryAttempts (-1: for ever), and
  with BisectBatchOnFunctionError it is halved first (a split costs no retry). Records older
  than MaximumRecordAgeInSeconds are given up too. Records given up are described to the
  OnFailure destination (an SQS queue) in Lambda's invocation-record shape, and the shard
  moves on past them.

Where it differs: the checkpoint lives in the source object (Lambda keeps it across restarts of
the mapping); ParallelizationFactor is accepted and taken as 1 (one batch per shard at a time
keeps every item's records in order, which is all the factor promises); TumblingWindowInSeconds
is refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from lambdaloop_local.functions import InvocationError
from lambdaloop_local.sqs import _arn_region, _BadResponse, _reported_failures

__all__ = [
    "EventFilter",
    "FilterError",
    "StreamBatchOutcome",
    "StreamEventSource",
    "StreamEventSourceConfig",
    "stream_record",
]

logger = logging.getLogger(__name__)

#: Lambda polls each shard four times a second while it finds nothing new.
_POLL_INTERVAL_S = 0.25
#: The most records one GetRecords returns.
_MAX_READ = 1000
#: Pause after an unexpected error (moto is down, the table was deleted) before reading again.
_ERROR_BACKOFF_S = 1.0
#: The longest pause between two attempts of a failing batch (the pause doubles from
#: ``retry_delay_s`` on each failure).
_MAX_RETRY_DELAY_S = 10.0
#: How often the shards are listed again: a shard closes and is split now and then on AWS.
_DESCRIBE_INTERVAL_S = 30.0
_STARTING_POSITIONS = ("TRIM_HORIZON", "LATEST")


# ---------------------------------------------------------------------------- event filtering


class FilterError(ValueError):
    """A FilterCriteria pattern Lambda would refuse, or one the local source cannot apply."""


def _same(expected: Any, actual: Any) -> bool:
    # JSON's types: true is not 1, and "5" is not 5.
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return expected == actual
    return type(expected) is type(actual) and bool(expected == actual)


def _text_argument(argument: Any) -> tuple[str, bool]:
    """``"abc"`` or ``{"equals-ignore-case": "abc"}``: the text, and whether case is ignored."""
    if isinstance(argument, str):
        return argument, False
    if (
        isinstance(argument, Mapping)
        and list(argument) == ["equals-ignore-case"]
        and isinstance(argument["equals-ignore-case"], str)
    ):
        return argument["equals-ignore-case"], True
    raise FilterError(f'expected a string or {{"equals-ignore-case": string}}, got {argument!r}')


def _check_text(argument: Any) -> None:
    _text_argument(argument)


def _prefix(argument: Any, value: Any) -> bool:
    text, ignore_case = _text_argument(argument)
    if not isinstance(value, str):
        return False
    return value.casefold().startswith(text.casefold()) if ignore_case else value.startswith(text)


def _suffix(argument: Any, value: Any) -> bool:
    text, ignore_case = _text_argument(argument)
    if not isinstance(value, str):
        return False
    return value.casefold().endswith(text.casefold()) if ignore_case else value.endswith(text)


def _check_string(argument: Any) -> None:
    if not isinstance(argument, str):
        raise FilterError(f"expected a string, got {argument!r}")


def _equals_ignore_case(argument: Any, value: Any) -> bool:
    return isinstance(value, str) and value.casefold() == str(argument).casefold()


_SCALARS = (str, int, float, bool, type(None))


def _check_anything_but(argument: Any) -> None:
    if isinstance(argument, Mapping):
        operator = next(iter(argument)) if len(argument) == 1 else None
        if operator not in {"prefix", "suffix", "equals-ignore-case"}:
            raise FilterError(
                f"anything-but takes one of prefix, suffix, equals-ignore-case: {argument!r}"
            )
        inner = argument[operator]
        texts = inner if operator == "equals-ignore-case" and isinstance(inner, list) else [inner]
        for text in texts:
            _check_string(text)
        return
    values = argument if isinstance(argument, list) else [argument]
    if not values or not all(isinstance(v, _SCALARS) for v in values):
        raise FilterError(f"anything-but takes a value or a list of values: {argument!r}")


def _anything_but(argument: Any, value: Any) -> bool:
    if isinstance(argument, Mapping):
        [(operator, inner)] = argument.items()
        if operator == "equals-ignore-case":
            texts = inner if isinstance(inner, list) else [inner]
            return not any(_equals_ignore_case(text, value) for text in texts)
        return not (_prefix if operator == "prefix" else _suffix)(inner, value)
    values = argument if isinstance(argument, list) else [argument]
    return not any(_same(excluded, value) for excluded in values)


_LOWER = {">": float.__gt__, ">=": float.__ge__}
_UPPER = {"<": float.__lt__, "<=": float.__le__}
_COMPARISONS = {**_LOWER, **_UPPER, "=": float.__eq__}


def _check_numeric(argument: Any) -> None:
    ok = isinstance(argument, list) and len(argument) in {2, 4}
    if ok:
        operators, numbers = argument[0::2], argument[1::2]
        ok = all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers) and all(
            op in _COMPARISONS for op in operators
        )
        if ok and len(argument) == 4:  # a range: one lower bound, then one upper bound
            ok = operators[0] in _LOWER and operators[1] in _UPPER
    if not ok:
        raise FilterError(
            f'numeric takes ["<op>", number] or [">"|">=", low, "<"|"<=", high]: {argument!r}'
        )


def _numeric(argument: Any, value: Any) -> bool:
    # DynamoDB's numbers reach the filter as text ({"N": "42"}); Lambda compares them as
    # numbers, so numeric text counts as a number here.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return False
    try:
        number = float(value)
    except ValueError:
        return False
    if not math.isfinite(number):
        return False
    pairs = zip(argument[0::2], argument[1::2], strict=True)
    return all(_COMPARISONS[op](number, float(bound)) for op, bound in pairs)


#: Operator -> (check its argument when the filter is read, match a present leaf value).
_OPERATORS: dict[str, tuple[Callable[[Any], None], Callable[[Any, Any], bool]]] = {
    "prefix": (_check_text, _prefix),
    "suffix": (_check_text, _suffix),
    "equals-ignore-case": (_check_string, _equals_ignore_case),
    "anything-but": (_check_anything_but, _anything_but),
    "numeric": (_check_numeric, _numeric),
}


def _check_matcher(matcher: Any, path: str) -> None:
    if isinstance(matcher, _SCALARS):
        return
    if not isinstance(matcher, Mapping) or len(matcher) != 1:
        raise FilterError(f"{path}: {matcher!r} is neither a value nor a one-key operator")
    [(operator, argument)] = matcher.items()
    if operator == "exists":
        if not isinstance(argument, bool):
            raise FilterError(f"{path}: exists takes true or false, got {argument!r}")
        return
    if operator not in _OPERATORS:
        supported = ", ".join(sorted([*_OPERATORS, "exists"]))
        raise FilterError(
            f"{path}: the operator {operator!r} is not supported by the local event source "
            f"(it supports {supported})"
        )
    try:
        _OPERATORS[operator][0](argument)
    except FilterError as exc:
        raise FilterError(f"{path}: {exc}") from None


def _check_pattern(pattern: Any, path: str) -> None:
    if not isinstance(pattern, Mapping) or not pattern:
        raise FilterError(f"{path or 'a pattern'} must be a non-empty JSON object: {pattern!r}")
    for key, expected in pattern.items():
        where = f"{path}.{key}" if path else str(key)
        if key == "$or":
            if not isinstance(expected, list) or len(expected) < 2:
                raise FilterError(f"{where} takes a list of at least two patterns")
            for alternative in expected:
                _check_pattern(alternative, where)
        elif isinstance(expected, Mapping):
            _check_pattern(expected, where)
        elif isinstance(expected, list) and expected:
            for matcher in expected:
                _check_matcher(matcher, where)
        else:
            raise FilterError(f"{where}: the values to match must be a non-empty list")


def _leaf_matches(matcher: Any, present: bool, value: Any) -> bool:
    # Only leaves match: an object in the record (a DynamoDB attribute such as {"S": "x"})
    # is matched by a nested pattern, never by a value or operator.
    leaf = present and not isinstance(value, Mapping)
    if isinstance(matcher, Mapping):
        [(operator, argument)] = matcher.items()
        if operator == "exists":
            return bool(argument) == leaf
        return leaf and _OPERATORS[operator][1](argument, value)
    return leaf and _same(matcher, value)


def _field_matches(matchers: Sequence[Any], present: bool, value: Any) -> bool:
    values = value if isinstance(value, list) else [value]  # an array matches by any element
    return any(_leaf_matches(m, present, v) for m in matchers for v in values)


def _matches(pattern: Mapping[str, Any], subject: Any) -> bool:
    fields = subject if isinstance(subject, Mapping) else {}
    for key, expected in pattern.items():
        if key == "$or":
            matched = any(_matches(alternative, subject) for alternative in expected)
        elif isinstance(expected, Mapping):
            matched = _matches(expected, fields.get(key))
        else:
            matched = _field_matches(expected, key in fields, fields.get(key))
        if not matched:
            return False
    return True


class EventFilter:
    """Lambda's event filtering (FilterCriteria): a record passes when any pattern matches it.

    A pattern mirrors the record: an object key descends into the record's field, a list holds
    the values the field may have (any of them): exact values, ``{"prefix": ...}``,
    ``{"suffix": ...}``, ``{"equals-ignore-case": ...}``, ``{"exists": bool}``,
    ``{"anything-but": ...}``, ``{"numeric": [...]}``; ``"$or": [pattern, ...]`` matches when
    any of its patterns does. A pattern using anything else raises :class:`FilterError` when
    the filter is made, so a mapping never starts with a filter it would apply wrongly.
    """

    def __init__(self, patterns: Sequence[Mapping[str, Any]] = ()) -> None:
        for index, pattern in enumerate(patterns):
            try:
                _check_pattern(pattern, "")
            except FilterError as exc:
                raise FilterError(f"filter {index + 1}: {exc}") from None
        self.patterns: tuple[Mapping[str, Any], ...] = tuple(patterns)

    @classmethod
    def from_criteria(cls, criteria: Mapping[str, Any] | None) -> EventFilter:
        """The filter of a FilterCriteria property: ``{"Filters": [{"Pattern": "<JSON>"}]}``."""
        patterns: list[Any] = []
        for index, entry in enumerate((criteria or {}).get("Filters") or []):
            text = entry.get("Pattern") if isinstance(entry, Mapping) else None
            try:
                patterns.append(json.loads(text) if isinstance(text, str) else text)
            except json.JSONDecodeError as exc:
                raise FilterError(f"filter {index + 1}: the pattern is not JSON ({exc})") from None
        return cls(patterns)

    def matches(self, record: Mapping[str, Any]) -> bool:
        """True when the record is to be delivered (always, without patterns)."""
        return not self.patterns or any(_matches(p, record) for p in self.patterns)

    def __repr__(self) -> str:
        return f"EventFilter({list(self.patterns)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EventFilter) and self.patterns == other.patterns

    def __hash__(self) -> int:
        return hash(json.dumps(self.patterns, sort_keys=True))


# ---------------------------------------------------------------------------- configuration


def _flag(value: Any) -> bool:
    return str(value).lower() == "true"


@dataclass(frozen=True)
class StreamEventSourceConfig:
    """One DynamoDB event of a function (an event source mapping on a table's stream)."""

    stream_arn: str
    #: StartingPosition: TRIM_HORIZON or LATEST.
    starting_position: str = "TRIM_HORIZON"
    batch_size: int = 100
    #: MaximumBatchingWindowInSeconds.
    window_s: float = 0.0
    #: MaximumRetryAttempts (-1: until the records expire).
    max_retry_attempts: int = -1
    #: MaximumRecordAgeInSeconds (-1: no limit).
    max_record_age_s: int = -1
    #: BisectBatchOnFunctionError.
    bisect_on_error: bool = False
    #: FunctionResponseTypes: [ReportBatchItemFailures].
    report_batch_item_failures: bool = False
    filter: EventFilter = field(default_factory=EventFilter)
    #: The SQS queue of DestinationConfig.OnFailure (None: records given up are only logged).
    on_failure_queue_url: str | None = None
    #: What the on-failure records name as the function.
    function_arn: str = ""
    region: str = "us-east-1"
    #: The pause before the first retry of a failed batch; it doubles with each failure.
    retry_delay_s: float = 0.5

    def __post_init__(self) -> None:
        if self.starting_position not in _STARTING_POSITIONS:
            raise ValueError(
                f"StartingPosition must be TRIM_HORIZON or LATEST, got {self.starting_position!r}"
            )
        if not 1 <= self.batch_size <= 10_000:
            raise ValueError("batch_size must be between 1 and 10000")
        if self.window_s < 0:
            raise ValueError("window_s must not be negative")
        if self.max_retry_attempts < -1:
            raise ValueError("max_retry_attempts must be -1 (for ever) or more")
        if self.max_record_age_s < -1:
            raise ValueError("max_record_age_s must be -1 (no limit) or more")
        if self.retry_delay_s < 0:
            raise ValueError("retry_delay_s must not be negative")

    @classmethod
    def from_event(
        cls,
        properties: Mapping[str, Any],
        queue_urls: Mapping[str, str] | None = None,
        *,
        function_arn: str = "",
        region: str = "",
    ) -> Self:
        """The mapping a template DynamoDB event's Properties describe (intrinsics resolved by
        the caller). ``queue_urls`` maps the ARN of each queue an OnFailure destination may
        name to its URL; the region defaults to the stream ARN's."""
        if properties.get("TumblingWindowInSeconds"):
            raise ValueError("TumblingWindowInSeconds is not supported by the local event source")
        stream_arn = properties.get("Stream")
        if not isinstance(stream_arn, str) or not stream_arn:
            raise ValueError(f"Stream must be a stream ARN, got {stream_arn!r}")
        response_types = properties.get("FunctionResponseTypes") or []
        return cls(
            stream_arn=stream_arn,
            starting_position=str(properties.get("StartingPosition", "")),
            batch_size=int(properties.get("BatchSize", 100)),
            window_s=float(properties.get("MaximumBatchingWindowInSeconds", 0)),
            max_retry_attempts=int(properties.get("MaximumRetryAttempts", -1)),
            max_record_age_s=int(properties.get("MaximumRecordAgeInSeconds", -1)),
            bisect_on_error=_flag(properties.get("BisectBatchOnFunctionError", False)),
            report_batch_item_failures="ReportBatchItemFailures" in response_types,
            filter=EventFilter.from_criteria(properties.get("FilterCriteria")),
            on_failure_queue_url=_on_failure_queue(properties, queue_urls or {}),
            function_arn=function_arn,
            region=region or _arn_region(stream_arn) or "us-east-1",
        )


def _on_failure_queue(properties: Mapping[str, Any], queue_urls: Mapping[str, str]) -> str | None:
    on_failure = (properties.get("DestinationConfig") or {}).get("OnFailure") or {}
    destination = on_failure.get("Destination")
    if destination is None:
        return None
    if destination not in queue_urls:
        raise ValueError(
            f"the OnFailure destination {destination!r} is not a queue of the template "
            "(the local event source sends on-failure records to SQS queues only)"
        )
    return queue_urls[destination]


# ---------------------------------------------------------------------------- records


def _json_attribute(value: Any) -> Any:
    # boto3 hands binary attributes (B, BS) over as bytes; Lambda delivers base64 text.
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Mapping):
        return {key: _json_attribute(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_attribute(item) for item in value]
    return value


def _epoch_seconds(value: Any) -> float:
    # Epoch seconds, rounded down to the second, as DynamoDB Streams documents it.
    seconds = value.timestamp() if isinstance(value, datetime) else float(value)
    return float(math.floor(seconds))


def stream_record(raw: Mapping[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    """The record Lambda delivers for ``raw``, a record as boto3's GetRecords returns it."""
    stream = raw.get("dynamodb") or {}
    dynamodb: dict[str, Any] = {
        "ApproximateCreationDateTime": _epoch_seconds(
            stream.get("ApproximateCreationDateTime", time.time())
        ),
        "Keys": _json_attribute(stream.get("Keys") or {}),
    }
    for image in ("NewImage", "OldImage"):
        if image in stream:
            dynamodb[image] = _json_attribute(stream[image])
    dynamodb |= {
        "SequenceNumber": stream["SequenceNumber"],
        "SizeBytes": stream.get("SizeBytes", 0),
        "StreamViewType": stream.get("StreamViewType", ""),
    }
    record: dict[str, Any] = {
        "eventID": raw.get("eventID", ""),
        "eventName": raw.get("eventName", ""),
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": dynamodb,
        "eventSourceARN": stream_arn,
    }
    if raw.get("userIdentity"):  # set on the deletes of TTL
        record["userIdentity"] = dict(raw["userIdentity"])
    return record


def _sequence(record: Mapping[str, Any]) -> str:
    sequence: str = record["dynamodb"]["SequenceNumber"]
    return sequence


def _iso(seconds: float, milliseconds: bool = False) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    text = moment.isoformat(timespec="milliseconds" if milliseconds else "seconds")
    return text.replace("+00:00", "Z")


# ---------------------------------------------------------------------------- the source


@dataclass(frozen=True)
class StreamBatchOutcome:
    """What became of one batch of a shard."""

    shard_id: str
    #: The batch's sequence numbers, in order.
    records: list[str]
    #: How many of them are done: the checkpoint moved past them.
    done: int
    #: Sequence numbers to be delivered again (the batch is retried from the first of them).
    failed: list[str] = field(default_factory=list)
    #: Sequence numbers given up (retries exhausted, or too old): described to the OnFailure
    #: destination, and the checkpoint moved past them.
    discarded: list[str] = field(default_factory=list)
    #: Why the batch failed.
    error: str | None = None


@dataclass
class _Shard:
    shard_id: str
    parent_id: str | None
    #: Where a shard opened for the first time starts reading (TRIM_HORIZON or LATEST).
    start: str
    iterator: str | None = None
    #: The shard is closed and read to its end (its buffer may still hold records).
    ended: bool = False
    #: The sequence number of the last record done with (None: none yet).
    checkpoint: str | None = None
    #: The sequence number of the last record read.
    last_read: str | None = None
    #: Records read that passed the filter and are not done with yet, in order.
    buffer: list[dict[str, Any]] = field(default_factory=list)
    #: When the oldest record of the buffer was read (the batching window starts then).
    buffered_at: float | None = None
    #: Sizes of the batches left from bisecting a failed batch, the next first.
    segments: list[int] = field(default_factory=list)
    #: Failed attempts of the records at the head of the buffer (MaximumRetryAttempts).
    attempts: int = 0
    #: Invocations with the records at the head of the buffer.
    invocations: int = 0
    #: Whether the last failure was the function's own (an error or a timeout).
    function_error: bool = False
    #: Consecutive failures (the retry pause doubles with each).
    failures: int = 0
    #: Loop time before which the next attempt must not start.
    not_before: float = 0.0

    @property
    def finished(self) -> bool:
        return self.ended and not self.buffer


async def _pause(stop: asyncio.Event | None, seconds: float) -> None:
    """Wait ``seconds``, or less when ``stop`` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class StreamEventSource:
    """Reads one table's stream and invokes a function with its records, the way Lambda does."""

    def __init__(
        self,
        config: StreamEventSourceConfig,
        invoke: Callable[[dict[str, Any]], Awaitable[Any]],
        streams_client: Any,
        sqs_client: Any = None,
        *,
        on_batch: Callable[[StreamBatchOutcome], None] | None = None,
        checkpoints: dict[str, str] | None = None,
    ) -> None:
        """``invoke`` runs the function and returns its response, raising for a failed or
        timed-out invocation; ``streams_client`` is a boto3 DynamoDB Streams client and
        ``sqs_client`` a boto3 SQS client for the OnFailure destination (both called from
        threads); ``on_batch`` is told of every batch's outcome (for a dev console, or a test).

        ``checkpoints`` (shard id -> the last sequence number done with) is where the source
        keeps its position: a source given the map of an earlier one goes on where that one
        stopped, as Lambda's event source mapping keeps its position between invocations,
        instead of reading the stream again from its starting position."""
        self.config = config
        self._invoke = invoke
        self._streams = streams_client
        self._sqs = sqs_client
        self._on_batch = on_batch
        self._shards: dict[str, _Shard] = {}
        self._checkpoints = {} if checkpoints is None else checkpoints
        self._started = False
        # run() starts the source too: a caller's start() and run()'s may overlap.
        self._starting = asyncio.Lock()
        self._described_at = -math.inf

    @property
    def pending(self) -> int:
        """Records read and not done with yet: waiting for their batch to fill, its window to
        pass, or a retry."""
        return sum(len(shard.buffer) for shard in self._shards.values())

    async def start(self) -> None:
        """List the stream's shards and take their starting positions (LATEST: the end of
        each shard now). run() and poll_once() start the source when this was not called."""
        async with self._starting:  # once: a second LATEST taken later would skip records
            if self._started:
                return
            await self._describe(initial=True)
            for shard in self._shards.values():
                if not shard.ended:
                    shard.iterator = await self._open(shard)
            self._started = True

    async def run(self, stop: asyncio.Event) -> None:
        """Read until ``stop`` is set; it is noticed within a poll interval, after the batch
        being invoked (if any) has been handled."""
        config = self.config
        logger.info(
            "reading %s from %s (batch %d, window %.1f s, retries %d)",
            config.stream_arn,
            config.starting_position,
            config.batch_size,
            config.window_s,
            config.max_retry_attempts,
        )
        while not stop.is_set():
            try:
                outcome = await self._poll(stop)
            except Exception:
                logger.exception("reading %s failed; retrying", config.stream_arn)
                self._reopen()
                await _pause(stop, _ERROR_BACKOFF_S)
                continue
            if outcome is None:
                await _pause(stop, _POLL_INTERVAL_S)

    async def poll_once(self) -> StreamBatchOutcome | None:
        """One batch: read the shards until one has records, wait out its batching window and
        any retry pause, invoke, and handle the outcome; None when no shard has records."""
        return await self._poll(None)

    # -- reading ---------------------------------------------------------------------------

    async def _poll(self, stop: asyncio.Event | None) -> StreamBatchOutcome | None:
        try:
            return await self._poll_shards(stop)
        finally:
            self._checkpoints.update(
                {s.shard_id: s.checkpoint for s in self._shards.values() if s.checkpoint}
            )

    async def _poll_shards(self, stop: asyncio.Event | None) -> StreamBatchOutcome | None:
        await self.start()
        if asyncio.get_running_loop().time() - self._described_at >= _DESCRIBE_INTERVAL_S:
            await self._describe(initial=False)
        for shard in self._readable_shards():
            await self._read(shard)
            if not shard.buffer:
                continue
            outcome = await self._handle(shard, stop)
            if outcome is not None:
                self._report(outcome)
                return outcome
        return None

    async def _describe(self, initial: bool) -> None:
        """Learn the stream's shards. At start they begin at the starting position; a shard
        that appears later is new, so all of it is read."""
        request: dict[str, Any] = {"StreamArn": self.config.stream_arn}
        while True:
            response = await asyncio.to_thread(self._streams.describe_stream, **request)
            description = response["StreamDescription"]
            for found in description.get("Shards") or []:
                if found["ShardId"] in self._shards:
                    continue
                closed = "EndingSequenceNumber" in (found.get("SequenceNumberRange") or {})
                start = self.config.starting_position if initial else "TRIM_HORIZON"
                kept = self._checkpoints.get(found["ShardId"])
                self._shards[found["ShardId"]] = _Shard(
                    found["ShardId"],
                    found.get("ParentShardId"),
                    start,
                    # Nothing will come after LATEST on a closed shard read from nowhere.
                    ended=closed and start == "LATEST" and kept is None,
                    checkpoint=kept,
                    last_read=kept,
                )
            if not description.get("LastEvaluatedShardId"):
                break
            request["ExclusiveStartShardId"] = description["LastEvaluatedShardId"]
        self._described_at = asyncio.get_running_loop().time()

    def _readable_shards(self) -> list[_Shard]:
        """The shards with records to come, but not a child whose parent is not done yet:
        Lambda finishes a parent shard before it reads its children."""
        pending = {s.shard_id for s in self._shards.values() if not s.finished}
        return [
            shard
            for shard in self._shards.values()
            if not shard.finished and shard.parent_id not in pending
        ]

    async def _open(self, shard: _Shard) -> str | None:
        request: dict[str, Any] = {"StreamArn": self.config.stream_arn, "ShardId": shard.shard_id}
        if shard.checkpoint is None:
            request["ShardIteratorType"] = shard.start
        else:
            request |= {
                "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                "SequenceNumber": shard.checkpoint,
            }
        response = await asyncio.to_thread(self._streams.get_shard_iterator, **request)
        iterator: str | None = response.get("ShardIterator")
        return iterator

    def _reopen(self) -> None:
        """After an error: read every shard again from its checkpoint, and list the shards
        again. The records not done with are read again, and still at the head.

        A shard that started at LATEST and has no checkpoint yet can only start at LATEST
        again, so records written between the start and the error would be skipped (Lambda
        keeps the position itself); moto errs here only when it is reset or stopped.
        """
        for shard in self._shards.values():
            shard.iterator = None
            shard.ended = False
            shard.buffer.clear()
            shard.buffered_at = None
            shard.last_read = shard.checkpoint
        self._described_at = -math.inf

    async def _read(self, shard: _Shard) -> None:
        """Add the shard's next records that pass the filter to its buffer."""
        if shard.ended or len(shard.buffer) >= self.config.batch_size:
            return
        if shard.iterator is None:
            shard.iterator = await self._open(shard)
            if shard.iterator is None:
                shard.ended = True
                return
        response = await asyncio.to_thread(
            self._streams.get_records, ShardIterator=shard.iterator, Limit=_MAX_READ
        )
        shard.iterator = response.get("NextShardIterator")
        shard.ended = shard.iterator is None  # a closed shard, read to its end
        for raw in response.get("Records") or []:
            record = stream_record(raw, self.config.stream_arn, self.config.region)
            shard.last_read = _sequence(record)
            if not self.config.filter.matches(record):
                if not shard.buffer:  # nothing before it is pending: Lambda moves past it
                    shard.checkpoint = shard.last_read
                continue
            if not shard.buffer:
                shard.buffered_at = asyncio.get_running_loop().time()
            shard.buffer.append(record)

    # -- a batch ---------------------------------------------------------------------------

    async def _handle(self, shard: _Shard, stop: asyncio.Event | None) -> StreamBatchOutcome | None:
        """Invoke the function with the shard's next batch, and act on the outcome; None when
        it is not time yet (a retry pause or a batching window, while running)."""
        expired = self._expired(shard)
        if expired:
            return await self._give_up(shard, expired, "RecordAgeExceeded", None)
        if not await self._due(shard, stop) or not await self._gathered(shard, stop):
            return None
        size = shard.segments[0] if shard.segments else self.config.batch_size
        return await self._invoke_batch(shard, shard.buffer[:size])

    def _expired(self, shard: _Shard) -> list[dict[str, Any]]:
        """The records at the head of the batch older than MaximumRecordAgeInSeconds."""
        max_age = self.config.max_record_age_s
        if max_age < 0:
            return []
        oldest_kept = time.time() - max_age
        expired = []
        for record in shard.buffer[: self.config.batch_size]:
            if record["dynamodb"]["ApproximateCreationDateTime"] >= oldest_kept:
                break
            expired.append(record)
        return expired

    async def _due(self, shard: _Shard, stop: asyncio.Event | None) -> bool:
        """Whether the retry pause is over; poll_once waits it out, run() comes back later."""
        wait = shard.not_before - asyncio.get_running_loop().time()
        if wait <= 0:
            return True
        if stop is not None:
            return False
        await asyncio.sleep(wait)
        return True

    async def _gathered(self, shard: _Shard, stop: asyncio.Event | None) -> bool:
        """Read on until the batch is full or its window has passed (a retry goes at once)."""
        loop = asyncio.get_running_loop()
        config = self.config
        if config.window_s <= 0 or shard.attempts or shard.segments:
            return True
        deadline = (shard.buffered_at or loop.time()) + config.window_s
        while len(shard.buffer) < config.batch_size and not shard.ended:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await _pause(stop, min(_POLL_INTERVAL_S, remaining))
            if stop is not None and stop.is_set():
                return False
            await self._read(shard)
        return True

    async def _invoke_batch(self, shard: _Shard, batch: list[dict[str, Any]]) -> StreamBatchOutcome:
        sequences = [_sequence(record) for record in batch]
        shard.invocations += 1
        try:
            response = await self._invoke({"Records": batch})
        except InvocationError as exc:  # an error or a timeout
            return await self._batch_failed(shard, batch, str(exc), function_error=True)
        except Exception as exc:
            # The environment could not run it: Lambda retries what it could not invoke
            # until the records expire, without counting attempts.
            logger.exception("%s: the invocation could not run", self.config.stream_arn)
            shard.invocations -= 1
            shard.not_before = asyncio.get_running_loop().time() + _ERROR_BACKOFF_S
            error = f"{type(exc).__name__}: {exc}"
            return StreamBatchOutcome(shard.shard_id, sequences, 0, sequences, error=error)
        if not self.config.report_batch_item_failures:
            return self._batch_done(shard, batch)
        try:
            failed = _reported_failures(response, sequences)
        except _BadResponse as exc:
            return await self._batch_failed(shard, batch, str(exc), function_error=False)
        if not failed:
            return self._batch_done(shard, batch)
        first = min(sequences.index(sequence) for sequence in failed)
        self._advance(shard, first)  # the records before the lowest reported one are done
        error = f"the function reported {sequences[first]} failed"
        return await self._retry_or_give_up(shard, batch, first, error, function_error=False)

    def _batch_done(self, shard: _Shard, batch: list[dict[str, Any]]) -> StreamBatchOutcome:
        self._advance(shard, len(batch))
        self._next_batch(shard)
        return StreamBatchOutcome(shard.shard_id, [_sequence(r) for r in batch], len(batch))

    async def _batch_failed(
        self, shard: _Shard, batch: list[dict[str, Any]], error: str, function_error: bool
    ) -> StreamBatchOutcome:
        sequences = [_sequence(record) for record in batch]
        if self.config.bisect_on_error and len(batch) > 1:
            # The halves are tried in turn, at once, and the split costs no retry.
            half = (len(batch) + 1) // 2
            shard.segments[:1] = [half, len(batch) - half]
            error = f"{error} (the batch is halved)"
            return StreamBatchOutcome(shard.shard_id, sequences, 0, sequences, error=error)
        return await self._retry_or_give_up(shard, batch, 0, error, function_error)

    async def _retry_or_give_up(
        self,
        shard: _Shard,
        batch: list[dict[str, Any]],
        done: int,
        error: str,
        function_error: bool,
    ) -> StreamBatchOutcome:
        """``batch[done:]`` failed: retry it after a pause, or give it up once the retries are
        exhausted."""
        shard.attempts += 1
        shard.function_error = function_error
        left = batch[done:]
        if 0 <= self.config.max_retry_attempts < shard.attempts:
            return await self._give_up(
                shard, left, "RetryAttemptsExhausted", error, done=done, batch=batch
            )
        shard.failures += 1
        delay = self.config.retry_delay_s * 2 ** (shard.failures - 1)
        shard.not_before = asyncio.get_running_loop().time() + min(delay, _MAX_RETRY_DELAY_S)
        return StreamBatchOutcome(
            shard.shard_id,
            [_sequence(record) for record in batch],
            done,
            [_sequence(record) for record in left],
            error=error,
        )

    async def _give_up(
        self,
        shard: _Shard,
        records: list[dict[str, Any]],
        condition: str,
        error: str | None,
        *,
        done: int = 0,
        batch: list[dict[str, Any]] | None = None,
    ) -> StreamBatchOutcome:
        """Describe ``records`` (the head of the buffer) to the OnFailure destination, then
        move past them."""
        await self._send_on_failure(shard, records, condition)
        self._advance(shard, len(records))
        self._next_batch(shard)
        discarded = [_sequence(record) for record in records]
        return StreamBatchOutcome(
            shard.shard_id,
            [_sequence(record) for record in batch] if batch is not None else discarded,
            done,
            discarded=discarded,
            error=error or condition,
        )

    def _advance(self, shard: _Shard, count: int) -> None:
        """Checkpoint past the first ``count`` records of the buffer."""
        if count <= 0:
            return
        last = _sequence(shard.buffer[count - 1])
        del shard.buffer[:count]
        # With nothing pending, the records read after the last one (all filtered out) are
        # done with too.
        shard.checkpoint = last if shard.buffer else shard.last_read
        if not shard.buffer:
            shard.buffered_at = None
        if shard.segments:
            shard.segments[0] -= count

    def _next_batch(self, shard: _Shard) -> None:
        """The batch at the head is over (done or given up): the next one starts afresh."""
        if shard.segments and shard.segments[0] <= 0:
            shard.segments.pop(0)
        shard.attempts = shard.invocations = shard.failures = 0
        shard.function_error = False
        shard.not_before = 0.0

    async def _send_on_failure(
        self, shard: _Shard, records: list[dict[str, Any]], condition: str
    ) -> None:
        config = self.config
        if config.on_failure_queue_url is None or self._sqs is None:
            logger.warning(
                "%s: %d records given up (%s) and dropped: no OnFailure destination",
                config.stream_arn,
                len(records),
                condition,
            )
            return
        body = self._invocation_record(shard, records, condition)
        await asyncio.to_thread(
            self._sqs.send_message,
            QueueUrl=config.on_failure_queue_url,
            MessageBody=json.dumps(body),
        )

    def _invocation_record(
        self, shard: _Shard, records: list[dict[str, Any]], condition: str
    ) -> dict[str, Any]:
        """What Lambda sends an OnFailure destination: where the records are, not the records
        (they stay in the stream for 24 hours)."""
        response: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
        if shard.function_error:
            response["functionError"] = "Unhandled"
        first, last = records[0]["dynamodb"], records[-1]["dynamodb"]
        return {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": self.config.function_arn,
                "condition": condition,
                "approximateInvokeCount": shard.invocations,
            },
            "responseContext": response,
            "version": "1.0",
            "timestamp": _iso(time.time(), milliseconds=True),
            "DDBStreamBatchInfo": {
                "shardId": shard.shard_id,
                "startSequenceNumber": first["SequenceNumber"],
                "endSequenceNumber": last["SequenceNumber"],
                "approximateArrivalOfFirstRecord": _iso(first["ApproximateCreationDateTime"]),
                "approximateArrivalOfLastRecord": _iso(last["ApproximateCreationDateTime"]),
                "batchSize": len(records),
                "streamArn": self.config.stream_arn,
            },
        }

    def _report(self, outcome: StreamBatchOutcome) -> None:
        logger.info(
            "%s %s: batch of %d: %d done, %d to retry, %d given up%s",
            self.config.stream_arn,
            outcome.shard_id,
            len(outcome.records),
            outcome.done,
            len(outcome.failed),
            len(outcome.discarded),
            f" ({outcome.error})" if outcome.error else "",
        )
        if self._on_batch is not None:
            self._on_batch(outcome)
