"""What every boto3 adapter of the layer shares: calls in the bounded thread pool, the client
built lazily there (so boto3's import never blocks the loop), and SDK errors translated at
the edge into the layer's hierarchy. Every call ends by :func:`~lambdaloop.runtime.call_deadline`
(the request's budget): a call that would outlast it is abandoned as a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from lambdaloop.clients import aws_client, run_blocking
from lambdaloop.errors import (
    DependencyError,
    DependencyTimeout,
    DependencyUnavailable,
    LambdaloopError,
)
from lambdaloop.runtime import call_deadline

__all__ = ["AwsAdapter"]

#: Throttling codes, seen only once botocore's own (adaptive) retries have given up.
_THROTTLED = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "AWS.SimpleQueueService.RequestThrottled",
    }
)


class AwsAdapter:
    """Base class: ``service`` names the boto3 client; subclasses may map their service's own
    error codes in :meth:`_client_error`."""

    service: str

    def __init__(self, client: Any = None) -> None:
        self._client = client

    def _client_error(
        self, code: str, message: str, response: Mapping[str, Any], operation: str
    ) -> LambdaloopError | None:
        """A service-specific translation of a ClientError, or None for the generic one."""
        return None

    def _invoke(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        # Runs in the pool: the first call builds (and imports) boto3 off the event loop. The
        # environment's client is looked up on every call, not kept: after a SnapStart restore
        # the layer replaces it (lambdaloop.snapstart), and an adapter built before the
        # snapshot must not go on with the old one.
        client = self._client if self._client is not None else aws_client(self.service)
        response: dict[str, Any] = getattr(client, operation)(**params)
        return response

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        timeout = call_deadline().timeout()
        if timeout is not None and timeout <= 0:
            raise DependencyTimeout(self.service, f"{operation}: no time left to call it")
        # The SDK call itself runs on in its thread until botocore's own timeouts end it;
        # only the wait for it is cut, and its outcome is unknown to the caller.
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                return await run_blocking(self._invoke, operation, params)
        except Exception as exc:
            if scope.expired():
                raise DependencyTimeout(
                    self.service, f"{operation}: no answer within the time left"
                ) from exc
            translated = self._translate(exc, operation)
            if translated is None:
                raise
            raise translated from exc

    def _translate(self, exc: Exception, operation: str) -> LambdaloopError | None:
        """The layer's error for an SDK error, or ``None`` to let it propagate unchanged."""
        from botocore import exceptions as sdk

        service = self.service
        if isinstance(exc, sdk.ClientError):
            return self._translate_client_error(exc.response, operation)
        if isinstance(exc, sdk.ReadTimeoutError | sdk.ConnectTimeoutError):
            return DependencyTimeout(service, f"{operation}: {exc}")
        if isinstance(exc, sdk.ConnectionError | sdk.HTTPClientError):
            return DependencyUnavailable(service, f"{operation}: {exc}")
        if isinstance(exc, sdk.ParamValidationError):
            return None  # the request is wrong: a bug, not a dependency failure
        if isinstance(exc, sdk.BotoCoreError):  # no credentials, no region, ...
            return DependencyError(service, f"{operation}: {exc}")
        return None

    def _translate_client_error(
        self, response: Mapping[str, Any], operation: str
    ) -> LambdaloopError:
        error = response.get("Error", {})
        code, message = str(error.get("Code", "")), str(error.get("Message", ""))
        specific = self._client_error(code, message, response, operation)
        if specific is not None:
            return specific
        if code in _THROTTLED:
            return DependencyUnavailable(
                self.service, f"{operation}: throttled ({code}): {message}"
            )
        return DependencyError(self.service, f"{operation}: {code}: {message}")
