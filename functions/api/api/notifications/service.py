"""Notify a user: store the notification (queued), then publish it for the notify function.

The record is written before the message is sent, so the consumer always finds it; if the
message cannot be sent, the record says failed and the client gets a 503 (nothing is left
queued that will never be delivered).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from api.errors import NotFound
from api.notifications.repository import NotificationsRepository, public
from lambdaloop.errors import DependencyError, DependencyUnavailable, PublishError
from lambdaloop.notifications import Delivery
from lambdaloop.queue import OutgoingMessage, Publisher
from lambdaloop.store import utc_timestamp

__all__ = ["NotificationsService"]

logger = logging.getLogger(__name__)


class Users(Protocol):
    async def get(self, tenant: str, user_id: int) -> dict[str, Any]: ...


class NotificationsService:
    def __init__(
        self,
        repository: NotificationsRepository,
        users: Users,
        queue: Publisher,
        *,
        retention_s: int,
        clock: Callable[[], str] = utc_timestamp,
    ) -> None:
        self.repository = repository
        self._users = users
        self._queue = queue
        self._retention_s = retention_s
        self._clock = clock

    async def notify(
        self, tenant: str, user_id: int, message: str, correlation_id: str | None
    ) -> str:
        """Queue ``message`` for the user; the notification's id. NotFound for no user."""
        user = await self._users.get(tenant, user_id)
        notification_id = uuid.uuid4().hex
        now = self._clock()
        webhook = user.get("webhook_url")
        item: dict[str, Any] = {
            "id": notification_id,
            "user_id": user_id,
            "channel": "webhook" if webhook else "inbox",
            "message": message,
            "status": "queued",
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "expires_at": int(time.time()) + self._retention_s,
        }
        if webhook:
            item["webhook_url"] = webhook  # the address when notified, not when delivered
        await self.repository.create(tenant, item)
        try:
            envelope = Delivery(tenant, notification_id).envelope(user_id)
            await self._queue.publish_many(
                [OutgoingMessage(envelope, correlation_id=correlation_id)]
            )
        except (PublishError, DependencyError) as exc:
            await self._give_up(tenant, notification_id)
            raise DependencyUnavailable("sqs", f"notification not queued: {exc}") from exc
        return notification_id

    async def _give_up(self, tenant: str, notification_id: str) -> None:
        try:
            await self.repository.not_queued(tenant, notification_id, self._clock(), "not queued")
        except Exception:
            # The client hears 503 either way; the record stays queued until it expires.
            logger.exception("notification %s: could not mark it failed", notification_id)

    async def get(self, tenant: str, notification_id: str) -> dict[str, Any]:
        item = await self.repository.get(tenant, notification_id)
        if item is None:
            raise NotFound(f"Notification {notification_id} does not exist")
        return public(item)

    async def inbox(
        self, tenant: str, user_id: int, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The user's notifications, newest first (NotFound for no user)."""
        await self._users.get(tenant, user_id)
        items, next_cursor = await self.repository.for_user(tenant, user_id, limit, cursor)
        return [public(item) for item in items], next_cursor
