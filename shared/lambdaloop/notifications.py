"""Notification records, shared by the API (which creates and lists them) and the notify
function (which delivers them): where a record lives, and the message that asks for it.

    T#<tenant>#NOTIFICATION#<id>   the record (table key ``pk``): id, user_id, channel,
                                   message, status, attempts, webhook_url, timestamps
    owner = T#<tenant>#USER#<id>   the ``by_user`` index's key (with ``created_at``): a
                                   user's inbox, newest first, inside its tenant

The message that asks for a delivery is :class:`lambdaloop.messages.Delivery`.
"""

from __future__ import annotations

from lambdaloop.store import Key
from lambdaloop.tenancy import scoped

__all__ = ["BY_USER_INDEX", "owner", "record_key"]

BY_USER_INDEX = "by_user"


def record_key(tenant: str, notification_id: str) -> Key:
    return {"pk": scoped(tenant, "NOTIFICATION", notification_id)}


def owner(tenant: str, user_id: int) -> str:
    """The ``by_user`` index's partition of a user's notifications."""
    return scoped(tenant, "USER", user_id)
