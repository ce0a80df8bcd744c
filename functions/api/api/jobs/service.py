"""Create jobs and show them. Creating a job is writing its record (``queued``): the jobs
table's stream brings the record to the relay function, which publishes the job's first
messages (:mod:`lambdaloop.outbox`), so a job that was stored always runs, even when this
function dies right after the write.

The job's id comes from :func:`api.idempotency.new_record_id`: a retry of a request with an
Idempotency-Key names the same job, and when the first attempt's write went in (its answer
lost), the retry finds that job and answers with it instead of storing a second one.

Jobs belong to the caller's tenant, and each tenant may have ``in_flight_limit`` jobs queued
or running at once; over it, a new job is refused (429) until one ends. The count comes from
an index, so requests racing each other may overshoot the limit by as many as raced (the
stage's throttles bound that).
"""

from __future__ import annotations

import asyncio
from typing import Any

from api.errors import BadRequest, InvalidCursor, NotFound, TooManyRequests
from lambdaloop.blobs import Bucket
from lambdaloop.compute.kinds import plan
from lambdaloop.errors import ConditionFailed
from lambdaloop.jobs import COMPUTE_JOB, FETCH_JOB, JobRef, JobStore, job_view

__all__ = ["JobsService"]

#: How long a result's ``body_url`` works.
BODY_URL_EXPIRES_S = 900
#: When a tenant at its limit should try again: most jobs end within a minute.
IN_FLIGHT_RETRY_AFTER_S = 30


class JobsService:
    def __init__(
        self, store: JobStore, *, in_flight_limit: int, bodies: Bucket | None = None
    ) -> None:
        self.store = store
        self._bodies = bodies
        self._in_flight_limit = in_flight_limit

    async def fetch(
        self,
        job: JobRef,
        urls: list[str],
        concurrency: int,
        store_bodies: bool,
        correlation_id: str | None,
    ) -> None:
        """Store fetch job ``job`` of ``urls`` (queued)."""
        if store_bodies and self._bodies is None:
            raise BadRequest(
                "this stack has no results bucket for bodies", field="body.store_bodies"
            )
        params = {"urls": urls, "concurrency": concurrency, "store_bodies": store_bodies}
        await self._create(job, FETCH_JOB, params, len(urls), correlation_id)

    async def compute(
        self,
        job: JobRef,
        kind_name: str,
        params: dict[str, Any],
        chunks: int | None,
        correlation_id: str | None,
    ) -> None:
        """Store compute job ``job`` (queued; one message per chunk follows). Bad params
        raise :class:`~lambdaloop.compute.kinds.ParamsError` naming the field."""
        kind, _, works = plan(kind_name, params, chunks)
        stored = {"kind": kind.name, "params": params, "chunks": len(works)}
        await self._create(job, COMPUTE_JOB, stored, len(works), correlation_id)

    async def _create(
        self,
        job: JobRef,
        type_: str,
        params: dict[str, Any],
        total: int,
        correlation_id: str | None,
    ) -> None:
        """Store the job unless the tenant is at its limit of jobs in flight; a job already
        stored under this id (an earlier attempt of the same request) is the answer."""
        limit = self._in_flight_limit
        if await self.store.in_flight(job.tenant, limit) >= limit:
            if await self.store.get(job, consistent=True) is not None:
                return  # an earlier attempt stored it, and it counts towards the limit
            raise TooManyRequests(
                f"{limit} jobs are queued or running already; try again when one has ended",
                retry_after_s=IN_FLIGHT_RETRY_AFTER_S,
                limit=limit,
            )
        try:
            await self.store.create(job, type_, params, total, correlation_id=correlation_id)
        except ConditionFailed:
            if await self.store.get(job, consistent=True) is None:
                raise
            # The same request raced itself (a retry while the first attempt still ran).

    async def get(self, tenant: str, job_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
        """The job with a page of its results (NotFound for no job; InvalidCursor for a cursor
        this listing did not give)."""
        after = _decode_cursor(cursor) if cursor is not None else None
        ref = JobRef(tenant, job_id)
        # Strongly consistent: a client following the Location of a new job finds it.
        meta = await self.store.get(ref, consistent=True)
        if meta is None:
            raise NotFound(f"Job {job_id} does not exist")
        job = job_view(meta)
        if meta["type"] != FETCH_JOB:
            return job  # a folded job: its result is one value
        results, last = await self.store.results(ref, limit, after)
        if self._bodies is not None:
            await asyncio.gather(*(self._link_body(result) for result in results))
        job["result"] = {
            "results": results,
            "next_cursor": None if last is None else str(last),
        }
        return job

    async def _link_body(self, result: dict[str, Any]) -> None:
        key = result.pop("body_key", None)
        if isinstance(key, str) and self._bodies is not None:
            result["body_url"] = await self._bodies.presigned_get(key, BODY_URL_EXPIRES_S)


def _decode_cursor(cursor: str) -> int:
    """The index a cursor holds (the last result of the page before)."""
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 9):
        raise InvalidCursor("cursor is not one this listing gave", field="query.cursor")
    return int(cursor)
