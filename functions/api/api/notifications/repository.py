"""Notification records in their own table (key ``id``), listed per user through the
``by_user`` index (``user_id``, ``created_at``).

The notify function updates the same records (status, attempts, error): this module and
``functions/notify`` agree on the attributes below and on nothing else.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from api.errors import BadRequest
from lambdaloop.store import Item, Key, Table

__all__ = ["BY_USER_INDEX", "NotificationsRepository", "public"]

BY_USER_INDEX = "by_user"
_PUBLIC = (
    "id",
    "user_id",
    "channel",
    "message",
    "status",
    "attempts",
    "created_at",
    "updated_at",
    "delivered_at",
    "error",
)
_CURSOR_KEYS = frozenset({"id", "user_id", "created_at"})


def public(item: Item) -> dict[str, Any]:
    """The notification as the API shows it (no webhook URL, no expiry)."""
    return {name: item.get(name) for name in _PUBLIC}


class NotificationsRepository:
    def __init__(self, table: Table) -> None:
        self.table = table

    async def create(self, item: Item) -> None:
        await self.table.create(item)

    async def get(self, notification_id: str) -> Item | None:
        return await self.table.get({"id": notification_id})

    async def not_queued(self, notification_id: str, now: str, reason: str) -> None:
        """Mark a notification that never reached the queue failed, unless its message did
        get through after all and it was delivered meanwhile."""
        await self.table.update(
            {"id": notification_id},
            {"status": "failed", "error": reason, "updated_at": now},
            condition="#status = :queued",
            names={"#status": "status"},
            values={":queued": "queued"},
        )

    async def for_user(
        self, user_id: int, limit: int, cursor: str | None
    ) -> tuple[list[Item], str | None]:
        """A page of the user's notifications, newest first, and the next page's cursor."""
        page = await self.table.query(
            "#user_id = :user_id",
            names={"#user_id": "user_id"},
            values={":user_id": user_id},
            index=BY_USER_INDEX,
            limit=limit,
            newest_first=True,
            start_key=_decode_cursor(cursor, user_id) if cursor else None,
        )
        return page.items, _encode_cursor(page.next_key) if page.next_key else None


def _encode_cursor(key: Key) -> str:
    text = json.dumps(key, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, user_id: int) -> Key:
    """The key a cursor holds; a cursor that is not one of this user's is a 400."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        key = json.loads(text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        key = None
    valid = (
        isinstance(key, dict)
        and key.keys() == _CURSOR_KEYS
        and key["user_id"] == user_id
        and all(isinstance(key[name], str) for name in ("id", "created_at"))
    )
    if not valid:
        raise BadRequest("cursor is not one this listing gave", field="query.cursor")
    return dict(key)
