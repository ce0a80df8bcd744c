"""Deliver one notification: to the user's webhook (signed), or to the inbox when there is
none, and keep its record (status, attempts, error) true.

- 2xx: delivered. A 4xx other than 408/429 (or a 3xx): failed for good, the message is done.
- 408, 429, 5xx, a timeout, a lost connection: :class:`~lambdaloop.errors.RetryLater`, so
  the message comes back after a backoff (or the receiver's Retry-After).
- The last attempt (the queue's maxReceiveCount, which the consumer knows) fails the message
  all the same, and the consumer calls :meth:`Deliverer.give_up`, which marks the
  notification failed; SQS then moves the message to the dead-letter queue (for inspection
  and redrive; a redriven message is delivered again, as only delivered is final here).

The message names its tenant; the record is looked up inside that tenant's partition only.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from lambdaloop import webhooks
from lambdaloop.consumer import RecordContext
from lambdaloop.errors import ConditionFailed, RetryLater
from lambdaloop.http_outcome import Verdict
from lambdaloop.messages import Delivery
from lambdaloop.queue import Envelope
from lambdaloop.store import Item, Key, utc_timestamp

__all__ = ["Deliverer"]

logger = logging.getLogger(__name__)


class Records(Protocol):
    """What delivery needs of :class:`lambdaloop.store.Table` (key ``pk``)."""

    async def get(self, key: Key, *, consistent: bool = False) -> Item | None: ...
    async def update(
        self,
        key: Key,
        changes: dict[str, Any],
        *,
        add: dict[str, int | float] | None = None,
        must_exist: bool = True,
        condition: str | None = None,
        names: dict[str, str] | None = None,
        values: dict[str, Any] | None = None,
    ) -> Item: ...


class Secrets(Protocol):
    async def get(self, secret_id: str) -> str: ...


class Deliverer:
    """The handler of ``notification.deliver`` messages."""

    def __init__(
        self,
        records: Records,
        secrets: Secrets,
        session: Callable[[], aiohttp.ClientSession],
        *,
        secret_id: str,
        timeout: aiohttp.ClientTimeout,
        clock: Callable[[], str] = utc_timestamp,
    ) -> None:
        self._records = records
        self._secrets = secrets
        self._session = session
        self._secret_id = secret_id
        self._timeout = timeout
        self._clock = clock

    async def __call__(self, envelope: Envelope, context: RecordContext) -> dict[str, Any]:
        return await self._deliver(Delivery.parse(envelope), context.last_attempt)

    async def give_up(self, envelope: Envelope, context: RecordContext, error: Exception) -> None:
        """The last attempt failed (the consumer's hook): the notification is failed."""
        if isinstance(error, RetryLater):
            reason = f"gave up after {context.receive_count} attempts: {error}"
        else:
            reason = f"gave up: {type(error).__name__}"
        await self._fail(Delivery.parse(envelope), reason)

    async def _deliver(self, delivery: Delivery, last: bool) -> dict[str, Any]:
        notification_id = delivery.notification_id
        try:
            record = await self._unless_delivered(
                delivery, {"updated_at": self._clock()}, add={"attempts": 1}
            )
        except ConditionFailed:
            existing = await self._records.get(delivery.key, consistent=True)
            if existing is None:
                logger.warning("notification %s: no record (expired?); dropped", notification_id)
                return {"status": "missing"}
            return {"status": existing["status"]}  # delivered by an earlier attempt
        url = record.get("webhook_url")
        if not url:
            await self._delivered(delivery, None)
            return {"status": "delivered", "channel": "inbox"}
        attempt = await webhooks.post(
            self._session(),
            url,
            _body(record),
            secret=await self._secrets.get(self._secret_id),
            event_id=notification_id,
            client_timeout=self._timeout,
        )
        if attempt.verdict is Verdict.DELIVERED:
            await self._delivered(delivery, attempt.status)
            return {"status": "delivered", "channel": "webhook", "http_status": attempt.status}
        if attempt.verdict is Verdict.REJECTED:
            await self._fail(delivery, f"refused: {attempt.detail}")
            return {"status": "failed", "error": attempt.detail}
        if not last:  # the give-up records the error of the last one
            await self._records.update(
                delivery.key, {"error": attempt.detail, "updated_at": self._clock()}
            )
        raise RetryLater(attempt.detail, attempt.retry_after_s)

    async def _delivered(self, delivery: Delivery, http_status: int | None) -> None:
        now = self._clock()
        changes: dict[str, Any] = {
            "status": "delivered",
            "delivered_at": now,
            "updated_at": now,
            "error": None,
        }
        if http_status is not None:
            changes["http_status"] = http_status
        await self._records.update(delivery.key, changes)

    async def _fail(self, delivery: Delivery, reason: str) -> None:
        with contextlib.suppress(ConditionFailed):  # delivered after all: nothing to mark
            await self._unless_delivered(
                delivery,
                {"status": "failed", "error": reason[:500], "updated_at": self._clock()},
            )
        logger.warning("notification %s failed: %s", delivery.notification_id, reason)

    async def _unless_delivered(
        self,
        delivery: Delivery,
        changes: dict[str, Any],
        add: dict[str, int | float] | None = None,
    ) -> Item:
        """Update the record unless it says delivered (final), else ConditionFailed."""
        return await self._records.update(
            delivery.key,
            changes,
            add=add,
            condition="#status <> :delivered",
            names={"#status": "status"},
            values={":delivered": "delivered"},
        )


def _body(record: Item) -> bytes:
    document = {
        "id": record["id"],
        "type": "notification",
        "user_id": record["user_id"],
        "message": record["message"],
        "created_at": record["created_at"],
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
