"""The batch processor of every SQS-triggered function: partial batch failures, never a
failed batch.

:meth:`SqsProcessor.process` takes the SQS event and returns
``{"batchItemFailures": [{"itemIdentifier": messageId}, ...]}`` (the event source mapping
needs ``FunctionResponseTypes: [ReportBatchItemFailures]``). A record's failure is that
record's alone, reported so SQS redelivers it; :meth:`~SqsProcessor.process` does not raise
for one.

- Each body is parsed by itself (:meth:`~lambdaloop.queue.Envelope.from_json`); a body that
  is not an envelope, or whose ``type`` has no handler, fails its record (logged with why).
- Records run concurrently, at most ``concurrency`` at a time. With an
  :class:`~lambdaloop.idempotency.IdempotencyGuard` each runs through it, keyed by the
  envelope ``id``: a replayed result is a success, a key in progress elsewhere or reused
  with another payload is a failure. Handlers then return JSON-serialisable results.
- Deadline (:func:`~lambdaloop.runtime.current_deadline`): no record is started once
  ``remaining() <= margin_s``; records still running when the deadline comes are cancelled
  0.5 s before it (the runtime cancels the whole handler at the deadline itself, and the
  report must be returned before that, a garbage collection or a slow cleanup included).
  Every unfinished record is failed.
- FIFO (records carry ``attributes.MessageGroupId``): a group's records run in order, one
  at a time; after a failure the rest of the group is failed without running (running them
  would break the order). Groups run concurrently.

- Retry with backoff: a handler raises :class:`~lambdaloop.errors.RetryLater` for a
  transient failure; with a :class:`RetryPolicy`, the record's visibility is set
  (ChangeMessageVisibility) to its delay or to capped exponential backoff with jitter on
  the receive count, so it comes back then instead of after the queue's visibility timeout.
  The number of attempts is the queue's own maxReceiveCount (then the DLQ).
- Last attempt: told the queue's maxReceiveCount (``max_receive_count``), a record knows
  its last receive (:attr:`RecordContext.last_attempt`). When its handler fails on it, the
  give-up of its type (``give_up``) runs before the record is reported failed, to record
  the failure for good (its own failure is logged; the record fails either way), and a
  :class:`~lambdaloop.errors.RetryLater` record comes back at once instead of after a
  backoff: that receive moves it to the DLQ.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random as _random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from lambdaloop._aws import AwsAdapter
from lambdaloop.backoff import Backoff
from lambdaloop.errors import DependencyError, IdempotencyError, RetryLater
from lambdaloop.idempotency import IdempotencyGuard, payload_hash
from lambdaloop.queue import Envelope
from lambdaloop.runtime import Deadline, current_deadline

__all__ = ["GiveUp", "Handler", "RecordContext", "RetryPolicy", "SqsProcessor"]

logger = logging.getLogger(__name__)

#: How long before the deadline running records are cancelled, and half of it is what the
#: cancelled records get to clean up; the rest is for returning the report. 0.2 s was
#: overrun on a loaded machine (a full collection of a large heap): the batch then failed
#: whole at the deadline instead of reporting.
_REPORT_RESERVE_S = 0.5

_U = TypeVar("_U")


class RecordContext(NamedTuple):
    """What a handler knows about the record besides its envelope (a named tuple: made for
    every record, and cheaper to make than a frozen dataclass)."""

    message_id: str
    receive_count: int
    message_attributes: Mapping[str, Any]
    deadline: Deadline
    group_id: str | None = None
    #: The queue's maxReceiveCount, when the processor was told it.
    max_receive_count: int | None = None

    @property
    def last_attempt(self) -> bool:
        """Whether this is the record's last receive (a failure sends it to the DLQ)."""
        return self.max_receive_count is not None and self.receive_count >= self.max_receive_count


Handler = Callable[[Envelope, RecordContext], Awaitable[Any]]
#: Called with what the handler raised on the record's last attempt.
GiveUp = Callable[[Envelope, RecordContext, Exception], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Where and how long :class:`~lambdaloop.errors.RetryLater` records are put back."""

    queue_url: str
    base_s: float = 2.0
    #: The cap (ChangeMessageVisibility allows up to 12 hours).
    max_s: float = 900.0
    random: Callable[[], float] = field(default=_random.random)

    def delay(self, receive_count: int, asked: float | None) -> int:
        if asked is not None:
            return max(0, min(int(asked), 43_200))
        # Equal jitter: at least half the backoff, so retries stay spread but not immediate.
        backoff = Backoff(self.base_s, self.max_s, floor=0.5, random=self.random)
        return int(backoff.delay(receive_count - 1))


class _Visibility(AwsAdapter):
    service = "sqs"

    async def postpone(self, queue_url: str, receipt_handle: str, seconds: int) -> None:
        await self._call(
            "change_message_visibility",
            QueueUrl=queue_url,
            ReceiptHandle=receipt_handle,
            VisibilityTimeout=seconds,
        )


class SqsProcessor:
    """Processes SQS batches with ``handlers``, one per envelope ``type``."""

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        concurrency: int = 10,
        give_up: Mapping[str, GiveUp] | None = None,
        max_receive_count: int | None = None,
        guard: IdempotencyGuard | None = None,
        margin_s: float = 1.0,
        retry: RetryPolicy | None = None,
        sqs_client: Any = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if margin_s < 0:
            raise ValueError("margin_s must not be negative")
        if max_receive_count is not None and max_receive_count < 1:
            raise ValueError("max_receive_count must be at least 1")
        give_up = dict(give_up or {})
        if give_up and max_receive_count is None:
            raise ValueError("give_up needs max_receive_count (the queue's maxReceiveCount)")
        if unknown := sorted(set(give_up) - set(handlers)):
            raise ValueError(f"give_up for types with no handler: {', '.join(unknown)}")
        self._handlers = dict(handlers)
        self._give_up = give_up
        self._max_receive_count = max_receive_count
        self._concurrency = concurrency
        self._guard = guard
        self._margin_s = margin_s
        self._retry = retry
        self._visibility = _Visibility(sqs_client)

    async def process(self, event: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
        """Process the batch; the records that did not succeed, in ``batchItemFailures``."""
        records: Sequence[Mapping[str, Any]] = event.get("Records") or ()
        succeeded = [False] * len(records)
        if records:
            await _Batch(self, records, succeeded, current_deadline()).run()
        failed = [str(r["messageId"]) for r, ok in zip(records, succeeded, strict=True) if not ok]
        if failed:
            logger.warning("%d of %d record(s) failed", len(failed), len(records))
        return {"batchItemFailures": [{"itemIdentifier": m} for m in failed]}

    async def _run_record(self, raw: Mapping[str, Any], deadline: Deadline) -> bool:
        message_id = str(raw["messageId"])
        try:
            envelope = Envelope.from_json(raw.get("body", ""))
        except ValueError as exc:
            logger.warning("record %s failed: invalid envelope: %s", message_id, exc)
            return False
        handler = self._handlers.get(envelope.type)
        if handler is None:
            logger.warning("record %s failed: no handler for type %r", message_id, envelope.type)
            return False
        attributes = raw.get("attributes") or {}
        context = RecordContext(
            message_id,
            int(attributes.get("ApproximateReceiveCount", 1)),
            raw.get("messageAttributes") or {},
            deadline,
            attributes.get("MessageGroupId"),
            self._max_receive_count,
        )
        try:
            if self._guard is None:
                await handler(envelope, context)
            else:
                await self._guard.run(
                    envelope.id,
                    payload_hash(envelope.payload),
                    lambda: handler(envelope, context),
                    deadline,
                )
        except IdempotencyError as exc:  # not run here: nothing to give up
            logger.warning("record %s failed: %s", message_id, exc)
            return False
        except RetryLater as exc:
            if context.last_attempt:
                await self._give_up_on(envelope, context, exc)
                # Back at once: its next receive moves it to the DLQ.
                exc = RetryLater(str(exc), delay_s=0)
            await self._retry_later(raw, context.receive_count, exc)
            return False
        except Exception as exc:
            logger.exception("record %s failed: handler for %r raised", message_id, envelope.type)
            if context.last_attempt:
                await self._give_up_on(envelope, context, exc)
            return False
        return True

    async def _give_up_on(self, envelope: Envelope, context: RecordContext, exc: Exception) -> None:
        give_up = self._give_up.get(envelope.type)
        if give_up is None:
            return
        try:
            await give_up(envelope, context, exc)
        except Exception:
            logger.exception(
                "record %s: the give-up for %r raised (the record fails all the same)",
                context.message_id,
                envelope.type,
            )

    async def _retry_later(
        self, raw: Mapping[str, Any], receive_count: int, exc: RetryLater
    ) -> None:
        message_id = raw["messageId"]
        if self._retry is None:
            logger.warning("record %s failed (retry later): %s", message_id, exc)
            return
        delay = self._retry.delay(receive_count, exc.delay_s)
        logger.warning("record %s back in %d s: %s", message_id, delay, exc)
        try:
            await self._visibility.postpone(
                self._retry.queue_url, str(raw.get("receiptHandle", "")), delay
            )
        except DependencyError as error:
            # It still comes back, after the queue's visibility timeout instead.
            logger.warning("record %s: could not set its delay: %s", message_id, error)


class _Batch:
    """One batch on its way: its records run as units (a record, or a FIFO group's records
    in order), ``concurrency`` at a time.

    The bound is the number of tasks: with fewer units than the bound, one task per unit;
    otherwise ``concurrency`` workers, each taking the next unit when done with one. No
    semaphore and no per-record timeout: the batch has one deadline, and a record left
    running at it is cancelled with its task.
    """

    __slots__ = ("_deadline", "_left", "_processor", "_records", "_start_by", "_succeeded", "done")

    def __init__(
        self,
        processor: SqsProcessor,
        records: Sequence[Mapping[str, Any]],
        succeeded: list[bool],
        deadline: Deadline,
    ) -> None:
        self._processor = processor
        self._records = records
        self._succeeded = succeeded
        self._deadline = deadline
        #: No record starts at or after this point of the monotonic clock.
        self._start_by = deadline.expires_at - processor._margin_s
        self._left = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        """Run every unit, until all are done or the deadline's reserve is reached."""
        units = _fifo_chains(self._records)
        loop = asyncio.get_running_loop()
        if units is None:  # standard queue: every record is a unit of its own
            count = len(self._records)
            if self._processor._concurrency >= count:
                self._left = count
                tasks = [loop.create_task(self._alone(index)) for index in range(count)]
            else:
                tasks = self._workers(loop, iter(range(count)), self._record)
        elif self._processor._concurrency >= len(units):
            self._left = len(units)
            tasks = [loop.create_task(self._worker(iter((chain,)), self._chain)) for chain in units]
        else:
            tasks = self._workers(loop, iter(units), self._chain)
        timeout = self._deadline.timeout()
        if timeout is not None:
            timeout = max(0.0, timeout - _REPORT_RESERVE_S)
        try:
            async with asyncio.timeout(timeout):
                await self.done
        except TimeoutError:
            # The last units may have finished in the same turn as the timeout: none left.
            if unfinished := [task for task in tasks if not task.done()]:
                for task in unfinished:
                    task.cancel()
                await asyncio.wait(unfinished, timeout=_REPORT_RESERVE_S / 2)
                logger.warning("deadline: cancelled %d unfinished record task(s)", len(unfinished))

    def _workers(
        self,
        loop: asyncio.AbstractEventLoop,
        units: Iterator[_U],
        run_unit: Callable[[_U], Awaitable[bool]],
    ) -> list[asyncio.Task[None]]:
        self._left = self._processor._concurrency
        return [
            loop.create_task(self._worker(units, run_unit))
            for _ in range(self._processor._concurrency)
        ]

    def _arrive(self) -> None:
        # Cheaper than asyncio.wait or gather, which add a done callback to every task.
        self._left -= 1
        if self._left == 0 and not self.done.done():
            self.done.set_result(None)

    def _may_start(self, index: int) -> bool:
        if self._start_by != math.inf and time.monotonic() >= self._start_by:
            logger.warning(
                "record %s not started: deadline near", self._records[index]["messageId"]
            )
            return False
        return True

    async def _alone(self, index: int) -> None:
        """A record with a task of its own (the common case, kept to one coroutine)."""
        try:
            if self._may_start(index):
                raw = self._records[index]
                self._succeeded[index] = await self._processor._run_record(raw, self._deadline)
        finally:
            self._arrive()

    async def _worker(self, units: Iterator[_U], run_unit: Callable[[_U], Awaitable[bool]]) -> None:
        """Run units from the shared iterator, one after the other, until none is left or
        the deadline's margin is reached."""
        try:
            for unit in units:
                if not await run_unit(unit):
                    return
        finally:
            self._arrive()

    async def _record(self, index: int) -> bool:
        """One record; whether the worker may go on (False: the deadline is near)."""
        if not self._may_start(index):
            return False
        self._succeeded[index] = await self._processor._run_record(
            self._records[index], self._deadline
        )
        return True

    async def _chain(self, chain: Sequence[int]) -> bool:
        """A FIFO group's records in order, stopping at the first that does not succeed
        (running the rest would break the order); whether the worker may go on."""
        for index in chain:
            if not self._may_start(index):
                return False
            if not await self._processor._run_record(self._records[index], self._deadline):
                if len(chain) > 1:
                    logger.warning(
                        "group %s: the records after %s are failed without running",
                        self._records[index]["attributes"]["MessageGroupId"],
                        self._records[index]["messageId"],
                    )
                return True
            self._succeeded[index] = True
        return True


def _fifo_chains(records: Sequence[Mapping[str, Any]]) -> list[list[int]] | None:
    """The indexes of the records by message group (in order), or None for a standard queue.

    A batch comes from one queue, and every record of a FIFO queue names its group: the
    first record tells which (a record with no group is then a unit of its own).
    """
    if (records[0].get("attributes") or {}).get("MessageGroupId") is None:
        return None
    chains: dict[str | int, list[int]] = {}
    for index, raw in enumerate(records):
        group = (raw.get("attributes") or {}).get("MessageGroupId")
        chains.setdefault(index if group is None else group, []).append(index)
    return list(chains.values())
