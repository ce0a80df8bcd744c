"""What the Jobs API accepts and returns.

The jobs function (``functions/jobs``) reads a fetch job's params as written here:
``{"urls": [...], "concurrency": n, "store_bodies": bool}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from api.fields import FetchUrl

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PAGE",
    "MAX_CONCURRENCY",
    "MAX_PAGE",
    "MAX_URL",
    "MAX_URLS",
    "ComputeJob",
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


class FetchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urls: Annotated[
        list[Annotated[FetchUrl, Field(max_length=MAX_URL)]],
        Field(min_length=1, max_length=MAX_URLS),
    ]
    #: Requests in flight at once while the job runs.
    concurrency: Annotated[int, Field(strict=True, ge=1, le=MAX_CONCURRENCY), _AS_INT] = (
        DEFAULT_CONCURRENCY
    )
    #: Keep each body (up to the stack's stored-body cap) in the results bucket; each
    #: result then has a ``body_url`` to download it.
    store_bodies: Annotated[bool, Field(strict=True)] = False


# The compute kinds' params as the schema shows them. The kinds check their params
# themselves (lambdaloop.compute.kinds, the one place of their rules); these copy the rules
# so clients and fuzzers can see them, and a unit test keeps the two equal.
MAX_CHUNKS = 1000
SUM_OF_SQUARES_MAX_N = 10**18
PRIME_COUNT_MAX_N = 10**10
SHA256_MAX_SEED = 256
SHA256_MAX_CHAINS = 1000
SHA256_MAX_ROUNDS = 10**7
SHA256_MAX_TOTAL_ROUNDS = 10**8


def _integral(value: Any) -> Any:
    """JSON has one number type: 305.0 is the integer 305 (as JSON Schema's ``integer``
    says), so it is taken as one. Strings and booleans stay refused (strict)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: A JSON integer: strict (no "5", no true), but 5.0 is 5. Its bounds go before this (in
#: the same Annotated), so the schema shows them as minimum and maximum.
_AS_INT = BeforeValidator(_integral)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SumOfSquaresParams(_Params):
    """sum(i * i for i in range(n))."""

    n: Annotated[int, Field(strict=True, ge=0, le=SUM_OF_SQUARES_MAX_N), _AS_INT]


class PrimeCountParams(_Params):
    """How many primes are <= n."""

    n: Annotated[int, Field(strict=True, ge=0, le=PRIME_COUNT_MAX_N), _AS_INT]


class Sha256ChainParams(_Params):
    """``chains`` chains of ``rounds`` SHA-256 rounds from ``seed``; chains * rounds must be
    at most 10**8 (a rule a schema cannot state: the server answers 422 naming
    params.rounds)."""

    seed: Annotated[str, StringConstraints(min_length=1, max_length=SHA256_MAX_SEED)]
    chains: Annotated[int, Field(strict=True, ge=1, le=SHA256_MAX_CHAINS), _AS_INT]
    rounds: Annotated[int, Field(strict=True, ge=1, le=SHA256_MAX_ROUNDS), _AS_INT]


_Chunks = Annotated[int, Field(strict=True, ge=1, le=MAX_CHUNKS), _AS_INT] | None


class _ComputeJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: How many messages (and so invocations at most) the work is spread over; null: the
    #: kind's default for the params.
    chunks: _Chunks = None


class SumOfSquaresJob(_ComputeJob):
    kind: Literal["sum_of_squares"]
    params: SumOfSquaresParams


class PrimeCountJob(_ComputeJob):
    kind: Literal["prime_count"]
    params: PrimeCountParams


class Sha256ChainJob(_ComputeJob):
    kind: Literal["sha256_chain"]
    params: Sha256ChainParams


ComputeJob = Annotated[
    SumOfSquaresJob | PrimeCountJob | Sha256ChainJob, Field(discriminator="kind")
]
"""A compute job as the schema shows it: a union of the kinds, on ``kind``."""


class ComputeRequest(BaseModel):
    """A compute job: the kind's params are checked by the kind itself (the service), so
    each kind's rules live in one place: ``lambdaloop.compute.kinds``. The schema shows
    :data:`ComputeJob`, which states the same rules."""

    model_config = ConfigDict(extra="forbid")

    kind: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    #: Integral numbers (5.0) become integers, as for the model's own fields.
    params: Annotated[
        dict[str, Any], AfterValidator(lambda p: {k: _integral(v) for k, v in p.items()})
    ]
    chunks: _Chunks = None

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        from pydantic import TypeAdapter

        union: JsonSchemaValue = handler(TypeAdapter(ComputeJob).core_schema)
        return union


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
