"""Notification records in their own table (key ``pk``, inside the tenant's partition),
listed per user through the ``by_user`` index (``owner``, ``created_at``): see
:mod:`lambdaloop.notifications`, which the notify function shares.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from api.errors import InvalidCursor
from lambdaloop.notifications import BY_USER_INDEX, owner, record_key
from lambdaloop.store import Item, Key, Table
from lambdaloop.tenancy import partition

__all__ = ["NotificationsRepository", "notification_view"]

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
_CURSOR_KEYS = frozenset({"pk", "owner", "created_at"})


def notification_view(item: Item) -> dict[str, Any]:
    """The notification as the API shows it (no webhook URL, no expiry)."""
    return {name: item.get(name) for name in _PUBLIC}


class NotificationsRepository:
    def __init__(self, table: Table) -> None:
        self.table = table

    async def create(self, tenant: str, item: Item) -> None:
        """Store a new notification (``id`` and ``user_id`` among its attributes);
        ``ConditionFailed`` when one has its id."""
        await self.table.create(
            {
                **item,
                **record_key(tenant, item["id"]),
                "tenant": tenant,
                "owner": owner(tenant, item["user_id"]),
            }
        )

    async def get(self, tenant: str, notification_id: str) -> Item | None:
        return await self.table.get(record_key(tenant, notification_id))

    async def for_user(
        self, tenant: str, user_id: int, limit: int, cursor: str | None
    ) -> tuple[list[Item], str | None]:
        """A page of the user's notifications, newest first, and the next page's cursor."""
        user = owner(tenant, user_id)
        page = await self.table.query(
            "#owner = :owner",
            names={"#owner": "owner"},
            values={":owner": user},
            index=BY_USER_INDEX,
            limit=limit,
            newest_first=True,
            start_key=_decode_cursor(cursor, tenant, user) if cursor else None,
        )
        return page.items, _encode_cursor(page.next_key) if page.next_key else None


def _encode_cursor(key: Key) -> str:
    text = json.dumps(key, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, tenant: str, user: str) -> Key:
    """The key a cursor holds; a cursor that is not one of this user's (in this tenant) is
    a 400, so a cursor never starts a page in another partition."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        key = json.loads(text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        key = None
    valid = (
        isinstance(key, dict)
        and key.keys() == _CURSOR_KEYS
        and key["owner"] == user
        and isinstance(key["pk"], str)
        and key["pk"].startswith(partition(tenant) + "#")
        and isinstance(key["created_at"], str)
    )
    if not valid:
        raise InvalidCursor("cursor is not one this listing gave", field="query.cursor")
    return dict(key)
