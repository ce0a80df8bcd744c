"""Publish the messages new work records ask for, from a batch of DynamoDB stream records.

Lambda hands a stream's records over in order and, with ReportBatchItemFailures, starts
again from the first record reported. So the relay reports the first record whose messages
did not all reach their queue (every record after it comes again too): nothing is skipped,
and what is published again carries the same envelope ids, which consumers apply once. A
record that cannot be read is reported like any other failure, so it ends in the stream's
on-failure destination once Lambda's retries are spent, rather than vanishing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from lambdaloop.errors import DependencyError, PublishError
from lambdaloop.outbox import Outgoing, QueueName, messages_for
from lambdaloop.queue import OutgoingMessage
from lambdaloop.store import item_from_image

__all__ = ["Relay"]

logger = logging.getLogger(__name__)


class Queue(Protocol):
    """What the relay needs of :class:`lambdaloop.queue.Publisher`."""

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[str]: ...


class Relay:
    def __init__(self, queues: Mapping[QueueName, Queue]) -> None:
        self._queues = dict(queues)

    async def process(self, event: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
        """The batch's response: the first record not relayed, if any."""
        records = event.get("Records") or []
        planned: list[tuple[str, list[Outgoing]]] = []
        unreadable: str | None = None
        for record in records:
            sequence = str(record.get("dynamodb", {}).get("SequenceNumber", ""))
            try:
                planned.append((sequence, messages_for(_image(record))))
            except (KeyError, TypeError, ValueError) as exc:
                logger.error("stream record %s: not relayed, malformed: %s", sequence, exc)
                unreadable = sequence
                break  # Lambda counts the records before a reported one as done: send those
        failed = await self._publish([out for _, outs in planned for out in outs])
        for sequence, outs in planned:
            if any(out.message.envelope.id in failed for out in outs):
                return _failed_at(sequence)
        return _failed_at(unreadable) if unreadable is not None else {"batchItemFailures": []}

    async def _publish(self, outgoing: list[Outgoing]) -> set[str]:
        """Publish to every queue at once; the envelope ids that may not have arrived."""
        by_queue: dict[QueueName, dict[str, OutgoingMessage]] = {}
        for out in outgoing:
            # One id per message: a record seen twice in a batch is relayed once.
            by_queue.setdefault(out.queue, {}).setdefault(out.message.envelope.id, out.message)
        queues = list(by_queue)
        results = await asyncio.gather(
            *(self._queues[q].publish_many(list(by_queue[q].values())) for q in queues),
            return_exceptions=True,
        )
        failed: set[str] = set()
        for queue, result in zip(queues, results, strict=True):
            if isinstance(result, PublishError):
                failed.update(result.failed)
            elif isinstance(result, DependencyError):
                # Some batches of this queue may have gone: all are published again.
                logger.warning("relay to the %s queue failed: %s", queue, result)
                failed.update(by_queue[queue])
            elif isinstance(result, BaseException):
                raise result
        return failed


def _image(record: Mapping[str, Any]) -> dict[str, Any]:
    image = record["dynamodb"]["NewImage"]
    if not isinstance(image, Mapping):
        raise TypeError("dynamodb.NewImage: expected a map")
    return item_from_image(image)


def _failed_at(sequence: str) -> dict[str, list[dict[str, str]]]:
    return {"batchItemFailures": [{"itemIdentifier": sequence}]}
