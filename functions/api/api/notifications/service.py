"""Notify a user. Notifying is writing the notification's record (``queued``): the table's
stream brings it to the relay function, which publishes it for the notify function
(:mod:`lambdaloop.outbox`), so a stored notification is always delivered, even when this
function dies right after the write. Its id comes from
:func:`api.idempotency.new_record_id`, so a retried request finds the record its first
attempt stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from api.errors import NotFound
from api.notifications.repository import NotificationsRepository, notification_view
from lambdaloop.errors import ConditionFailed
from lambdaloop.store import utc_timestamp

__all__ = ["NotificationsService"]


class Users(Protocol):
    async def get(self, tenant: str, user_id: int) -> dict[str, Any]: ...


class NotificationsService:
    def __init__(
        self,
        repository: NotificationsRepository,
        users: Users,
        *,
        retention_s: int,
        clock: Callable[[], str] = utc_timestamp,
    ) -> None:
        self.repository = repository
        self._users = users
        self._retention_s = retention_s
        self._clock = clock

    async def notify(
        self,
        tenant: str,
        notification_id: str,
        user_id: int,
        message: str,
        correlation_id: str | None,
    ) -> None:
        """Queue ``message`` for the user as notification ``notification_id``. NotFound for
        no user."""
        user = await self._users.get(tenant, user_id)
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
        if correlation_id:
            item["correlation_id"] = correlation_id
        try:
            await self.repository.create(tenant, item)
        except ConditionFailed:
            if await self.repository.get(tenant, notification_id) is None:
                raise
            # An earlier attempt of the same request stored it: that one is the answer.

    async def get(self, tenant: str, notification_id: str) -> dict[str, Any]:
        item = await self.repository.get(tenant, notification_id)
        if item is None:
            raise NotFound(f"Notification {notification_id} does not exist")
        return notification_view(item)

    async def inbox(
        self, tenant: str, user_id: int, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The user's notifications, newest first (NotFound for no user)."""
        await self._users.get(tenant, user_id)
        items, next_cursor = await self.repository.for_user(tenant, user_id, limit, cursor)
        return [notification_view(item) for item in items], next_cursor
