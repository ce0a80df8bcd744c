"""Compute fan-out: one 16-chunk job at MaximumConcurrency 1, 2 and 4 on the local stack.

One run starts the local stack (moto in server mode, the template's resources) and, for
each width, runs the compute function's SQS event source with ``ComputeMaxConcurrency`` set
to that width (the template parameter that feeds ScalingConfig.MaximumConcurrency), in the
function's real execution environments (worker processes), each with a pool of
``--workers`` processes (1 by default: one vCPU per environment, 1,769 MB).

A job is created and its 16 chunk messages published as ``POST /jobs/compute`` does
(:func:`lambdaloop.compute.kinds.plan`, :meth:`JobStore.create`, one message per chunk);
the time is from the publish to the job's ``succeeded`` (polled every 10 ms in DynamoDB), so
it includes the queue, the folds and the last chunk's completion. Each width first runs an
untimed job so its environments are warm (cold starts are not what is measured).

The kind is ``prime_count`` with n sized so one chunk is about ``--chunk-ms`` of CPU here.
This machine has few cores: widths past the core count cannot speed up, and the table says
how many there are. The ideal is min(width, cores) x the speed of width 1.

Run it with ``make bench`` or ``.venv/bin/python bench/fanout.py`` (``--runs N``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
import uuid
from typing import Any

from benchkit import ROOT, import_paths, quiet_logs

CHUNKS = 16
#: The tenant the jobs belong to.
TENANT = "bench-tenant"
WIDTHS = (1, 2, 4)


def _cores() -> int:
    return len(os.sched_getaffinity(0))


async def _job_time(stack: Any, n: int, poll_s: float = 0.01) -> float:
    """Seconds from publishing a 16-chunk prime_count job to its success."""
    from lambdaloop.compute.kinds import plan
    from lambdaloop.jobs import JobRef, JobStore
    from lambdaloop.queue import Envelope, OutgoingMessage, Publisher
    from lambdaloop.store import Table

    store = JobStore(Table(stack.resources.refs["JobsTable"], client=stack.aws_client("dynamodb")))
    queue = Publisher(stack.resources.refs["ComputeQueue"], client=stack.aws_client("sqs"))
    kind, _, works = plan("prime_count", {"n": n}, CHUNKS)
    job = JobRef(TENANT, uuid.uuid4().hex)
    await store.create(job, "compute", {"kind": kind.name}, total=len(works))
    messages = [
        OutgoingMessage(
            Envelope(
                "job.compute",
                f"{job.id}.c{chunk}",
                {
                    "tenant": TENANT,
                    "job_id": job.id,
                    "chunk": chunk,
                    "kind": kind.name,
                    "work": work,
                },
            )
        )
        for chunk, work in enumerate(works)
    ]
    started = time.perf_counter()
    await queue.publish_many(messages)
    while True:
        meta = await store.get(job, consistent=True)
        if meta is not None and meta["status"] in ("succeeded", "failed"):
            elapsed = time.perf_counter() - started
            if meta["status"] != "succeeded":
                raise RuntimeError(f"job failed: {meta.get('error')}")
            return elapsed
        await asyncio.sleep(poll_s)


async def _measure(session: Any, width: int, n: int, runs: int, workers: int) -> list[float]:
    from lambdaloop_local.stack import LocalStack, StackConfig

    stack = LocalStack(
        StackConfig(
            aws_endpoint=session.aws_endpoint,
            redis_url=session.redis_url,
            env_vars={"ComputeFunction": {"COMPUTE_WORKERS": str(workers)}},
            parameters={"ComputeMaxConcurrency": str(width)},
        )
    )
    stack.start()
    [source] = [
        s
        for s in stack.sqs_event_sources()
        if s.config.queue_url == stack.resources.refs["ComputeQueue"]
    ]
    stop = asyncio.Event()
    poller = asyncio.create_task(source.run(stop))
    try:
        await _job_time(stack, n)  # warm: every environment started, its pool forked
        return [await _job_time(stack, n) for _ in range(runs)]
    finally:
        stop.set()
        await asyncio.wait_for(poller, 60)
        await stack.aclose_functions()


def _n_for(chunk_ms: float) -> int:
    """The n whose 16 prime_count chunks take about ``chunk_ms`` each here."""
    from lambdaloop.compute.kinds import get_kind

    kind = get_kind("prime_count")
    probe = 10**8
    started = time.perf_counter()
    kind.run({"start": 0, "stop": probe})
    per_number_ms = (time.perf_counter() - started) * 1000 / probe
    return int(chunk_ms / per_number_ms * CHUNKS)


async def _main(args: argparse.Namespace) -> None:
    import_paths(ROOT / "functions" / "compute")
    from lambdaloop_local.stack import LocalStack, StackConfig

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    quiet_logs()
    n = args.n or _n_for(args.chunk_ms)
    session = LocalStack(StackConfig(aws_port=0, redis_port=0))
    session.start()
    try:
        timings = {w: await _measure(session, w, n, args.runs, args.workers) for w in WIDTHS}
    finally:
        session.stop()
    cores = _cores()
    base = statistics.median(timings[1])
    print(
        f"compute fan-out: prime_count n={n:,} in {CHUNKS} chunks, {args.workers} pool "
        f"worker(s) per environment, {cores} core(s) here, {args.runs} run(s) per width"
    )
    print(f"{'MaximumConcurrency':>18}  {'median s':>9}  {'speed-up':>8}  {'ideal':>6}  efficiency")
    for width in WIDTHS:
        median = statistics.median(timings[width])
        ideal = min(width, cores)
        speedup = base / median
        print(
            f"{width:>18}  {median:>9.2f}  {speedup:>7.2f}x  {ideal:>5}x  {speedup / ideal:>10.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk-ms", type=float, default=200.0, help="CPU per chunk")
    parser.add_argument("--n", type=int, default=0, help="prime_count n (overrides --chunk-ms)")
    parser.add_argument("--workers", type=int, default=1, help="pool workers per environment")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
