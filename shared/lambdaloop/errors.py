"""The layer's exceptions.

Adapters translate SDK errors at their edge (``raise ... from exc``); callers catch these,
never boto3's, redis-py's or aiohttp's. HTTP status codes are chosen by the API's exception
handlers, not here.

    LambdaloopError
    ├── SettingsError            the environment is missing or has an invalid variable
    ├── DeadlineExceeded         the invocation ran into its deadline (safety margin included)
    ├── ConditionFailed          a conditional write found the item not as required
    │   └── TransactionConflict  a transaction was cancelled; ``reasons`` says which operation
    ├── PublishError             queue messages were refused; ``failed`` says which and why
    ├── RetryLater               a queue handler asks for its message again, after a delay
    ├── IdempotencyError         an idempotency key cannot be processed now; ``key`` names it
    │   ├── IdempotencyInProgress  another attempt holds the key and its deadline has not passed
    │   └── IdempotencyKeyReused   the key was used before with a different payload
    └── DependencyError          a downstream service failed
        ├── DependencyTimeout    ...did not answer in time
        └── DependencyUnavailable  ...refused, reset, or is switched off (circuit open)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "ConditionFailed",
    "DeadlineExceeded",
    "DependencyError",
    "DependencyTimeout",
    "DependencyUnavailable",
    "IdempotencyError",
    "IdempotencyInProgress",
    "IdempotencyKeyReused",
    "LambdaloopError",
    "PublishError",
    "RetryLater",
    "SettingsError",
    "TransactionConflict",
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


class ConditionFailed(LambdaloopError):
    """A conditional write was refused: the item exists when it must not, is missing when it
    must exist, or does not satisfy the condition. Nothing was written."""


class TransactionConflict(ConditionFailed):
    """A transaction was cancelled and none of its operations were applied.

    ``reasons`` holds one cancellation reason code per operation, in the order they were
    given: ``"None"`` for an operation that was fine, ``"ConditionalCheckFailed"`` for one
    whose condition failed, ``"TransactionConflict"`` when another request was changing the
    same item, and so on. It is empty when the service did not say.
    """

    def __init__(self, reasons: Sequence[str], message: str = "transaction cancelled") -> None:
        self.reasons = list(reasons)
        super().__init__(f"{message} (reasons: {self.reasons})" if self.reasons else message)

    @property
    def failed(self) -> dict[int, str]:
        """The index and reason code of each operation that caused the cancellation."""
        return {index: code for index, code in enumerate(self.reasons) if code != "None"}


class PublishError(LambdaloopError):
    """Some queue messages were not published (the others were).

    ``failed`` maps the envelope id of each message that was not published to
    ``"Code: message"`` as the queue gave it, in publish order. Whether a message was
    refused for good (a sender fault) or kept failing until the retries ran out, it is not
    on the queue: publishing it again is safe, consumers being idempotent by envelope id.
    """

    def __init__(self, failed: Mapping[str, str]) -> None:
        self.failed = dict(failed)
        listed = "; ".join(f"{message_id}: {why}" for message_id, why in self.failed.items())
        super().__init__(f"{len(self.failed)} message(s) not published: {listed}")


class RetryLater(LambdaloopError):
    """Raised by a queue message handler for a transient failure: the message comes back
    after ``delay_s`` seconds (``None``: the consumer's capped exponential backoff)."""

    def __init__(self, reason: str, delay_s: float | None = None) -> None:
        self.delay_s = delay_s
        super().__init__(reason)


class IdempotencyError(LambdaloopError):
    """The work guarded by idempotency key ``key`` was not run (and has no stored result)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"idempotency key {key!r}: {message}")


class IdempotencyInProgress(IdempotencyError):
    """Another attempt holds the key and has not passed its deadline: try again later (an
    SQS consumer reports the record failed, so it is redelivered)."""

    def __init__(self, key: str) -> None:
        super().__init__(key, "another attempt is in progress")


class IdempotencyKeyReused(IdempotencyError):
    """The key was used before with a different payload: a producer bug, never retried into
    success."""

    def __init__(self, key: str) -> None:
        super().__init__(key, "already used with a different payload")


class DependencyError(LambdaloopError):
    """A downstream dependency (DynamoDB, Redis, SQS, an HTTP endpoint) failed."""

    def __init__(self, dependency: str, message: str) -> None:
        self.dependency = dependency
        super().__init__(f"{dependency}: {message}")


class DependencyTimeout(DependencyError):
    """The dependency did not answer within its timeout."""


class DependencyUnavailable(DependencyError):
    """The dependency refused the call or could not be reached."""
