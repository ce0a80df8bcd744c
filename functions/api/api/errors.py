"""The API's own errors (the layer's are in lambdaloop.errors); problems.py maps them to HTTP.

Services raise :class:`ApiError` s, which carry their status. Repositories raise
:class:`DomainError` s, which say what happened in the data's terms; problems.py says what
each means in HTTP.

ApiError
├── BadRequest      the request is malformed beyond what validation names (400)
├── Unauthorized    the request carries no verified caller (401)
├── NotFound        the resource does not exist, or is another tenant's (404)
├── Conflict        the request conflicts with the current state (409)
├── PayloadTooLarge the body is over the limit (413)
└── TooManyRequests the caller is over one of its limits; ``retry_after_s`` says when to retry (429)
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "DomainError",
    "EmailTaken",
    "IdTaken",
    "IdsExhausted",
    "InvalidCursor",
    "NotFound",
    "PayloadTooLarge",
    "RecordChanged",
    "TooManyRequests",
    "Unauthorized",
]


class ApiError(Exception):
    status = 500
    #: Response headers the status calls for (WWW-Authenticate, Retry-After).
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, **extensions: object) -> None:
        self.detail = detail
        self.extensions = extensions
        super().__init__(detail)


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class Unauthorized(ApiError):
    status = 401

    def __init__(self, detail: str, **extensions: object) -> None:
        super().__init__(detail, **extensions)
        self.headers = {"WWW-Authenticate": "Bearer"}


class TooManyRequests(ApiError):
    status = 429

    def __init__(self, detail: str, *, retry_after_s: int, **extensions: object) -> None:
        super().__init__(detail, **extensions)
        self.headers = {"Retry-After": str(retry_after_s)}


class DomainError(Exception):
    """What went wrong in the data's terms (problems.py maps each kind to HTTP)."""

    def __init__(self, detail: str, **extensions: object) -> None:
        self.detail = detail
        self.extensions = extensions
        super().__init__(detail)


class EmailTaken(DomainError):
    """Another user of the tenant holds an address (``emails`` names them)."""


class IdsExhausted(DomainError):
    """The tenant has no user ids left to assign."""


class InvalidCursor(DomainError):
    """A listing cursor that listing did not give."""


class IdTaken(DomainError):
    """A create found its id taken: a race with another create, or an id a client chose."""


class RecordChanged(DomainError):
    """A conditional write found the record changed since it was read (services read it
    again and retry)."""
