"""An in-memory SQS client behind boto3's interface, on a clock the test moves.

What :class:`~lambdaloop_local.sqs.SqsEventSource`, the consumer and a producer use of a
boto3 SQS client, with boto3's method names, keyword arguments and response shapes, and
SQS's rules for a standard queue:

- a received message is invisible for the queue's VisibilityTimeout (or the receive's own),
  then visible again with a new receipt handle and ApproximateReceiveCount one higher;
- only the receipt handle of the latest receive deletes a message or changes its visibility;
  deleting with an older one succeeds and deletes nothing (as the DeleteMessage reference
  says), an unknown one is ReceiptHandleIsInvalid;
- with a RedrivePolicy, a message received maxReceiveCount times is moved to the dead-letter
  queue by the next receive that finds it visible (same MessageId and body, with
  DeadLetterQueueSourceArn), instead of being delivered again (moto does the same);
- DelaySeconds hides a new message that long.

Time is ``clock()`` (epoch seconds, never read from the system): nothing changes unless the
test moves the clock. ``WaitTimeSeconds`` is accepted and not honoured: a receive answers at
once, so long polling an empty queue costs no time. Messages are handed out in the order
they were sent (SQS promises no order; this one is simply deterministic). The client may be
called from several threads (the event source calls it from ``asyncio.to_thread``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

__all__ = ["ManualClock", "MemorySqs"]

_MAX_BATCH_ENTRIES = 10
_MAX_VISIBILITY_S = 43_200
_MAX_DELAY_S = 900
_ACCOUNT = "123456789012"
#: The system attributes a receive may ask for by name (or all of them with "All").
_SYSTEM_ATTRIBUTES = (
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "SentTimestamp",
    "SenderId",
    "DeadLetterQueueSourceArn",
)


class ManualClock:
    """Epoch seconds that move only when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.now += seconds


def _error(operation: str, code: str, message: str) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": message}}
    response["ResponseMetadata"] = {"HTTPStatusCode": 400}
    return ClientError(response, operation)


def _millis(seconds: float) -> str:
    return str(int(seconds * 1000))


@dataclass(slots=True)
class _Message:
    message_id: str
    body: str
    sent_at: float
    visible_at: float
    message_attributes: dict[str, Any]
    receive_count: int = 0
    first_received_at: float | None = None
    #: The receipt handle of the latest receive (the only one that deletes).
    receipt_handle: str | None = None
    dead_letter_source_arn: str | None = None

    def in_flight(self, now: float) -> bool:
        return self.receive_count > 0 and self.visible_at > now

    def delayed(self, now: float) -> bool:
        return self.receive_count == 0 and self.visible_at > now

    def view(self, attribute_names: set[str], message_attribute_names: set[str]) -> dict[str, Any]:
        """The message as boto3's ReceiveMessage gives it."""
        assert self.receipt_handle is not None
        attributes = {
            "ApproximateReceiveCount": str(self.receive_count),
            "ApproximateFirstReceiveTimestamp": _millis(self.first_received_at or self.sent_at),
            "SentTimestamp": _millis(self.sent_at),
            "SenderId": _ACCOUNT,
        }
        if self.dead_letter_source_arn is not None:
            attributes["DeadLetterQueueSourceArn"] = self.dead_letter_source_arn
        wanted = set(_SYSTEM_ATTRIBUTES) if "All" in attribute_names else attribute_names
        view: dict[str, Any] = {
            "MessageId": self.message_id,
            "ReceiptHandle": self.receipt_handle,
            "MD5OfBody": hashlib.md5(self.body.encode()).hexdigest(),
            "Body": self.body,
        }
        if selected := {name: value for name, value in attributes.items() if name in wanted}:
            view["Attributes"] = selected
        everything = {"All", ".*"} & message_attribute_names
        if chosen := {
            name: value
            for name, value in self.message_attributes.items()
            if everything or name in message_attribute_names
        }:
            view["MessageAttributes"] = chosen
        return view


@dataclass(slots=True)
class _Queue:
    name: str
    url: str
    arn: str
    visibility_timeout: int
    dead_letter_arn: str | None = None
    max_receive_count: int | None = None
    #: By MessageId, in the order they were sent (or moved here).
    messages: dict[str, _Message] = field(default_factory=dict)
    #: Every receipt handle ever given out, to the MessageId it was given for.
    handles: dict[str, str] = field(default_factory=dict)

    def attributes(self, now: float) -> dict[str, str]:
        messages = self.messages.values()
        attributes = {
            "QueueArn": self.arn,
            "VisibilityTimeout": str(self.visibility_timeout),
            "ApproximateNumberOfMessages": str(sum(m.visible_at <= now for m in messages)),
            "ApproximateNumberOfMessagesNotVisible": str(sum(m.in_flight(now) for m in messages)),
            "ApproximateNumberOfMessagesDelayed": str(sum(m.delayed(now) for m in messages)),
        }
        if self.dead_letter_arn is not None:
            attributes["RedrivePolicy"] = json.dumps(
                {
                    "deadLetterTargetArn": self.dead_letter_arn,
                    "maxReceiveCount": self.max_receive_count,
                }
            )
        return attributes


class MemorySqs:
    """A boto3 SQS client's standard-queue operations, in memory (see the module docstring)."""

    def __init__(self, clock: Callable[[], float], region: str = "us-east-1") -> None:
        self._clock = clock
        self._region = region
        self._queues: dict[str, _Queue] = {}
        self._lock = threading.Lock()
        self._handles = itertools.count(1)

    # ----------------------------------------------------------------------- queues

    def create_queue(
        self, *, QueueName: str, Attributes: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        attributes = dict(Attributes or {})
        url = f"https://sqs.{self._region}.amazonaws.com/{_ACCOUNT}/{QueueName}"
        with self._lock:
            if url in self._queues:
                return {"QueueUrl": url}
            queue = _Queue(
                name=QueueName,
                url=url,
                arn=f"arn:aws:sqs:{self._region}:{_ACCOUNT}:{QueueName}",
                visibility_timeout=int(attributes.get("VisibilityTimeout", 30)),
            )
            if "RedrivePolicy" in attributes:
                policy = json.loads(attributes["RedrivePolicy"])
                target = policy["deadLetterTargetArn"]
                if not any(q.arn == target for q in self._queues.values()):
                    raise _error(
                        "CreateQueue", "InvalidParameterValue", f"no dead-letter queue {target}"
                    )
                queue.dead_letter_arn = target
                queue.max_receive_count = int(policy["maxReceiveCount"])
            self._queues[url] = queue
        return {"QueueUrl": url}

    def get_queue_attributes(
        self, *, QueueUrl: str, AttributeNames: Sequence[str] = ("All",)
    ) -> dict[str, Any]:
        with self._lock:
            attributes = self._queue(QueueUrl, "GetQueueAttributes").attributes(self._clock())
        if "All" not in AttributeNames:
            attributes = {k: v for k, v in attributes.items() if k in AttributeNames}
        return {"Attributes": attributes}

    def _queue(self, url: str, operation: str) -> _Queue:
        queue = self._queues.get(url)
        if queue is None:
            raise _error(
                operation,
                "AWS.SimpleQueueService.NonExistentQueue",
                "The specified queue does not exist.",
            )
        return queue

    # ---------------------------------------------------------------------- sending

    def send_message(
        self,
        *,
        QueueUrl: str,
        MessageBody: str,
        DelaySeconds: int = 0,
        MessageAttributes: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            queue = self._queue(QueueUrl, "SendMessage")
            message = self._add(queue, MessageBody, DelaySeconds, MessageAttributes, "SendMessage")
        return {
            "MessageId": message.message_id,
            "MD5OfMessageBody": hashlib.md5(MessageBody.encode()).hexdigest(),
        }

    def send_message_batch(
        self, *, QueueUrl: str, Entries: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        _check_batch("SendMessageBatch", Entries)
        successful = []
        with self._lock:
            queue = self._queue(QueueUrl, "SendMessageBatch")
            for entry in Entries:
                body = entry["MessageBody"]
                message = self._add(
                    queue,
                    body,
                    entry.get("DelaySeconds", 0),
                    entry.get("MessageAttributes"),
                    "SendMessageBatch",
                )
                successful.append(
                    {
                        "Id": entry["Id"],
                        "MessageId": message.message_id,
                        "MD5OfMessageBody": hashlib.md5(body.encode()).hexdigest(),
                    }
                )
        return {"Successful": successful, "Failed": []}

    def _add(
        self,
        queue: _Queue,
        body: str,
        delay_s: int,
        message_attributes: Mapping[str, Any] | None,
        operation: str,
    ) -> _Message:
        if not 0 <= delay_s <= _MAX_DELAY_S:
            raise _error(operation, "InvalidParameterValue", f"DelaySeconds {delay_s}")
        now = self._clock()
        message = _Message(
            message_id=str(uuid.uuid4()),
            body=body,
            sent_at=now,
            visible_at=now + delay_s,
            message_attributes=dict(message_attributes or {}),
        )
        queue.messages[message.message_id] = message
        return message

    # -------------------------------------------------------------------- receiving

    def receive_message(
        self,
        *,
        QueueUrl: str,
        MaxNumberOfMessages: int = 1,
        WaitTimeSeconds: int = 0,
        VisibilityTimeout: int | None = None,
        AttributeNames: Iterable[str] = (),
        MessageSystemAttributeNames: Iterable[str] = (),
        MessageAttributeNames: Iterable[str] = (),
    ) -> dict[str, Any]:
        if not 1 <= MaxNumberOfMessages <= _MAX_BATCH_ENTRIES:
            raise _error(
                "ReceiveMessage",
                "InvalidParameterValue",
                f"MaxNumberOfMessages {MaxNumberOfMessages}",
            )
        if not 0 <= WaitTimeSeconds <= 20:
            raise _error(
                "ReceiveMessage", "InvalidParameterValue", f"WaitTimeSeconds {WaitTimeSeconds}"
            )
        attribute_names = {*AttributeNames, *MessageSystemAttributeNames}
        message_attribute_names = set(MessageAttributeNames)
        with self._lock:
            queue = self._queue(QueueUrl, "ReceiveMessage")
            now = self._clock()
            visibility = (
                queue.visibility_timeout if VisibilityTimeout is None else VisibilityTimeout
            )
            received: list[dict[str, Any]] = []
            for message in list(queue.messages.values()):
                if len(received) == MaxNumberOfMessages:
                    break
                if message.visible_at > now:
                    continue
                if self._redrive(queue, message, now):
                    continue
                message.receive_count += 1
                if message.first_received_at is None:
                    message.first_received_at = now
                message.visible_at = now + visibility
                message.receipt_handle = f"{message.message_id}#{next(self._handles)}"
                queue.handles[message.receipt_handle] = message.message_id
                received.append(message.view(attribute_names, message_attribute_names))
        # boto3 leaves "Messages" out when there are none.
        return {"Messages": received} if received else {}

    def _redrive(self, queue: _Queue, message: _Message, now: float) -> bool:
        """Move ``message`` to the dead-letter queue if it was received maxReceiveCount times."""
        if queue.max_receive_count is None or message.receive_count < queue.max_receive_count:
            return False
        [target] = [q for q in self._queues.values() if q.arn == queue.dead_letter_arn]
        del queue.messages[message.message_id]
        message.visible_at = now
        message.receipt_handle = None
        message.dead_letter_source_arn = queue.arn
        target.messages[message.message_id] = message
        return True

    # --------------------------------------------------------- deleting, visibility

    def delete_message(self, *, QueueUrl: str, ReceiptHandle: str) -> dict[str, Any]:
        with self._lock:
            self._delete(self._queue(QueueUrl, "DeleteMessage"), ReceiptHandle, "DeleteMessage")
        return {}

    def delete_message_batch(
        self, *, QueueUrl: str, Entries: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        _check_batch("DeleteMessageBatch", Entries)
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        with self._lock:
            queue = self._queue(QueueUrl, "DeleteMessageBatch")
            for entry in Entries:
                try:
                    self._delete(queue, entry["ReceiptHandle"], "DeleteMessageBatch")
                except ClientError as exc:
                    failed.append(
                        {
                            "Id": entry["Id"],
                            "SenderFault": True,
                            "Code": exc.response["Error"]["Code"],
                            "Message": exc.response["Error"]["Message"],
                        }
                    )
                else:
                    successful.append({"Id": entry["Id"]})
        response: dict[str, Any] = {"Successful": successful}
        if failed:
            response["Failed"] = failed
        return response

    def _delete(self, queue: _Queue, receipt_handle: str, operation: str) -> None:
        message_id = queue.handles.get(receipt_handle)
        if message_id is None:
            raise _error(
                operation,
                "ReceiptHandleIsInvalid",
                f'The input receipt handle "{receipt_handle}" is not a valid receipt handle.',
            )
        message = queue.messages.get(message_id)
        if message is not None and message.receipt_handle == receipt_handle:
            del queue.messages[message_id]
        # Otherwise already deleted, or received again since: succeeds, deletes nothing.

    def change_message_visibility(
        self, *, QueueUrl: str, ReceiptHandle: str, VisibilityTimeout: int
    ) -> dict[str, Any]:
        operation = "ChangeMessageVisibility"
        if not 0 <= VisibilityTimeout <= _MAX_VISIBILITY_S:
            raise _error(
                operation, "InvalidParameterValue", f"VisibilityTimeout {VisibilityTimeout}"
            )
        with self._lock:
            queue = self._queue(QueueUrl, operation)
            now = self._clock()
            message_id = queue.handles.get(ReceiptHandle)
            if message_id is None:
                raise _error(operation, "ReceiptHandleIsInvalid", f"{ReceiptHandle} is not valid")
            message = queue.messages.get(message_id)
            if (
                message is None
                or message.receipt_handle != ReceiptHandle
                or not message.in_flight(now)
            ):
                raise _error(
                    operation,
                    "AWS.SimpleQueueService.MessageNotInflight",
                    f"message {message_id} is not in flight under this receipt handle",
                )
            message.visible_at = now + VisibilityTimeout
        return {}


def _check_batch(operation: str, entries: Sequence[Mapping[str, Any]]) -> None:
    if not entries:
        raise _error(operation, "AWS.SimpleQueueService.EmptyBatchRequest", "no entries")
    if len(entries) > _MAX_BATCH_ENTRIES:
        raise _error(
            operation,
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
            f"{len(entries)} entries, at most {_MAX_BATCH_ENTRIES}",
        )
    if len({entry["Id"] for entry in entries}) != len(entries):
        raise _error(operation, "AWS.SimpleQueueService.BatchEntryIdsNotDistinct", "ids repeat")
