"""Lambda entry point of the compute function (Handler: compute.handler.handler).

Three events:

- an SQS batch (the compute queue's event source, ReportBatchItemFailures): each record is a
  chunk of a job, run by :class:`ChunkRunner` and folded into the job;
- a chunk itself, ``{"tenant", "job_id", "chunk", "kind", "work"}`` (a message's payload), for
  ``sam local invoke -e`` or a retry by hand: run and folded the same way;
- ``{"kind", "params"}``: the whole computation in this invocation, no job, the result
  returned (``{"kind", "result"}``); bad params are a ``ParamsError`` naming the field.

Module scope is the cold start: settings are checked here, and the process pool's workers
are forked now, before any thread exists (boto3 calls run in a thread pool, and a lock held
by another thread at a fork stays held in the child); the pool then serves every warm
invocation.
"""

from __future__ import annotations

from typing import Any

from compute.runner import ChunkRunner, compute
from compute.settings import ComputeSettings, get_compute_settings
from lambdaloop.compute.kinds import plan
from lambdaloop.compute.pool import get_pool
from lambdaloop.consumer import RecordContext, RetryPolicy, SqsProcessor
from lambdaloop.jobs import JobStore
from lambdaloop.messages import COMPUTE, ComputeChunk
from lambdaloop.observability import get_logger, route_logs
from lambdaloop.runtime import current_deadline, get_loop, lambda_handler
from lambdaloop.store import Table

__all__ = ["build_processor", "handler"]


def build_processor(settings: ComputeSettings, runner: ChunkRunner) -> SqsProcessor:
    return SqsProcessor(
        {COMPUTE: runner},
        # The chunks of one batch take turns: each one uses every worker of the pool.
        concurrency=1,
        give_up={COMPUTE: runner.give_up},
        max_receive_count=settings.max_attempts,
        retry=RetryPolicy(
            settings.queue_url, base_s=settings.retry_base_s, max_s=settings.retry_max_s
        ),
    )


_settings = get_compute_settings()
_pool = get_pool(_settings.workers or None)
_runner = ChunkRunner(JobStore(Table(_settings.jobs_table)), _settings, _pool)
_processor = build_processor(_settings, _runner)
route_logs("compute")
get_loop().run_until_complete(_pool.start())


@get_logger().inject_lambda_context(clear_state=True)
@lambda_handler
async def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "Records" in event:
        return await _processor.process(event)
    deadline = current_deadline()
    if "job_id" in event:
        envelope = ComputeChunk.from_payload(event).envelope()
        return await _runner(envelope, RecordContext("direct", 1, {}, deadline))
    kind, work, _ = plan(event.get("kind"), event.get("params"))
    partial = await compute(_pool, kind, work, deadline=deadline, margin_s=_settings.margin_s)
    return {"kind": kind.name, "result": kind.finish(partial)}
