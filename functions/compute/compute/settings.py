"""The compute function's settings, read once at cold start."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lambdaloop.settings import Settings, integer, number, text, url

__all__ = ["ComputeSettings", "get_compute_settings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ComputeSettings(Settings):
    jobs_table: str = text("JOBS_TABLE")
    queue_url: str = url("COMPUTE_QUEUE_URL")
    #: The queue's maxReceiveCount: the attempt that reaches it is the last one.
    max_attempts: int = integer("COMPUTE_MAX_ATTEMPTS", 5, minimum=1, maximum=1000)
    #: Processes a chunk is spread over; 0: the CPUs this environment may use (Lambda gives
    #: one vCPU per 1,769 MB of memory). With 1 the chunk runs in this process.
    workers: int = integer("COMPUTE_WORKERS", 0, minimum=0, maximum=64)
    #: Seconds kept before the invocation's deadline to give up a chunk and report it
    #: (the pool's per-task timeout is what is left minus this).
    margin_s: float = number("COMPUTE_MARGIN_S", 2.0, minimum=0, maximum=900)
    #: Backoff before a failed chunk's next attempt: base x 2^(n-1), capped, jittered.
    retry_base_s: float = number("COMPUTE_RETRY_BASE_S", 2.0, minimum=0, maximum=3600)
    retry_max_s: float = number("COMPUTE_RETRY_MAX_S", 300.0, minimum=0, maximum=43_200)


@functools.cache
def get_compute_settings() -> ComputeSettings:
    return ComputeSettings.from_env()
