"""What the Jobs API accepts and returns.

The jobs function (``functions/jobs``) reads a fetch job's params as written here:
``{"urls": [...], "concurrency": n, "store_bodies": bool}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from lambdaloop.settings import get_runtime_settings

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PAGE",
    "MAX_CONCURRENCY",
    "MAX_PAGE",
    "MAX_URL",
    "MAX_URLS",
    "ComputeRequest",
    "FetchRequest",
    "Job",
    "JobResults",
    "Progress",
    "Queued",
    "Status",
]

MAX_URLS = 1000
MAX_URL = 2048
DEFAULT_CONCURRENCY = 10
#: The fetcher's limit (``lambdaloop.fetch.MAX_CONCURRENCY``), copied: importing the fetcher
#: (and its SSRF and webhook modules) for one number cost the cold start ~5 ms. A unit test
#: keeps the two equal.
MAX_CONCURRENCY = 200
MAX_PAGE = 500
DEFAULT_PAGE = 100

Status = Literal["queued", "running", "succeeded", "failed"]


def _fetch_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL")
    # The jobs function's connector checks the address it connects to; refusing a URL that
    # can never be fetched here tells the client at once. (Imported here: only requests
    # that carry URLs need it.)
    from lambdaloop.ssrf import Policy

    if problem := Policy.for_user_urls(get_runtime_settings().local_mode).url_problem(value):
        raise ValueError(f"cannot be fetched: {problem}")
    return value


FetchUrl = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_URL), AfterValidator(_fetch_url)
]


class FetchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urls: Annotated[list[FetchUrl], Field(min_length=1, max_length=MAX_URLS)]
    #: Requests in flight at once while the job runs.
    concurrency: Annotated[int, Field(strict=True, ge=1, le=MAX_CONCURRENCY)] = DEFAULT_CONCURRENCY
    #: Keep each body (up to the stack's stored-body cap) in the results bucket; each
    #: result then has a ``body_url`` to download it.
    store_bodies: Annotated[bool, Field(strict=True)] = False


class ComputeRequest(BaseModel):
    """A compute job: the kind's params are checked by the kind itself (the service), so
    each kind's rules live in one place: ``lambdaloop.compute.kinds``."""

    model_config = ConfigDict(extra="forbid")

    kind: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    params: dict[str, Any]
    #: How many messages (and so invocations at most) the work is spread over; null: the
    #: kind's default for the params.
    chunks: Annotated[int, Field(strict=True, ge=1)] | None = None


class Queued(BaseModel):
    job_id: str
    status: Literal["queued"]


class Progress(BaseModel):
    #: Items with a result so far, of ``total``.
    done: int
    total: int


class JobResults(BaseModel):
    #: Results in item order (each has the ``index`` of its URL in the request, and a
    #: ``body_url`` valid for 15 minutes when the job stored bodies).
    results: list[dict[str, Any]]
    #: Pass as ``cursor`` for the next page; null on the last page (so far).
    next_cursor: str | None = Field(default=None)


class Job(BaseModel):
    id: str
    type: str
    status: Status
    progress: Progress
    #: Why the job failed (``not queued``, ...); null otherwise.
    error: str | None = None
    created_at: str
    updated_at: str
    #: A fetch job's results (paged); a compute job's result once it succeeded (else null).
    result: JobResults | Any
