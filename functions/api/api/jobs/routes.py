"""The Jobs routes (added to the app's router, as the Users routes are).

The jobs layer (records, compute kinds) is imported by the first request that creates a job,
as the service is (:mod:`api.jobs.dependencies`), not at cold start.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from api.contract import links, problems
from api.idempotency import new_record_id
from api.identity import JobsRead, JobsWrite
from api.jobs.dependencies import get_jobs_service
from api.jobs.models import DEFAULT_PAGE, MAX_PAGE, ComputeRequest, FetchRequest, Job, Queued
from api.middleware import correlation_id_var

if TYPE_CHECKING:
    from lambdaloop.jobs import JobRef

__all__ = ["install"]

JobId = Annotated[str, Path(min_length=1, max_length=64)]


async def create_fetch_job(
    tenant: JobsWrite, body: FetchRequest, response: Response
) -> dict[str, Any]:
    from lambdaloop.jobs import JobRef

    job = JobRef(tenant, new_record_id())
    await get_jobs_service().fetch(
        job, body.urls, body.concurrency, body.store_bodies, correlation_id_var.get()
    )
    return _queued(job, response)


async def create_compute_job(
    tenant: JobsWrite, body: ComputeRequest, response: Response
) -> dict[str, Any]:
    from lambdaloop.jobs import JobRef

    job = JobRef(tenant, new_record_id())
    # A kind's own checks raise ParamsError naming the field: problems.py makes it a 422.
    await get_jobs_service().compute(
        job, body.kind, body.params, body.chunks, correlation_id_var.get()
    )
    return _queued(job, response)


def _queued(job: JobRef, response: Response) -> dict[str, Any]:
    response.headers["Location"] = f"/jobs/{job.id}"
    return {"job_id": job.id, "status": "queued"}


async def get_job(
    tenant: JobsRead,
    job_id: JobId,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    cursor: Annotated[
        str | None,
        # The pattern is documented, and checked by the service (400, as any cursor this
        # listing did not give).
        Query(
            description="The next_cursor of the page before.",
            json_schema_extra={"pattern": "^[0-9]{1,9}$"},
        ),
    ] = None,
) -> dict[str, Any]:
    return await get_jobs_service().get(tenant, job_id, limit, cursor)


def install(router: APIRouter) -> None:
    add = functools.partial(router.add_api_route, tags=["jobs"])
    queued = {
        202: {
            "links": links("$response.body#/job_id", "get_job", parameter="job_id"),
            "headers": {
                "Location": {"description": "Where the job is.", "schema": {"type": "string"}}
            },
        },
        **problems(429),
    }
    add(
        "/jobs/fetch",
        create_fetch_job,
        methods=["POST"],
        status_code=202,
        response_model=Queued,
        responses=queued,
    )
    add(
        "/jobs/compute",
        create_compute_job,
        methods=["POST"],
        status_code=202,
        response_model=Queued,
        responses=queued,
    )
    add(
        "/jobs/{job_id}", get_job, methods=["GET"], response_model=Job, responses=problems(400, 404)
    )
