"""Create jobs and show them: store the job (queued), then publish its first part for the
jobs function.

The record is written before the message is sent, so the consumer always finds it; if the
message cannot be sent, the job says failed and the client gets a 503 (nothing is left queued
that will never run).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from api.errors import BadRequest, NotFound
from lambdaloop.errors import DependencyError, DependencyUnavailable, PublishError
from lambdaloop.jobs import JobStore, public
from lambdaloop.queue import Publisher

__all__ = ["FETCH", "FETCH_JOB", "JobsService"]

logger = logging.getLogger(__name__)

#: The job type stored, and the envelope type the jobs function handles.
FETCH_JOB = "fetch"
FETCH = "job.fetch"


class JobsService:
    def __init__(self, store: JobStore, queue: Publisher) -> None:
        self.store = store
        self._queue = queue

    async def fetch(self, urls: list[str], concurrency: int, correlation_id: str | None) -> str:
        """Queue a job fetching ``urls``; the job's id."""
        job_id = uuid.uuid4().hex
        params = {"urls": urls, "concurrency": concurrency}
        await self.store.create(job_id, FETCH_JOB, params, total=len(urls))
        try:
            await self._queue.publish(
                FETCH,
                {"job_id": job_id, "part": 0},
                id=f"{job_id}.0",
                correlation_id=correlation_id,
            )
        except (PublishError, DependencyError) as exc:
            await self._give_up(job_id)
            raise DependencyUnavailable("sqs", f"job not queued: {exc}") from exc
        return job_id

    async def _give_up(self, job_id: str) -> None:
        try:
            await self.store.finish(job_id, "failed", "not queued")
        except Exception:
            # The client hears 503 either way; the job stays queued until it expires.
            logger.exception("job %s: could not mark it failed", job_id)

    async def get(self, job_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
        """The job with a page of its results (NotFound for no job; BadRequest for a cursor
        this listing did not give)."""
        after = _decode_cursor(cursor) if cursor is not None else None
        # Strongly consistent: a client following the Location of a new job finds it.
        meta = await self.store.get(job_id, consistent=True)
        if meta is None:
            raise NotFound(f"Job {job_id} does not exist")
        results, last = await self.store.results(job_id, limit, after)
        job = public(meta)
        job["result"] = {
            "results": results,
            "next_cursor": None if last is None else str(last),
        }
        return job


def _decode_cursor(cursor: str) -> int:
    """The index a cursor holds (the last result of the page before)."""
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 9):
        raise BadRequest("cursor is not one this listing gave", field="query.cursor")
    return int(cursor)
