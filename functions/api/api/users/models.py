"""What the Users API accepts and returns, with its validation rules."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.fields import Email, Name, WebhookUrl

__all__ = [
    "MAX_BATCH",
    "MAX_USER_ID",
    "BatchCreate",
    "BatchCreated",
    "BatchUsers",
    "User",
    "UserFields",
    "UserId",
    "UserPatch",
]

#: Ids fit in a JavaScript number (2**53 - 1), so every client reads them exactly.
MAX_USER_ID = 2**53 - 1
MAX_BATCH = 100

UserId = Annotated[int, Field(ge=1, le=MAX_USER_ID)]


class UserFields(BaseModel):
    """A user as a client sends it (POST /users, PUT /users/{id}, POST /users/batch)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    email: Email
    webhook_url: WebhookUrl | None = None


class UserPatch(BaseModel):
    """Some of a user's fields (PATCH); ``webhook_url: null`` removes the webhook."""

    # One field at least (the validator below, and the schema's minProperties); name and
    # email may be left out but not null (their default is not validated: a null sent is).
    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    name: Name = None  # type: ignore[assignment]  # absent, not null: see above
    email: Email = None  # type: ignore[assignment]
    webhook_url: WebhookUrl | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> UserPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one of name, email, webhook_url")
        return self


class User(BaseModel):
    id: int
    name: str
    email: str
    webhook_url: str | None
    created_at: str
    updated_at: str


class BatchUsers(BaseModel):
    users: list[User]
    missing: list[int]


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: Annotated[list[UserFields], Field(min_length=1, max_length=MAX_BATCH)]


class BatchCreated(BaseModel):
    users: list[User]
