"""An async SQS publisher: JSON envelopes in, batched ``SendMessageBatch`` calls out.

A message body is an :class:`Envelope`, ``{"type": ..., "id": ..., "version": 1,
"payload": {...}}``; the correlation id travels in the ``correlation_id`` message attribute.
Consumers are idempotent by envelope ``id``, so publishing a message twice is harmless.

boto3 blocks, so every call runs in the layer's bounded thread pool
(:func:`~lambdaloop.clients.run_blocking`); the client is built on first use, in that pool,
unless one is injected. boto3 itself is imported by the first call, not by this module.

:meth:`Publisher.publish_many` cuts its messages into batches of at most 10 entries and
256 KiB of bodies and attributes (SQS's limits, counted the way SQS counts them), sends the
batches concurrently (one after the other on a FIFO queue, where concurrent batches would
interleave a group) and retries the entries SQS failed on its side (``SenderFault`` false)
with capped exponential backoff and full jitter. On a FIFO queue a retried entry lands after
the entries of its batch that went through at once: order within a group holds only for
messages that did not need a retry. Entries refused as the sender's fault are
not retried. Whatever is still not published once every batch has finished raises
:class:`~lambdaloop.errors.PublishError` naming each envelope id; the other messages were
published. A batch call that fails outright is translated at this edge
(:class:`~lambdaloop.errors.DependencyUnavailable` for lost connections and throttling,
:class:`~lambdaloop.errors.DependencyTimeout`, any other service error
:class:`~lambdaloop.errors.DependencyError`) and the first such error is raised once every
batch has finished (on a FIFO queue at once: later batches are not sent); other batches
may have been published.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from lambdaloop._aws import AwsAdapter
from lambdaloop.backoff import Backoff
from lambdaloop.errors import (
    PublishError,
)

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ENTRIES",
    "MAX_DELAY_S",
    "Envelope",
    "OutgoingMessage",
    "Publisher",
]

logger = logging.getLogger(__name__)

#: SQS limits: entries per SendMessageBatch, bytes of bodies + attributes per message and
#: per batch, per-message delay.
MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 262_144
MAX_DELAY_S = 900

#: The envelope format this code writes and accepts.
_VERSION = 1
_MAX_ID_LENGTH = 128
_FIELDS = frozenset({"type", "id", "version", "payload"})
_CORRELATION_ATTRIBUTE = "correlation_id"
#: Retries of what a batch call left undone: 50 ms, doubling up to 1 s, full jitter.
_BACKOFF = Backoff(0.05, 1.0)


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Envelope:
    """One queue message body: what happened (``type``), its identity (``id``, which
    consumers deduplicate on) and its data (``payload``, a JSON object).

    Construction checks the fields (``ValueError`` naming the field); :meth:`from_json`
    checks a received body the same way.
    """

    type: str
    id: str
    payload: dict[str, Any]
    version: int = _VERSION

    def __post_init__(self) -> None:
        _check_fields(self.type, self.id, self.version, self.payload)

    def to_json(self) -> str:
        """The message body: compact JSON, ASCII only (any character is safe in SQS)."""
        return json.dumps(
            {"type": self.type, "id": self.id, "version": self.version, "payload": self.payload},
            separators=(",", ":"),
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, body: str | bytes) -> Envelope:
        """Parse and validate a received body; ``ValueError`` naming what is wrong.

        The body must be a JSON object with exactly the envelope's fields: ``type`` a
        non-empty string, ``id`` a non-empty string of at most 128 characters, ``version``
        the integer 1 and ``payload`` an object.
        """
        try:
            text = body.decode() if isinstance(body, bytes) else body
            data = json.loads(text)
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
            raise ValueError(f"body: not a UTF-8 JSON document ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"body: expected a JSON object, got {type(data).__name__}")
        if data.keys() != _FIELDS:
            if missing := sorted(_FIELDS - data.keys()):
                raise ValueError(f"{missing[0]}: missing (missing fields: {', '.join(missing)})")
            unknown = sorted(data.keys() - _FIELDS)
            raise ValueError(f"{unknown[0]}: unexpected field (unexpected: {', '.join(unknown)})")
        # The constructor checks the values (once).
        return cls(
            type=data["type"], id=data["id"], payload=data["payload"], version=data["version"]
        )


def _check_fields(type_: object, id_: object, version: object, payload: object) -> None:
    if not isinstance(type_, str) or not type_:
        raise ValueError(f"type: expected a non-empty string, got {type_!r}")
    if not isinstance(id_, str) or not 0 < len(id_) <= _MAX_ID_LENGTH:
        raise ValueError(
            f"id: expected a non-empty string of at most {_MAX_ID_LENGTH} characters, "
            f"got {id_!r:.40}"
        )
    if type(version) is not int or version != _VERSION:  # bool is not a version
        raise ValueError(f"version: expected {_VERSION}, got {version!r}")
    if not isinstance(payload, dict):
        raise ValueError(f"payload: expected a JSON object, got {type(payload).__name__}")


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """An envelope and how to send it.

    ``delay_s`` (0 to 900) hides the message that long after it is sent; FIFO queues take
    no per-message delay. ``group_id`` is required on a FIFO queue, which keeps the
    messages of one group in order; ``deduplication_id`` defaults to the envelope id there.
    ``correlation_id`` goes into the ``correlation_id`` message attribute.
    """

    envelope: Envelope
    delay_s: int = 0
    group_id: str | None = None
    deduplication_id: str | None = None
    correlation_id: str | None = None

    def __post_init__(self) -> None:
        if type(self.delay_s) is not int or not 0 <= self.delay_s <= MAX_DELAY_S:
            raise ValueError(
                f"delay_s: expected an integer from 0 to {MAX_DELAY_S}, got {self.delay_s!r}"
            )
        for name in ("group_id", "deduplication_id", "correlation_id"):
            if getattr(self, name) == "":
                raise ValueError(f"{name}: must not be empty (use None)")


class _Entry(NamedTuple):
    """A SendMessageBatch entry (without its ``Id``) and what it weighs."""

    envelope_id: str
    request: dict[str, Any]
    size: int


# ----------------------------------------------------------------------------- publisher


class Publisher(AwsAdapter):
    """Publishes envelopes to one SQS queue, from async code.

    ``client`` is a boto3 SQS client; by default the environment's
    (:func:`~lambdaloop.clients.aws_client`), built on first use. A queue URL ending in
    ``.fifo`` is a FIFO queue. Entries SQS failed are sent again, ``max_attempts`` calls in
    all, ``sleep``-ing ``backoff.delay(n)`` before retry ``n``.
    """

    def __init__(
        self,
        queue_url: str,
        *,
        client: Any = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_attempts: int = 5,
        backoff: Backoff = _BACKOFF,
    ) -> None:
        if not queue_url:
            raise ValueError("queue_url must not be empty")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.queue_url = queue_url
        self.fifo = queue_url.endswith(".fifo")
        super().__init__(client)
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._backoff = backoff

    service = "sqs"

    def __repr__(self) -> str:
        return f"Publisher({self.queue_url!r})"

    async def publish(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        id: str | None = None,
        delay_s: int = 0,
        group_id: str | None = None,
        deduplication_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Publish one envelope (its ``id`` a random UUID unless given); its id."""
        envelope = Envelope(type=type, id=uuid.uuid4().hex if id is None else id, payload=payload)
        message = OutgoingMessage(envelope, delay_s, group_id, deduplication_id, correlation_id)
        (published,) = await self.publish_many([message])
        return published

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Publish ``messages``; their envelope ids, in order.

        Every message is checked before anything is sent (``ValueError``): envelope ids
        unique within the call, no message over 256 KiB, the FIFO rules. Messages that could
        not be published raise :class:`~lambdaloop.errors.PublishError` at the end.
        """
        entries = [self._entry(message) for message in messages]
        ids = [entry.envelope_id for entry in entries]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"envelope id(s) appear more than once: {', '.join(twice)}")
        batches = _batches(entries)
        results: list[dict[str, str] | BaseException]
        if self.fifo:  # one batch after the other, or a group's order would be lost
            results = [await self._send_batch(batch) for batch in batches]
        else:
            results = await asyncio.gather(
                *(self._send_batch(batch) for batch in batches), return_exceptions=True
            )
        failed: dict[str, str] = {}
        for result in results:
            if isinstance(result, BaseException):
                raise result
            failed.update(result)
        if failed:
            logger.warning(
                "publish to %s: %d of %d message(s) not published",
                self.queue_url,
                len(failed),
                len(ids),
            )
            raise PublishError({i: failed[i] for i in ids if i in failed})
        return ids

    # ------------------------------------------------------------------- internals

    def _entry(self, message: OutgoingMessage) -> _Entry:
        envelope_id = message.envelope.id
        body = message.envelope.to_json()
        request: dict[str, Any] = {"MessageBody": body}
        size = len(body.encode())
        if message.correlation_id is not None:
            value = message.correlation_id
            request["MessageAttributes"] = {
                _CORRELATION_ATTRIBUTE: {"DataType": "String", "StringValue": value}
            }
            size += sum(len(part.encode()) for part in (_CORRELATION_ATTRIBUTE, "String", value))
        if size > MAX_BATCH_BYTES:
            raise ValueError(
                f"message {envelope_id}: {size} bytes, over the SQS limit of {MAX_BATCH_BYTES}"
            )
        request.update(self._delivery(message))
        return _Entry(envelope_id, request, size)

    def _delivery(self, message: OutgoingMessage) -> dict[str, Any]:
        envelope_id = message.envelope.id
        if not self.fifo:
            if message.group_id is not None or message.deduplication_id is not None:
                raise ValueError(
                    f"message {envelope_id}: group_id and deduplication_id are for FIFO queues"
                )
            return {"DelaySeconds": message.delay_s} if message.delay_s else {}
        if message.group_id is None:
            raise ValueError(f"message {envelope_id}: a FIFO queue needs a group_id")
        if message.delay_s:
            raise ValueError(f"message {envelope_id}: a FIFO queue takes no per-message delay")
        return {
            "MessageGroupId": message.group_id,
            "MessageDeduplicationId": message.deduplication_id or envelope_id,
        }

    async def _send_batch(self, batch: list[_Entry]) -> dict[str, str]:
        """Send one batch, retrying what SQS failed on its side; the envelope ids left
        unpublished, with ``"Code: message"``."""
        pending = {str(index): entry for index, entry in enumerate(batch)}
        refused: dict[str, str] = {}
        reasons: dict[str, str] = {}
        for attempt in range(self._max_attempts):
            if attempt:
                await self._sleep(self._backoff.delay(attempt - 1))
            entries = [{"Id": entry_id, **e.request} for entry_id, e in pending.items()]
            response = await self._call(
                "send_message_batch", QueueUrl=self.queue_url, Entries=entries
            )
            retry, reasons = _outcome(pending, response, refused)
            pending = {entry_id: pending[entry_id] for entry_id in retry}
            if not pending:
                break
        for entry_id, entry in pending.items():
            refused[entry.envelope_id] = reasons[entry_id]
        return refused


# ----------------------------------------------------------------------------- helpers


def _batches(entries: list[_Entry]) -> list[list[_Entry]]:
    """Cut ``entries``, in order, into batches within both SQS batch limits."""
    batches: list[list[_Entry]] = []
    current: list[_Entry] = []
    size = 0
    for entry in entries:
        if current and (len(current) == MAX_BATCH_ENTRIES or size + entry.size > MAX_BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry.size
    if current:
        batches.append(current)
    return batches


def _outcome(
    pending: Mapping[str, _Entry], response: Mapping[str, Any], refused: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The entry ids to retry and why each failed; sender faults go into ``refused``."""
    succeeded = {str(s.get("Id")) for s in response.get("Successful", [])}
    reported = {str(f.get("Id")): f for f in response.get("Failed", [])}
    retry: list[str] = []
    reasons: dict[str, str] = {}
    for entry_id, entry in pending.items():
        if entry_id in succeeded:
            continue
        failure = reported.get(entry_id)
        if failure is None:
            reasons[entry_id] = "Missing: SQS returned no result for this entry"
            retry.append(entry_id)
            continue
        reason = f"{failure.get('Code', 'Unknown')}: {failure.get('Message', '')}"
        if failure.get("SenderFault"):
            refused[entry.envelope_id] = reason
        else:
            reasons[entry_id] = reason
            retry.append(entry_id)
    return retry, reasons
