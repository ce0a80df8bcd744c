"""The Jobs routes (added to the app's router, as the Users routes are)."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.exceptions import RequestValidationError

from api.jobs.dependencies import jobs_service
from api.jobs.models import DEFAULT_PAGE, MAX_PAGE, ComputeRequest, FetchRequest, Job, Queued
from api.jobs.service import JobsService
from api.middleware import correlation_id_var
from lambdaloop.compute.kinds import ParamsError

__all__ = ["install"]

Service = Annotated[JobsService, Depends(jobs_service)]
JobId = Annotated[str, Path(min_length=1, max_length=64)]


async def create_fetch_job(
    service: Service, body: FetchRequest, response: Response
) -> dict[str, Any]:
    job_id = await service.fetch(
        body.urls, body.concurrency, body.store_bodies, correlation_id_var.get()
    )
    response.headers["Location"] = f"/jobs/{job_id}"
    return {"job_id": job_id, "status": "queued"}


async def create_compute_job(
    service: Service, body: ComputeRequest, response: Response
) -> dict[str, Any]:
    try:
        job_id = await service.compute(
            body.kind, body.params, body.chunks, correlation_id_var.get()
        )
    except ParamsError as exc:
        # The kind's own checks, reported like the model's: 422 naming the field.
        location = ("body", *exc.field.split("."))
        raise RequestValidationError(
            [{"loc": location, "msg": exc.message, "type": "value_error"}]
        ) from exc
    response.headers["Location"] = f"/jobs/{job_id}"
    return {"job_id": job_id, "status": "queued"}


async def get_job(
    service: Service,
    job_id: JobId,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    return await service.get(job_id, limit, cursor)


def install(router: APIRouter) -> None:
    add = functools.partial(router.add_api_route, tags=["jobs"])
    add("/jobs/fetch", create_fetch_job, methods=["POST"], status_code=202, response_model=Queued)
    add(
        "/jobs/compute",
        create_compute_job,
        methods=["POST"],
        status_code=202,
        response_model=Queued,
    )
    add("/jobs/{job_id}", get_job, methods=["GET"], response_model=Job)
