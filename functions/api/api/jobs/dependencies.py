"""The Jobs service of this execution environment, built on first use (and imported then,
as the Users service is)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from api.settings import get_api_settings

if TYPE_CHECKING:
    from api.jobs.service import JobsService

__all__ = ["get_jobs_service", "jobs_service_cache_clear"]


@functools.cache
def get_jobs_service() -> JobsService:
    from api.jobs.service import JobsService
    from lambdaloop.blobs import Bucket
    from lambdaloop.jobs import JobStore
    from lambdaloop.store import Table

    settings = get_api_settings()
    return JobsService(
        JobStore(
            Table(settings.jobs_table, key_schema=("pk", "sk")),
            retention_s=settings.job_retention_days * 86_400,
        ),
        in_flight_limit=settings.jobs_in_flight_limit,
        bodies=Bucket(settings.jobs_results_bucket) if settings.jobs_results_bucket else None,
    )


def jobs_service_cache_clear() -> None:
    """Forget the service (tests that change the environment)."""
    get_jobs_service.cache_clear()
