"""The layer's exceptions.

Adapters translate SDK errors at their edge (``raise ... from exc``); callers catch these,
never boto3's, redis-py's or aiohttp's. HTTP status codes are chosen by the API's exception
handlers, not here.

    LambdaloopError
    ├── SettingsError            the environment is missing or has an invalid variable
    ├── DeadlineExceeded         the invocation ran into its deadline (safety margin included)
    └── DependencyError          a downstream service failed
        ├── DependencyTimeout    ...did not answer in time
        └── DependencyUnavailable  ...refused, reset, or is switched off (circuit open)
"""

from __future__ import annotations

__all__ = [
    "DeadlineExceeded",
    "DependencyError",
    "DependencyTimeout",
    "DependencyUnavailable",
    "LambdaloopError",
    "SettingsError",
]


class LambdaloopError(Exception):
    """Base class of every error the layer raises on purpose."""


class SettingsError(LambdaloopError):
    """The environment does not describe a valid configuration.

    ``problems`` maps each offending variable to what is wrong with it, so one cold start
    reports every mistake at once.
    """

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = dict(problems)
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(self.problems.items()))
        super().__init__(f"invalid environment: {listed}")


class DeadlineExceeded(LambdaloopError):
    """The work did not finish before the invocation's deadline."""


class DependencyError(LambdaloopError):
    """A downstream dependency (DynamoDB, Redis, SQS, an HTTP endpoint) failed."""

    def __init__(self, dependency: str, message: str) -> None:
        self.dependency = dependency
        super().__init__(f"{dependency}: {message}")


class DependencyTimeout(DependencyError):
    """The dependency did not answer within its timeout."""


class DependencyUnavailable(DependencyError):
    """The dependency refused the call or could not be reached."""
