"""Create jobs and show them: store the job (queued), then publish its first part for the
jobs function.

The record is written before the message is sent, so the consumer always finds it; if the
message cannot be sent, the job says failed and the client gets a 503 (nothing is left queued
that will never run).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from api.errors import BadRequest, NotFound
from lambdaloop.blobs import Bucket
from lambdaloop.compute.kinds import plan
from lambdaloop.errors import DependencyError, DependencyUnavailable, PublishError
from lambdaloop.jobs import JobStore, public
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


class JobsService:
    def __init__(
        self,
        store: JobStore,
        queue: Publisher,
        compute_queue: Publisher,
        *,
        bodies: Bucket | None = None,
    ) -> None:
        self.store = store
        self._queue = queue
        self._bodies = bodies
        self._compute_queue = compute_queue

    async def fetch(
        self, urls: list[str], concurrency: int, store_bodies: bool, correlation_id: str | None
    ) -> str:
        """Queue a job fetching ``urls``; the job's id."""
        if store_bodies and self._bodies is None:
            raise BadRequest(
                "this stack has no results bucket for bodies", field="body.store_bodies"
            )
        job_id = uuid.uuid4().hex
        params = {"urls": urls, "concurrency": concurrency, "store_bodies": store_bodies}
        await self.store.create(job_id, FETCH_JOB, params, total=len(urls))
        part = Envelope(FETCH, f"{job_id}.0", {"job_id": job_id, "part": 0})
        await self._publish(self._queue, job_id, [part], correlation_id)
        return job_id

    async def compute(
        self, kind_name: str, params: dict[str, Any], chunks: int | None, correlation_id: str | None
    ) -> str:
        """Queue a compute job, one message per chunk; the job's id. Bad params raise
        :class:`~lambdaloop.compute.kinds.ParamsError` naming the field."""
        kind, _, works = plan(kind_name, params, chunks)
        job_id = uuid.uuid4().hex
        stored = {"kind": kind.name, "params": params, "chunks": len(works)}
        await self.store.create(job_id, COMPUTE_JOB, stored, total=len(works))
        messages = [
            Envelope(
                COMPUTE,
                f"{job_id}.c{chunk}",
                {"job_id": job_id, "chunk": chunk, "kind": kind.name, "work": part},
            )
            for chunk, part in enumerate(works)
        ]
        await self._publish(self._compute_queue, job_id, messages, correlation_id)
        return job_id

    async def _publish(
        self,
        queue: Publisher,
        job_id: str,
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
            await self.store.give_up(job_id, "not queued")
            raise DependencyUnavailable("sqs", f"job not queued: {exc}") from exc

    async def get(self, job_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
        """The job with a page of its results (NotFound for no job; BadRequest for a cursor
        this listing did not give)."""
        after = _decode_cursor(cursor) if cursor is not None else None
        # Strongly consistent: a client following the Location of a new job finds it.
        meta = await self.store.get(job_id, consistent=True)
        if meta is None:
            raise NotFound(f"Job {job_id} does not exist")
        job = public(meta)
        if meta["type"] != FETCH_JOB:
            return job  # a folded job: its result is one value
        results, last = await self.store.results(job_id, limit, after)
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
