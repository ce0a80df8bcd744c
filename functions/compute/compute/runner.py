"""Run one chunk of a compute job and fold its partial result into the job.

A compute job (see :mod:`lambdaloop.compute.kinds`) is split by the API into chunks, one
``job.compute`` message each: ``{"tenant", "job_id", "chunk", "kind", "work"}`` with the id
:meth:`~lambdaloop.jobs.JobRef.chunk_id`. Many invocations run a job's chunks at once
(the event source's MaximumConcurrency is the fan-out width).

- **In the pool.** The chunk's work is split again, once per worker of the environment's
  process pool, and the parts' partials reduced: a chunk uses every vCPU the function has
  (one per 1,769 MB). The pool's per-task timeout is the time left before the deadline's
  margin, so a chunk that cannot finish is given up (its worker replaced) and reported.
- **Folded once.** The partial is folded into the job by :meth:`JobStore.fold`, which
  refuses a chunk folded before: a redelivered chunk is never counted twice. A chunk
  already folded (or of a final job) is not computed again at all.
- **Failures.** Any exception fails the record: it comes back after a capped, jittered
  backoff (:class:`~lambdaloop.errors.RetryLater`), not the queue's 12-minute visibility
  timeout. When the queue's last attempt fails, the consumer calls
  :meth:`ChunkRunner.give_up`, which marks the job ``failed`` with the reason, and sends the
  message on to the dead-letter queue at once. A chunk of an unknown kind fails the job at
  once (no retry could help).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from compute.settings import ComputeSettings
from lambdaloop.compute.kinds import Kind, ParamsError, get_kind, reduce_partials
from lambdaloop.compute.pool import ProcessPool
from lambdaloop.consumer import RecordContext
from lambdaloop.errors import RetryLater
from lambdaloop.jobs import FINAL, JobRef, JobStore, folded
from lambdaloop.messages import ComputeChunk
from lambdaloop.queue import Envelope
from lambdaloop.runtime import Deadline

__all__ = ["ChunkRunner", "compute"]

logger = logging.getLogger(__name__)


async def compute(
    pool: ProcessPool, kind: Kind, work: dict[str, Any], *, deadline: Deadline, margin_s: float
) -> Any:
    """``kind.run(work)``, spread over the pool's workers (one part each) and reduced; the
    parts still running ``margin_s`` before the deadline are given up (TaskTimeout)."""
    parts = kind.split(work, pool.size) if pool.size > 1 else [work]
    left = deadline.remaining()
    timeout = None if math.isinf(left) else max(0.0, left - margin_s)
    partials = await pool.map(kind.run, parts, chunksize=1, timeout=timeout)
    return reduce_partials(kind, partials)


class ChunkRunner:
    """The handler of ``job.compute`` messages."""

    def __init__(self, jobs: JobStore, settings: ComputeSettings, pool: ProcessPool) -> None:
        self._jobs = jobs
        self._settings = settings
        self._pool = pool

    async def __call__(self, envelope: Envelope, context: RecordContext) -> dict[str, Any]:
        message = ComputeChunk.parse(envelope)
        ref, chunk, kind_name, work = message.job, message.chunk, message.kind, message.work
        try:
            return await self.run_chunk(ref, chunk, kind_name, work, context.deadline)
        except Exception as exc:
            raise RetryLater(f"chunk {chunk}: {type(exc).__name__}: {exc}") from exc

    async def give_up(self, envelope: Envelope, context: RecordContext, error: Exception) -> None:
        """The chunk's last attempt failed (the consumer's hook): the job is failed."""
        reason = f"gave up after {context.receive_count} attempts: {error}"
        await self._jobs.give_up(ComputeChunk.parse(envelope).job, reason)

    async def run_chunk(
        self, ref: JobRef, chunk: int, kind_name: str, work: dict[str, Any], deadline: Deadline
    ) -> dict[str, Any]:
        """Compute the chunk (unless it was folded already) and fold it into the job."""
        job = await self._jobs.get(ref, consistent=True)
        if job is None:
            logger.warning("job %s: no record (expired?); chunk %d dropped", ref, chunk)
            return {"status": "missing"}
        if job["status"] in FINAL or chunk in folded(job):
            return {"status": job["status"], "duplicate": chunk in folded(job)}
        try:
            kind = get_kind(kind_name)
        except ParamsError as exc:
            await self._jobs.give_up(ref, f"chunk {chunk}: {exc}")
            return {"status": "failed"}
        partial = await compute(
            self._pool, kind, work, deadline=deadline, margin_s=self._settings.margin_s
        )
        after = await self._jobs.fold(ref, chunk, partial, kind.reduce, kind.finish)
        if after is None:
            return {"status": "missing"}
        return {"status": after["status"], "done": int(after["done"]), "total": int(after["total"])}
