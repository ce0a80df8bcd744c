"""Notification records, shared by the API (which creates and lists them) and the notify
function (which delivers them): where a record lives, and the message that asks for it.

    T#<tenant>#NOTIFICATION#<id>   the record (table key ``pk``): id, user_id, channel,
                                   message, status, attempts, webhook_url, timestamps
    owner = T#<tenant>#USER#<id>   the ``by_user`` index's key (with ``created_at``): a
                                   user's inbox, newest first, inside its tenant

A ``notification.deliver`` message carries ``{"tenant", "notification_id", "user_id"}``; its
envelope id (the consumer's idempotency key) is the record's key, inside the tenant's
partition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lambdaloop.queue import Envelope
from lambdaloop.store import Key
from lambdaloop.tenancy import payload_tenant, scoped

__all__ = ["BY_USER_INDEX", "DELIVER", "Delivery", "owner", "record_key"]

#: The envelope type the API publishes and the notify function handles.
DELIVER = "notification.deliver"
BY_USER_INDEX = "by_user"


def record_key(tenant: str, notification_id: str) -> Key:
    return {"pk": scoped(tenant, "NOTIFICATION", notification_id)}


def owner(tenant: str, user_id: int) -> str:
    """The ``by_user`` index's partition of a user's notifications."""
    return scoped(tenant, "USER", user_id)


class Delivery:
    """A ``notification.deliver`` message, checked: which notification of which tenant."""

    __slots__ = ("notification_id", "tenant")

    def __init__(self, tenant: str, notification_id: str) -> None:
        self.tenant = tenant
        self.notification_id = notification_id

    def envelope(self, user_id: int) -> Envelope:
        """The message that asks for this delivery."""
        payload = {"tenant": self.tenant, "notification_id": self.notification_id}
        return Envelope(DELIVER, self.key["pk"], {**payload, "user_id": user_id})

    @classmethod
    def parse(cls, envelope: Envelope) -> Delivery:
        """The delivery a message asks for (``ValueError`` naming what is wrong)."""
        delivery = cls._of(envelope.payload)
        if envelope.id != delivery.key["pk"]:
            raise ValueError("id: the envelope's id is not its notification's key")
        return delivery

    @classmethod
    def _of(cls, payload: Mapping[str, Any]) -> Delivery:
        tenant, notification_id = payload_tenant(payload), payload.get("notification_id")
        if not isinstance(notification_id, str) or not notification_id:
            raise ValueError(
                f"payload.notification_id: expected an id, got {notification_id!r:.40}"
            )
        return cls(tenant, notification_id)

    @property
    def key(self) -> Key:
        return record_key(self.tenant, self.notification_id)
