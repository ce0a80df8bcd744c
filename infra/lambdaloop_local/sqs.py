"""Lambda's SQS event source mapping, locally: pollers that turn queue messages into invocations.

What AWS does, reproduced against moto:

- up to ``max_concurrency`` pollers (ScalingConfig.MaximumConcurrency), each receiving a batch of
  up to ``batch_size`` messages, gathered for at most ``window_s``
  (MaximumBatchingWindowInSeconds), with long polling;
- one invocation per batch, with the event in the exact shape Lambda delivers
  (``sam local generate-event sqs receive-message``);
- a failed invocation (an error or a timeout) deletes nothing: the batch comes back after the
  queue's visibility timeout, and SQS itself moves a message to the DLQ after maxReceiveCount;
- a successful invocation deletes the batch, or, with ReportBatchItemFailures, all but the
  messages the function lists in ``batchItemFailures``. A response Lambda cannot read (an empty,
  null, missing or unknown ``itemIdentifier``, a malformed list) fails the whole batch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from lambdaloop_local.functions import InvocationError

__all__ = ["BatchOutcome", "SqsEventSource", "SqsEventSourceConfig", "sqs_event"]

logger = logging.getLogger(__name__)

#: SQS hands out at most 10 messages per ReceiveMessage and deletes at most 10 per batch call.
_SQS_MAX_MESSAGES = 10
#: Long polling per ReceiveMessage: short, so a poller notices ``stop`` within about a second.
_POLL_WAIT_S = 1
#: Pause after an unexpected error (the endpoint is down, the queue was deleted) before retrying.
_ERROR_BACKOFF_S = 1.0
#: The system attributes a Lambda record carries (the last five only when SQS sets them).
_RECORD_ATTRIBUTES = (
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
    "SequenceNumber",
    "MessageGroupId",
    "MessageDeduplicationId",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
)


@dataclass(frozen=True)
class SqsEventSourceConfig:
    """One SQS event of a function (an event source mapping)."""

    queue_url: str
    queue_arn: str
    batch_size: int = 10
    #: MaximumBatchingWindowInSeconds.
    window_s: float = 0.0
    #: ScalingConfig.MaximumConcurrency (AWS's minimum is 2).
    max_concurrency: int = 2
    #: FunctionResponseTypes: [ReportBatchItemFailures].
    report_batch_item_failures: bool = False
    region: str = "us-east-1"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.window_s < 0:
            raise ValueError("window_s must not be negative")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")

    @classmethod
    def from_event(
        cls, properties: Mapping[str, Any], queue_url: str, queue_arn: str, region: str = ""
    ) -> Self:
        """The mapping described by a template SQS event's Properties (Queue is resolved by
        the caller into ``queue_url`` and ``queue_arn``); the region defaults to the ARN's.

        ProvisionedPollerConfig (Lambda's provisioned mode) is accepted and ignored, and says
        so: it sets how fast AWS scales its pollers, which has no local meaning; the local
        pollers stay ScalingConfig's (2 without it, as AWS's smallest MaximumConcurrency).
        """
        if pollers := properties.get("ProvisionedPollerConfig"):
            logger.info(
                "SQS event source of %s: ProvisionedPollerConfig %s is ignored locally "
                "(provisioned mode only changes how AWS scales its pollers)",
                queue_arn,
                pollers,
            )
        scaling = properties.get("ScalingConfig") or {}
        response_types = properties.get("FunctionResponseTypes") or []
        return cls(
            queue_url=queue_url,
            queue_arn=queue_arn,
            batch_size=int(properties.get("BatchSize", 10)),
            window_s=float(properties.get("MaximumBatchingWindowInSeconds", 0)),
            max_concurrency=int(scaling.get("MaximumConcurrency", 2)),
            report_batch_item_failures="ReportBatchItemFailures" in response_types,
            region=region or _arn_region(queue_arn) or "us-east-1",
        )


def _arn_region(arn: str) -> str:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 else ""


@dataclass(frozen=True)
class BatchOutcome:
    """What became of one batch."""

    received: int
    deleted: int
    #: Message ids left in the queue for redelivery.
    failed: list[str] = field(default_factory=list)
    #: Why the whole batch failed (the invocation's error, or an unreadable response).
    error: str | None = None


def sqs_event(
    messages: Sequence[Mapping[str, Any]], config: SqsEventSourceConfig
) -> dict[str, Any]:
    """The event Lambda delivers for ``messages`` (as boto3's ReceiveMessage returns them)."""
    return {"Records": [_record(message, config) for message in messages]}


def _record(message: Mapping[str, Any], config: SqsEventSourceConfig) -> dict[str, Any]:
    attributes = message.get("Attributes") or {}
    message_attributes = message.get("MessageAttributes") or {}
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": {
            name: str(attributes[name]) for name in _RECORD_ATTRIBUTES if name in attributes
        },
        "messageAttributes": {
            name: _message_attribute(value) for name, value in message_attributes.items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
    }
    if message.get("MD5OfMessageAttributes"):
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    record |= {
        "eventSource": "aws:sqs",
        "eventSourceARN": config.queue_arn,
        "awsRegion": config.region,
    }
    return record


def _message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    # boto3 gives PascalCase keys and bytes; Lambda delivers camelCase and base64 text.
    attribute: dict[str, Any] = {}
    if "StringValue" in value:
        attribute["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        attribute["binaryValue"] = _base64(value["BinaryValue"])
    attribute["stringListValues"] = list(value.get("StringListValues") or [])
    attribute["binaryListValues"] = [_base64(v) for v in value.get("BinaryListValues") or []]
    attribute["dataType"] = value.get("DataType", "String")
    return attribute


def _base64(value: bytes | str) -> str:
    if isinstance(value, str):
        value = value.encode()
    return base64.b64encode(value).decode("ascii")


class _BadResponse(Exception):
    """The function's batch response is one Lambda treats as a failure of the whole batch."""


def _reported_failures(response: Any, message_ids: Sequence[str]) -> list[str]:
    """The ids a ReportBatchItemFailures response keeps in the queue (raises _BadResponse)."""
    if response is None or response == {}:
        return []
    if not isinstance(response, Mapping):
        raise _BadResponse(f"the response is not an object: {response!r:.200}")
    failures = response.get("batchItemFailures")
    if failures is None:
        return []
    if not isinstance(failures, list):
        raise _BadResponse(f"batchItemFailures is not a list: {failures!r:.200}")
    known = set(message_ids)
    failed: list[str] = []
    for failure in failures:
        if not isinstance(failure, Mapping):
            raise _BadResponse(f"a batchItemFailures entry is not an object: {failure!r:.200}")
        identifier = failure.get("itemIdentifier")
        if not isinstance(identifier, str) or identifier not in known:
            raise _BadResponse(f"itemIdentifier is not a message of the batch: {identifier!r:.200}")
        if identifier not in failed:
            failed.append(identifier)
    return failed


class SqsEventSource:
    """Polls one queue and invokes a function with its messages, the way Lambda does."""

    def __init__(
        self,
        config: SqsEventSourceConfig,
        invoke: Callable[[dict[str, Any]], Awaitable[Any]],
        sqs_client: Any,
        *,
        on_batch: Callable[[BatchOutcome], None] | None = None,
    ) -> None:
        """``invoke`` runs the function and returns its response, raising for a failed or
        timed-out invocation; ``sqs_client`` is a boto3 SQS client (called from threads);
        ``on_batch`` is told of every batch's outcome (for a dev console, or a test)."""
        self.config = config
        self._invoke = invoke
        self._sqs = sqs_client
        self._on_batch = on_batch

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set. A poller notices it within about a second, after the
        batch it is invoking (if any) has been handled."""
        logger.info(
            "polling %s (batch %d, window %.1f s, concurrency %d)",
            self.config.queue_arn,
            self.config.batch_size,
            self.config.window_s,
            self.config.max_concurrency,
        )
        async with asyncio.TaskGroup() as pollers:
            for _ in range(self.config.max_concurrency):
                pollers.create_task(self._poller(stop))

    async def _poller(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._poll(stop)
            except Exception:
                logger.exception("polling %s failed; retrying", self.config.queue_arn)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _ERROR_BACKOFF_S)

    async def poll_once(self) -> BatchOutcome | None:
        """One receive, invoke and clean-up cycle; None when the queue gave nothing."""
        return await self._poll(None)

    async def _poll(self, stop: asyncio.Event | None) -> BatchOutcome | None:
        messages = await self._receive_batch(stop)
        if not messages:
            return None
        outcome = await self._handle(messages)
        logger.info(
            "%s: batch of %d: %d deleted, %d failed%s",
            self.config.queue_arn,
            outcome.received,
            outcome.deleted,
            len(outcome.failed),
            f" ({outcome.error})" if outcome.error else "",
        )
        if self._on_batch is not None:
            self._on_batch(outcome)
        return outcome

    async def _receive_batch(self, stop: asyncio.Event | None) -> list[dict[str, Any]]:
        config = self.config
        loop = asyncio.get_running_loop()
        messages = await self._receive(min(_SQS_MAX_MESSAGES, config.batch_size), _POLL_WAIT_S)
        deadline = loop.time() + config.window_s
        while len(messages) < config.batch_size and (stop is None or not stop.is_set()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            wanted = min(_SQS_MAX_MESSAGES, config.batch_size - len(messages))
            wait = min(_POLL_WAIT_S, math.ceil(remaining))
            messages += await self._receive(wanted, wait)
        return messages

    async def _receive(self, count: int, wait_s: int) -> list[dict[str, Any]]:
        response = await asyncio.to_thread(
            self._sqs.receive_message,
            QueueUrl=self.config.queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=wait_s,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = response.get("Messages") or []
        return messages

    async def _handle(self, messages: list[dict[str, Any]]) -> BatchOutcome:
        ids = [message["MessageId"] for message in messages]
        try:
            response = await self._invoke(sqs_event(messages, self.config))
        except InvocationError as exc:  # an error or a timeout: every message comes back
            return BatchOutcome(len(messages), 0, ids, str(exc))
        except Exception as exc:  # the environment could not run it: the same for the queue
            logger.exception("%s: the invocation could not run", self.config.queue_arn)
            return BatchOutcome(len(messages), 0, ids, f"{type(exc).__name__}: {exc}")
        failed: list[str] = []
        if self.config.report_batch_item_failures:
            try:
                failed = _reported_failures(response, ids)
            except _BadResponse as exc:
                return BatchOutcome(len(messages), 0, ids, str(exc))
        done = [message for message in messages if message["MessageId"] not in failed]
        await self._delete(done)
        return BatchOutcome(len(messages), len(done), failed)

    async def _delete(self, messages: Sequence[Mapping[str, Any]]) -> None:
        for start in range(0, len(messages), _SQS_MAX_MESSAGES):
            chunk = messages[start : start + _SQS_MAX_MESSAGES]
            entries = [
                {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                for index, message in enumerate(chunk)
            ]
            response = await asyncio.to_thread(
                self._sqs.delete_message_batch, QueueUrl=self.config.queue_url, Entries=entries
            )
            for failure in response.get("Failed") or []:
                logger.warning(
                    "%s: could not delete a message: %s",
                    self.config.queue_arn,
                    failure.get("Message") or failure.get("Code"),
                )
