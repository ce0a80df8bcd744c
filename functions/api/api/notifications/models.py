"""What the Notifications API accepts and returns."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.fields import Message

__all__ = [
    "MAX_MESSAGE",
    "MAX_PAGE",
    "Inbox",
    "Notification",
    "NotifyRequest",
    "Queued",
    "Status",
]

#: Characters of a message: well inside SQS's 256 KiB, and what a webhook receiver expects.
MAX_MESSAGE = 4000
MAX_PAGE = 100

Status = Literal["queued", "delivered", "failed"]


class NotifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: Annotated[Message, Field(min_length=1, max_length=MAX_MESSAGE)]


class Queued(BaseModel):
    notification_id: str
    status: Literal["queued"]


class Notification(BaseModel):
    id: str
    user_id: int
    #: ``webhook``: POSTed to the user's webhook_url; ``inbox``: the user has none.
    channel: Literal["webhook", "inbox"]
    message: str
    status: Status
    #: Delivery attempts so far (webhook calls, or the inbox write).
    attempts: int
    created_at: str
    updated_at: str
    delivered_at: str | None = None
    #: Why it failed, or why the last attempt did (``HTTP 503``, ``timeout``, ...).
    error: str | None = None


class Inbox(BaseModel):
    notifications: list[Notification]
    #: Pass as ``cursor`` for the next (older) page; null on the last page.
    next_cursor: str | None = Field(default=None)
