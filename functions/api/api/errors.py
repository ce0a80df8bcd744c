"""The API's own errors (the layer's are in lambdaloop.errors); problems.py maps them to HTTP.

ApiError
├── BadRequest      the request is malformed beyond what validation names (400)
├── NotFound        the resource does not exist (404)
├── Conflict        the request conflicts with the current state (409)
└── PayloadTooLarge the body is over the limit (413)
"""

from __future__ import annotations

__all__ = ["ApiError", "BadRequest", "Conflict", "NotFound", "PayloadTooLarge"]


class ApiError(Exception):
    status = 500

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
