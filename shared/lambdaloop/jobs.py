"""Job records in DynamoDB, shared by the API (which creates and shows jobs) and the
consumers (which run them): one item per job, one item per result, in one partition inside
the tenant's (:mod:`lambdaloop.tenancy`). A job is named by a :class:`JobRef`, its tenant
and id; the messages that run it carry both.

    T#<tenant>#JOB#<id>  META       the job: tenant, type, status, progress (done/total),
                                    params, error; ``active`` (the tenant's partition) until final
    T#<tenant>#JOB#<id>  R#<index>  the result of item ``index`` of the job (index
                                    zero-padded, so the results of a job list in order)

A job is ``queued`` when created, ``running`` once a consumer took it, then ``succeeded``
or ``failed`` (final). The ``in_flight`` index holds the jobs that are not final (``active``
is removed in the write that makes a job final), so :meth:`JobStore.in_flight` counts a
tenant's with one query.

Two ways to progress:

- **Results** (fetch jobs): progress is set, not added: one consumer runs a job at a time
  (the idempotency guard and the queue see to it) and it knows which results exist, so a
  redelivered part never counts a result twice. Results are written in batches
  (BatchWriteItem), never one request per result.
- **Folds** (compute jobs, whose chunks run in many invocations at once): each chunk's
  partial result is folded into the job's accumulator (``acc``, JSON text: integers of any
  size survive, where a DynamoDB number keeps 38 digits) by :meth:`JobStore.fold`, an
  optimistic read-reduce-write: the write holds only if ``done`` is still what was read,
  and the chunk is not in ``chunks_done`` yet, so a redelivered chunk is never counted
  twice. The fold that completes the last chunk also makes the job ``succeeded`` with its
  ``result``, in the same write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from lambdaloop.backoff import Backoff
from lambdaloop.errors import ConditionFailed, DependencyUnavailable
from lambdaloop.store import Item, Key, Page, Table, utc_timestamp
from lambdaloop.tenancy import partition, payload_tenant, scoped

__all__ = [
    "COMPUTE_JOB",
    "FETCH_JOB",
    "FINAL",
    "IN_FLIGHT_INDEX",
    "STATUSES",
    "JobRef",
    "JobStore",
    "folded",
    "job_view",
]

#: The job types stored: a fetch job runs in parts, a compute job in chunks.
FETCH_JOB = "fetch"
COMPUTE_JOB = "compute"

STATUSES = ("queued", "running", "succeeded", "failed")
FINAL = frozenset({"succeeded", "failed"})
_META = "META"
_RESULT = "R#"
_INDEX_WIDTH = 6
_PUBLIC = ("id", "type", "status", "created_at", "updated_at", "error")
_ERROR_MAX = 500
#: Between two tries to fold a chunk that lost the race: 20 ms, doubling up to 1 s.
_FOLD_BACKOFF = Backoff(0.02, 1.0)
IN_FLIGHT_INDEX = "in_flight"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobRef:
    """A job: its tenant and its id (logs show the id)."""

    tenant: str
    id: str

    def __str__(self) -> str:
        return self.id

    @property
    def pk(self) -> str:
        return scoped(self.tenant, "JOB", self.id)

    def part_id(self, part: int) -> str:
        """The envelope id (idempotency key, inside the tenant's partition) of a fetch job's
        part."""
        return f"{self.pk}.{part}"

    def chunk_id(self, chunk: int) -> str:
        """The envelope id of a compute job's chunk."""
        return f"{self.pk}.c{chunk}"

    @property
    def object_prefix(self) -> str:
        """Where the job's stored bodies go in the results bucket (under ``jobs/``, which
        the bucket expires): ``jobs/<tenant>/<id>/``, the tenant percent-encoded."""
        return f"jobs/{quote(self.tenant, safe='')}/{self.id}/"

    def payload(self) -> dict[str, str]:
        """What a message about the job carries to name it."""
        return {"tenant": self.tenant, "job_id": self.id}

    @classmethod
    def parse(cls, payload: Mapping[str, Any]) -> JobRef:
        """The job a message names (``ValueError`` naming the field when it names none)."""
        tenant, job_id = payload_tenant(payload), payload.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError(f"payload.job_id: expected a non-empty string, got {job_id!r:.40}")
        return cls(tenant, job_id)


def _meta(job: JobRef) -> Key:
    return {"pk": job.pk, "sk": _META}


def _result_sk(index: int) -> str:
    return f"{_RESULT}{index:0{_INDEX_WIDTH}d}"


def job_view(meta: Item) -> dict[str, Any]:
    """The job as the API shows it (without its params or keys); ``result`` is the final
    result of a folded job (None until it has one)."""
    job = {name: meta.get(name) for name in _PUBLIC}
    job["progress"] = {"done": int(meta.get("done", 0)), "total": int(meta.get("total", 0))}
    job["result"] = json.loads(meta["result"]) if "result" in meta else None
    return job


def folded(meta: Item) -> set[int]:
    """The chunks already folded into the job."""
    return {int(chunk) for chunk in meta.get("chunks_done", ())}


class JobStore:
    def __init__(
        self,
        table: Table,
        *,
        retention_s: int = 30 * 86_400,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.table = table
        self._retention_s = retention_s
        self._sleep = sleep

    async def create(
        self,
        job: JobRef,
        type_: str,
        params: Mapping[str, Any],
        total: int,
        *,
        correlation_id: str | None = None,
    ) -> Item:
        """Write a new ``queued`` job (``ConditionFailed`` if the id is taken); the item.

        Writing it is publishing it: the table's stream brings it to the relay, which
        queues its first messages (:mod:`lambdaloop.outbox`)."""
        now = utc_timestamp()
        item = {
            **_meta(job),
            "id": job.id,
            "tenant": job.tenant,
            "active": partition(job.tenant),
            "type": type_,
            "status": "queued",
            "params": dict(params),
            "done": 0,
            "total": total,
            "created_at": now,
            "updated_at": now,
            "expires_at": int(time.time()) + self._retention_s,
        }
        if correlation_id:
            item["correlation_id"] = correlation_id
        await self.table.create(item)
        return item

    async def in_flight(self, tenant: str, limit: int) -> int:
        """How many of the tenant's jobs are not final, counted up to ``limit`` (the index
        is eventually consistent: a job that just ended may still count for a moment)."""
        page = await self.table.query(
            "#active = :tenant",
            names={"#active": "active"},
            values={":tenant": partition(tenant)},
            index=IN_FLIGHT_INDEX,
            limit=limit,
        )
        return len(page.items)

    async def get(self, job: JobRef, *, consistent: bool = False) -> Item | None:
        """The job's META item (params included), or None."""
        return await self.table.get(_meta(job), consistent=consistent)

    async def start(self, job: JobRef) -> Item:
        """Mark the job running (again, for a later part); ``ConditionFailed`` when it is
        missing or already final."""
        return await self.table.update(
            _meta(job),
            {"status": "running", "updated_at": utc_timestamp()},
            condition="#status IN (:queued, :running)",
            names={"#status": "status"},
            values={":queued": "queued", ":running": "running"},
        )

    async def save_results(
        self, job: JobRef, results: Iterable[tuple[int, Mapping[str, Any]]], done: int
    ) -> None:
        """Store results (``(index, result)`` pairs, written again harmlessly on a retry)
        and set the progress to ``done``."""
        puts = [
            {"pk": job.pk, "sk": _result_sk(index), "index": index, **result}
            for index, result in results
        ]
        if puts:
            written = await self.table.batch_write(puts)
            if not written.complete:
                raise DependencyUnavailable(
                    "dynamodb", f"{len(written.unprocessed_puts)} result(s) not written"
                )
        await self.table.update(
            _meta(job),
            {"done": done, "updated_at": utc_timestamp()},
            condition="#status = :running",
            names={"#status": "status"},
            values={":running": "running"},
        )

    async def finish(self, job: JobRef, status: str, error: str | None = None) -> None:
        """Make the job final (``succeeded`` or ``failed``); a final job stays as it is."""
        if status not in FINAL:
            raise ValueError(f"status must be one of {sorted(FINAL)}, not {status!r}")
        # Already final: a redelivered last part, or a job failed meanwhile; it stays.
        with contextlib.suppress(ConditionFailed):
            await self.table.update(
                _meta(job),
                {"status": status, "error": error, "active": None, "updated_at": utc_timestamp()},
                condition="NOT (#status IN (:succeeded, :failed))",
                names={"#status": "status"},
                values={":succeeded": "succeeded", ":failed": "failed"},
            )

    async def give_up(self, job: JobRef, reason: str) -> None:
        """Make the job ``failed`` with ``reason`` (cut to 500 characters), from a caller
        that is failing anyway: if that write fails too, it is logged, not raised (the
        caller's own error matters more)."""
        try:
            await self.finish(job, "failed", reason[:_ERROR_MAX])
        except Exception:
            logger.exception("job %s: could not mark it failed (%s)", job, reason)
        else:
            logger.warning("job %s failed: %s", job, reason)

    async def fold(
        self,
        job: JobRef,
        chunk: int,
        partial: Any,
        reduce: Callable[[Any, Any], Any],
        finish: Callable[[Any], Any],
        *,
        max_tries: int = 30,
    ) -> Item | None:
        """Fold chunk ``chunk``'s ``partial`` (a JSON value) into the job with ``reduce``;
        when it is the last chunk, the job ``succeeded`` with ``finish(acc)`` as its result.

        Returns the job after the fold, or as it was when the chunk was folded before or
        the job is final (nothing changes then); None when the job does not exist. Folds
        that race are retried (re-read, reduce again) after a short jittered pause, up to
        ``max_tries`` times; then :class:`ConditionFailed` (the chunk's message returns).
        """
        for attempt in range(max_tries):
            meta = await self.get(job, consistent=True)
            if meta is None or meta["status"] in FINAL:
                return meta
            chunks = folded(meta)
            if chunk in chunks:
                return meta
            done = int(meta.get("done", 0))
            acc = partial if "acc" not in meta else reduce(json.loads(meta["acc"]), partial)
            changes: dict[str, Any] = {
                "acc": json.dumps(acc),
                "done": done + 1,
                "chunks_done": chunks | {chunk},
                "status": "running",
                "updated_at": utc_timestamp(),
            }
            if done + 1 >= int(meta["total"]):
                changes |= {
                    "status": "succeeded",
                    "result": json.dumps(finish(acc)),
                    "active": None,
                }
            try:
                return await self.table.update(
                    _meta(job),
                    changes,
                    condition="#done = :done AND #status IN (:queued, :running)",
                    names={"#done": "done", "#status": "status"},
                    values={":done": done, ":queued": "queued", ":running": "running"},
                )
            except ConditionFailed:
                # Another chunk folded first: back off a little, then again.
                await self._sleep(_FOLD_BACKOFF.delay(attempt))
        raise ConditionFailed(f"job {job}: chunk {chunk} lost {max_tries} races to fold")

    async def done_indexes(self, job: JobRef) -> set[int]:
        """The indexes of the results stored so far (every page, strongly consistent)."""
        indexes: set[int] = set()
        start: Key | None = None
        while True:
            page = await self._results(job, None, start, consistent=True)
            indexes.update(int(item["index"]) for item in page.items)
            if page.next_key is None:
                return indexes
            start = page.next_key

    async def results(
        self, job: JobRef, limit: int, after: int | None = None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Up to ``limit`` results in index order after index ``after``; and the index to
        pass as ``after`` for the next page (None on the last page)."""
        start = {"pk": job.pk, "sk": _result_sk(after)} if after is not None else None
        page = await self._results(job, limit, start)
        items = [{k: v for k, v in item.items() if k not in ("pk", "sk")} for item in page.items]
        more = page.next_key is not None and len(items) == limit
        return items, (int(items[-1]["index"]) if more and items else None)

    async def _results(
        self, job: JobRef, limit: int | None, start: Key | None, *, consistent: bool = False
    ) -> Page:
        return await self.table.query(
            "#pk = :pk AND begins_with(#sk, :results)",
            names={"#pk": "pk", "#sk": "sk"},
            values={":pk": job.pk, ":results": _RESULT},
            limit=limit,
            start_key=start,
            consistent=consistent,
        )
