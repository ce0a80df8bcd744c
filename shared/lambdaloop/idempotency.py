"""An async idempotency guard on DynamoDB: at-least-once delivery, effectively-once work.

:meth:`IdempotencyGuard.run` claims a key with a conditional write, runs the work once, and
stores its result; a later call with the same key and payload gets the stored result back
without running the work again.

- The claim is an ``in_progress`` record that stops blocking once the claiming attempt's
  *deadline* has passed (``in_progress_expires_at``, epoch milliseconds): a crashed or
  timed-out attempt does not hold back its retry for longer than it could have run.
- A ``completed`` record holds the result (JSON text) until ``expires_at`` (epoch seconds,
  the table's TTL attribute). Choose ``expires_after_s`` longer than ``maxReceiveCount x``
  the queue's visibility timeout, so every redelivery of a message still finds its record.
  DynamoDB deletes expired items lazily, so the claim also succeeds over a record whose
  ``expires_at`` has passed.
- The payload hash (:func:`payload_hash`: sha256 of canonical JSON, never ``hash()``) is
  stored with the record: a key reused with a different payload is refused
  (:class:`~lambdaloop.errors.IdempotencyKeyReused`).
- Work that raises removes its claim (a retry may run at once) and the error propagates.
  Work that is cancelled (the deadline) does not: its claim expires with that deadline.
  Cancelling does not undo what the work already did, nor stop a blocking call already
  running in a thread: work cut by the deadline after (or during) its side effect runs
  again when the message comes back. Keep side effects short, near the end of the work,
  and idempotent themselves where they can be (a conditional write, a request id).
- If storing the result fails after the work succeeded, the outcome is still returned (and
  the failure logged): reporting a failure would get the message redelivered and the work
  run again once the claim expires, which is the very thing the guard is for.

The table is passed in (a :class:`~lambdaloop.store.Table`, or any object with the same
``get``/``put``/``delete``); its partition key is ``id`` (string) and nothing else, so build
it with ``Table(name, key_schema=("id",))``.

Why not Powertools' idempotency utility: its ``idempotent``/``idempotent_function``
decorators do not support ``async def`` (rejected upstream because its persistence layer
calls boto3, which blocks), and running that persistence layer in a thread would still
expire in-progress records on its own clock, not the Lambda deadline of the attempt. This
guard is async on the layer's :class:`~lambdaloop.store.Table` (boto3 in the layer's
bounded pool) and its in-progress expiry follows the :class:`~lambdaloop.runtime.Deadline`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from lambdaloop.errors import ConditionFailed, IdempotencyInProgress, IdempotencyKeyReused
from lambdaloop.runtime import Deadline

__all__ = ["GuardTable", "IdempotencyGuard", "Outcome", "Result", "payload_hash"]

logger = logging.getLogger(__name__)

#: What guarded work may return: stored as JSON, given back as JSON gives it.
Result = dict[str, Any] | list[Any] | str | int | None

_IN_PROGRESS = "in_progress"
_COMPLETED = "completed"
#: Claims: the key is free, or held by an attempt whose deadline passed, or long expired.
_CLAIM_CONDITION = (
    "attribute_not_exists(#id)"
    " OR (#status = :in_progress AND #in_progress_expires_at < :now_ms)"
    " OR #expires_at < :now"
)
_CLAIM_NAMES = {
    "#id": "id",
    "#status": "status",
    "#in_progress_expires_at": "in_progress_expires_at",
    "#expires_at": "expires_at",
}
#: A lost record reappearing between our claim and our read is retried this many times.
_CLAIM_ATTEMPTS = 2


class GuardTable(Protocol):
    """What the guard uses of :class:`~lambdaloop.store.Table` (key schema ``("id",)``)."""

    async def get(
        self, key: dict[str, Any], *, consistent: bool = False
    ) -> dict[str, Any] | None: ...

    async def put(
        self,
        item: dict[str, Any],
        *,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> None: ...

    async def delete(
        self, key: dict[str, Any], *, must_exist: bool = False
    ) -> dict[str, Any] | None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """The work's result; ``replayed`` when it came from the store (the work did not run)."""

    result: Result
    replayed: bool = False


def payload_hash(payload: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``payload``: stable across processes."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyGuard:
    """Runs work at most once per key (see the module docstring).

    ``clock`` gives the wall-clock time in epoch seconds (records outlive the process, so
    the monotonic clock cannot be used for them).
    """

    def __init__(
        self,
        table: GuardTable,
        *,
        expires_after_s: int = 86_400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if expires_after_s <= 0:
            raise ValueError("expires_after_s must be positive")
        self._table = table
        self._expires_after_s = expires_after_s
        self._clock = clock

    async def run(
        self,
        key: str,
        payload_hash: str,
        work: Callable[[], Awaitable[Result]],
        deadline: Deadline,
    ) -> Outcome:
        """Run ``work`` once for ``key``, or give back the result stored for it.

        Raises :class:`~lambdaloop.errors.IdempotencyInProgress` while another attempt
        holds the key, :class:`~lambdaloop.errors.IdempotencyKeyReused` when the key was
        used with another payload, and whatever ``work`` raises.
        """
        for _ in range(_CLAIM_ATTEMPTS):
            if await self._claim(key, payload_hash, deadline):
                return Outcome(await self._run_claimed(key, payload_hash, work))
            record = await self._table.get({"id": key}, consistent=True)
            if record is None:
                continue  # the holder failed and removed its claim: claim again
            if record.get("payload_hash") != payload_hash:
                raise IdempotencyKeyReused(key)
            if record.get("status") == _COMPLETED:
                stored: Result = json.loads(record["result"])
                return Outcome(stored, replayed=True)
            raise IdempotencyInProgress(key)
        raise IdempotencyInProgress(key)

    async def _claim(self, key: str, digest: str, deadline: Deadline) -> bool:
        now = self._clock()
        remaining = deadline.remaining()
        if math.isinf(remaining):  # outside an invocation: the record's own lifetime
            remaining = float(self._expires_after_s)
        item = {
            "id": key,
            "status": _IN_PROGRESS,
            "payload_hash": digest,
            "expires_at": int(now) + self._expires_after_s,
            "in_progress_expires_at": int((now + remaining) * 1000),
        }
        values = {":in_progress": _IN_PROGRESS, ":now_ms": int(now * 1000), ":now": int(now)}
        try:
            await self._table.put(
                item, condition=_CLAIM_CONDITION, names=_CLAIM_NAMES, values=values
            )
        except ConditionFailed:
            return False
        return True

    async def _run_claimed(
        self, key: str, digest: str, work: Callable[[], Awaitable[Result]]
    ) -> Result:
        try:
            result = await work()
            encoded = json.dumps(result, separators=(",", ":"), allow_nan=False)
        except Exception:
            await self._release(key)
            raise
        completed = {
            "id": key,
            "status": _COMPLETED,
            "payload_hash": digest,
            "expires_at": int(self._clock()) + self._expires_after_s,
            "result": encoded,
        }
        try:
            await self._table.put(completed)
        except Exception:
            # The work is done: say so, rather than have it redelivered and run again.
            logger.exception("idempotency key %r: the work succeeded, storing it failed", key)
        return result

    async def _release(self, key: str) -> None:
        try:
            await self._table.delete({"id": key})
        except Exception:
            # The claim then expires with the attempt's deadline; the work's error matters more.
            logger.exception("idempotency key %r: could not remove the failed claim", key)
