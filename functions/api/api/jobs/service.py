"""Create jobs and show them: store the job (queued), then publish its first part for the
jobs function.

The record is written before the message is sent, so the consumer always finds it; if the
message cannot be sent, the job says failed and the client gets a 503 (nothing is left queued
that will never run).

Jobs belong to the caller's tenant, and each tenant may have ``in_flight_limit`` jobs queued
or running at once; over it, a new job is refused (429) until one ends. The count comes from
an index, so requests racing each other may overshoot the limit by as many as raced (the
stage's throttles bound that).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from api.errors import BadRequest, NotFound, TooManyRequests
from lambdaloop.blobs import Bucket
from lambdaloop.compute.kinds import plan
from lambdaloop.errors import DependencyError, DependencyUnavailable, PublishError
from lambdaloop.jobs import JobRef, JobStore, public
from lambdaloop.queue import Envelope, OutgoingMessage, Publisher

__all__ = ["COMPUTE", "COMPUTE_JOB", "FETCH", "FETCH_JOB", "JobsService"]

#: The job type stored, and the envelope type the jobs function handles.
FETCH_JOB = "fetch"
FETCH = "job.fetch"
#: The same for compute jobs: the compute function handles one message per chunk.
COMPUTE_JOB = "compute"
COMPUTE = "job.compute"
#: How long a result's ``body_url`` works.
BODY_URL_EXPIRES_S = 900
#: When a tenant at its limit should try again: most jobs end within a minute.
IN_FLIGHT_RETRY_AFTER_S = 30


class JobsService:
    def __init__(
        self,
        store: JobStore,
        queue: Publisher,
        compute_queue: Publisher,
        *,
        in_flight_limit: int,
        bodies: Bucket | None = None,
    ) -> None:
        self.store = store
        self._queue = queue
        self._bodies = bodies
        self._compute_queue = compute_queue
        self._in_flight_limit = in_flight_limit

    async def fetch(
        self,
        tenant: str,
        urls: list[str],
        concurrency: int,
        store_bodies: bool,
        correlation_id: str | None,
    ) -> str:
        """Queue a job fetching ``urls``; the job's id."""
        if store_bodies and self._bodies is None:
            raise BadRequest(
                "this stack has no results bucket for bodies", field="body.store_bodies"
            )
        job = await self._new_job(tenant)
        params = {"urls": urls, "concurrency": concurrency, "store_bodies": store_bodies}
        await self.store.create(job, FETCH_JOB, params, total=len(urls))
        part = Envelope(FETCH, job.part_id(0), {**job.payload(), "part": 0})
        await self._publish(self._queue, job, [part], correlation_id)
        return job.id

    async def compute(
        self,
        tenant: str,
        kind_name: str,
        params: dict[str, Any],
        chunks: int | None,
        correlation_id: str | None,
    ) -> str:
        """Queue a compute job, one message per chunk; the job's id. Bad params raise
        :class:`~lambdaloop.compute.kinds.ParamsError` naming the field."""
        kind, _, works = plan(kind_name, params, chunks)
        job = await self._new_job(tenant)
        stored = {"kind": kind.name, "params": params, "chunks": len(works)}
        await self.store.create(job, COMPUTE_JOB, stored, total=len(works))
        messages = [
            Envelope(
                COMPUTE,
                job.chunk_id(chunk),
                {**job.payload(), "chunk": chunk, "kind": kind.name, "work": part},
            )
            for chunk, part in enumerate(works)
        ]
        await self._publish(self._compute_queue, job, messages, correlation_id)
        return job.id

    async def _new_job(self, tenant: str) -> JobRef:
        """A new job of the tenant's, unless it is at its limit of jobs in flight."""
        limit = self._in_flight_limit
        if await self.store.in_flight(tenant, limit) >= limit:
            raise TooManyRequests(
                f"{limit} jobs are queued or running already; try again when one has ended",
                retry_after_s=IN_FLIGHT_RETRY_AFTER_S,
                limit=limit,
            )
        return JobRef(tenant, uuid.uuid4().hex)

    async def _publish(
        self,
        queue: Publisher,
        job: JobRef,
        envelopes: list[Envelope],
        correlation_id: str | None,
    ) -> None:
        """Send the job's first messages; if any is refused, the job says failed (a chunk
        that was sent finds it final and stops) and the caller gets 503."""
        try:
            await queue.publish_many(
                [OutgoingMessage(envelope, correlation_id=correlation_id) for envelope in envelopes]
            )
        except (PublishError, DependencyError) as exc:
            # The client hears 503 either way.
            await self.store.give_up(job, "not queued")
            raise DependencyUnavailable("sqs", f"job not queued: {exc}") from exc

    async def get(self, tenant: str, job_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
        """The job with a page of its results (NotFound for no job; BadRequest for a cursor
        this listing did not give)."""
        after = _decode_cursor(cursor) if cursor is not None else None
        ref = JobRef(tenant, job_id)
        # Strongly consistent: a client following the Location of a new job finds it.
        meta = await self.store.get(ref, consistent=True)
        if meta is None:
            raise NotFound(f"Job {job_id} does not exist")
        job = public(meta)
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
        raise BadRequest("cursor is not one this listing gave", field="query.cursor")
    return int(cursor)
