"""What the Users API accepts and returns, with its validation rules."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from lambdaloop.settings import get_runtime_settings

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

# A pragmatic address check (RFC 5322 is far wider, and mail servers narrower): one @, a local
# part without spaces, a domain of dot-separated labels with a TLD of letters.
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
    r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


def _email(value: str) -> str:
    if not _EMAIL.match(value) or ".." in value:
        raise ValueError("is not a valid email address")
    local, _, domain = value.rpartition("@")
    # Domains are case-insensitive; local parts are kept as given.
    return f"{local}@{domain.lower()}"


def _webhook_url(value: str) -> str:
    parts = urlsplit(value)
    if not parts.hostname or parts.scheme not in ("http", "https"):
        raise ValueError("must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    if parts.scheme == "http" and not (_is_loopback(parts.hostname) and _local_mode()):
        raise ValueError("must use https (http is allowed only for loopback in local mode)")
    # The notify function's connector checks the address it connects to; refusing an IP
    # literal that can never be reached here tells the user at once. (Imported here: only
    # requests that carry a webhook need it.)
    from lambdaloop.ssrf import Policy

    if problem := Policy.for_user_urls(_local_mode()).url_problem(value):
        raise ValueError(f"cannot be used for webhooks: {problem}")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_mode() -> bool:
    return get_runtime_settings().local_mode


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Email = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=254), AfterValidator(_email)
]
WebhookUrl = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=2048), AfterValidator(_webhook_url)
]
UserId = Annotated[int, Field(ge=1, le=MAX_USER_ID)]


class UserFields(BaseModel):
    """A user as a client sends it (POST /users, PUT /users/{id}, POST /users/batch)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    email: Email
    webhook_url: WebhookUrl | None = None


class UserPatch(BaseModel):
    """Some of a user's fields (PATCH); ``webhook_url: null`` removes the webhook."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    email: Email | None = None
    webhook_url: WebhookUrl | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> UserPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one of name, email, webhook_url")
        for required in ("name", "email"):
            if required in self.model_fields_set and getattr(self, required) is None:
                raise ValueError(f"{required} cannot be null")
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
