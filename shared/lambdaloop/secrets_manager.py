"""Secrets from AWS Secrets Manager, fetched on first use and kept for a few minutes.

Secrets never travel in environment variables (visible to anyone who can read the function's
configuration): the function gets the secret's ARN, and reads the value here. Keeping it
``max_age_s`` seconds saves a call per invocation and still picks up a rotation soon.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from lambdaloop._aws import AwsAdapter
from lambdaloop.errors import DependencyError

__all__ = ["SecretsManager"]


class SecretsManager(AwsAdapter):
    """Reads secret strings; ``client`` is a boto3 Secrets Manager client (by default the
    environment's, built on first use)."""

    service = "secretsmanager"

    def __init__(
        self,
        client: object = None,
        *,
        max_age_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(client)
        self._max_age_s = max_age_s
        self._clock = clock
        self._values: dict[str, tuple[str, float]] = {}

    async def get(self, secret_id: str) -> str:
        """The secret's current string value (``SecretString``).

        Raises :class:`~lambdaloop.errors.DependencyError` (or a subclass) when Secrets
        Manager fails or the secret holds no string.
        """
        cached = self._values.get(secret_id)
        now = self._clock()
        if cached is not None and now - cached[1] < self._max_age_s:
            return cached[0]
        response = await self._call("get_secret_value", SecretId=secret_id)
        value = response.get("SecretString")
        if not isinstance(value, str) or not value:
            raise DependencyError(self.service, f"secret {secret_id!r} holds no string")
        self._values[secret_id] = (value, now)
        return value
