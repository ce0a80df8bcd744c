"""The SQS batch processor, timed in-process through the Lambda handler, beside Powertools'.

Each batch is an SQS event in the shape Lambda delivers it (built by the local emulator's own
code from ReceiveMessage-shaped messages: messageId, receiptHandle, an
:class:`~lambdaloop.queue.Envelope` body, attributes with ApproximateReceiveCount, a
correlation_id message attribute, eventSource ``aws:sqs``, eventSourceARN...). Every record's
handler parses the envelope and awaits 50 ms of "I/O" (``asyncio.sleep``); the ideal is one
I/O time, 50 ms, whatever the batch size. Sizes: 10, 1,000 and 10,000 records (Lambda's
largest batch on a standard queue).

- ``lambdaloop``: :class:`~lambdaloop.consumer.SqsProcessor` with one handler, a bound of
  ``concurrency`` = the batch size (>= 1,000 from 1,000 records on) and no idempotency guard,
  in an ``async def`` handler wrapped by :func:`~lambdaloop.runtime.lambda_handler` (the
  invocation scope, its deadline and task tracking: what a function pays).
- ``AsyncBatchProcessor``: Powertools' ``async_process_partial_response`` in a sync handler,
  its record handler parsing the same envelope (``Envelope.from_json``) and awaiting the same
  sleep. It gathers every record at once (no bound). How it gets a loop depends on
  ``LAMBDA_TASK_ROOT``: set (as on Lambda), it runs on ``asyncio.get_event_loop()``, here the
  layer's loop, which is what is timed; unset, it calls ``asyncio.run()`` (a new loop per
  batch, and the thread is left with no current loop), shown in the overhead table.
- ``BatchProcessor``: Powertools' sync ``process_partial_response``, its record handler
  parsing the envelope and blocking 50 ms (``time.sleep``): one record after the other, so it
  runs only where that takes at most --sync-max-s seconds; larger sizes are shown as skipped
  with the time they would take.
- ``floor``: no processor at all, one ``asyncio.gather`` over the records (parse, then the
  I/O) on the layer's loop: a reference for the goals (what a plain gather of one task per
  record costs on this machine, in this process), not a peer.

A second table times the same processors with no I/O (the handler returns ``None`` after
the parse) on 10,000 records: the per-record overhead.

Every batch must come back with no ``batchItemFailures``. Peers run round-robin (the one
going first rotates) after one uncounted warm-up batch each; ``gc.collect()`` runs before
each timed batch, outside the clock, so no peer pays for another's garbage.

Run it with ``make bench`` or, from any directory, ``.venv/bin/python bench/consumer.py``
(``--runs N`` for more runs per size, ``--json`` to print the raw numbers too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from benchkit import ROOT, BenchError, import_paths, lambda_context, p90

if TYPE_CHECKING:
    pass


#: The awaited (or, for the sync peer, blocking) I/O of each record: the ideal batch time.
IO_S = 0.05
SIZES = (10, 1_000, 10_000)
#: lambdaloop's median over the ideal, at most, per batch size.
GOALS = {10: 1.1, 1_000: 1.2, 10_000: 2.0}
#: Sizes where lambdaloop must be at least as fast as AsyncBatchProcessor (same run).
GOAL_PEER_SIZES = (1_000, 10_000)
#: Records of the no-I/O batch, and lambdaloop's per-record overhead on it, at most: in
#: microseconds, and against the bare gather of the same run.
OVERHEAD_RECORDS = 10_000
GOAL_OVERHEAD_US = 10.0
GOAL_OVERHEAD_VS_FLOOR = 1.15

QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:NotifyQueue"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/NotifyQueue"
MESSAGE_TYPE = "bench"

Handler = Callable[[dict[str, Any], Any], Any]


# ------------------------------------------------------------------------------------- events


def sqs_batch(records: int) -> dict[str, Any]:
    """An SQS event of ``records`` envelopes, as Lambda delivers it (the emulator's code)."""
    from lambdaloop.queue import Envelope
    from lambdaloop_local.sqs import SqsEventSourceConfig, sqs_event

    now_ms = str(int(time.time() * 1000))
    messages = []
    for n in range(records):
        body = Envelope(MESSAGE_TYPE, f"bench-{n}", {"n": n, "user_id": n % 97}).to_json()
        messages.append(
            {
                "MessageId": str(uuid.uuid4()),
                "ReceiptHandle": f"AQEB{uuid.uuid4().hex}{uuid.uuid4().hex}",
                "MD5OfBody": hashlib.md5(body.encode()).hexdigest(),
                "Body": body,
                "Attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": now_ms,
                    "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                    "ApproximateFirstReceiveTimestamp": now_ms,
                },
                "MessageAttributes": {
                    "correlation_id": {"DataType": "String", "StringValue": f"corr-{n}"}
                },
            }
        )
    config = SqsEventSourceConfig(
        queue_url=QUEUE_URL, queue_arn=QUEUE_ARN, report_batch_item_failures=True
    )
    return sqs_event(messages, config)


# -------------------------------------------------------------------------------------- peers


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    label: str
    handler: Handler
    #: Environment variables set (outside the clock) while this peer runs.
    environ: Mapping[str, str | None] = field(default_factory=dict)


def lambdaloop_peer(records: int, io_s: float) -> Peer:
    """SqsProcessor in an ``async def`` handler behind ``lambda_handler``."""
    from lambdaloop.consumer import RecordContext, SqsProcessor
    from lambdaloop.queue import Envelope
    from lambdaloop.runtime import lambda_handler

    async def on_message(envelope: Envelope, context: RecordContext) -> None:
        if io_s:
            await asyncio.sleep(io_s)

    processor = SqsProcessor({MESSAGE_TYPE: on_message}, concurrency=max(1, records))

    async def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return await processor.process(event)

    return Peer("lambdaloop", "lambdaloop SqsProcessor", lambda_handler(handler))


def floor_peer(io_s: float) -> Peer:
    """No processor: one gather over the records (parse, then the I/O) on the layer's loop.
    No failure reporting, no bound, no deadline: a plain asyncio consumer."""
    from lambdaloop.queue import Envelope
    from lambdaloop.runtime import get_loop

    async def one(record: Mapping[str, Any]) -> None:
        Envelope.from_json(record["body"])
        if io_s:
            await asyncio.sleep(io_s)

    async def batch(records: Sequence[Mapping[str, Any]]) -> None:
        await asyncio.gather(*(one(record) for record in records))

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        get_loop().run_until_complete(batch(event["Records"]))
        return {"batchItemFailures": []}

    return Peer("floor", "bare asyncio.gather (floor)", handler)


def powertools_async_peer(io_s: float, *, on_lambda: bool = True) -> Peer:
    """AsyncBatchProcessor through ``async_process_partial_response`` (unbounded gather)."""
    from aws_lambda_powertools.utilities.batch import (
        AsyncBatchProcessor,
        EventType,
        async_process_partial_response,
    )
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    from lambdaloop.queue import Envelope

    processor = AsyncBatchProcessor(event_type=EventType.SQS)

    async def record_handler(record: SQSRecord) -> None:
        Envelope.from_json(record.body)
        if io_s:
            await asyncio.sleep(io_s)

    def handler(event: dict[str, Any], context: Any) -> Any:
        return async_process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )

    if on_lambda:
        return Peer(
            "pt_async",
            "Powertools AsyncBatchProcessor",
            handler,
            {"LAMBDA_TASK_ROOT": str(ROOT / "functions")},
        )
    return Peer(
        "pt_async_run",
        "AsyncBatchProcessor, asyncio.run",
        handler,
        {"LAMBDA_TASK_ROOT": None},
    )


def powertools_sync_peer(io_s: float) -> Peer:
    """BatchProcessor through ``process_partial_response``: one record after the other."""
    from aws_lambda_powertools.utilities.batch import (
        BatchProcessor,
        EventType,
        process_partial_response,
    )
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    from lambdaloop.queue import Envelope

    processor = BatchProcessor(event_type=EventType.SQS)

    def record_handler(record: SQSRecord) -> None:
        Envelope.from_json(record.body)
        if io_s:
            time.sleep(io_s)

    def handler(event: dict[str, Any], context: Any) -> Any:
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )

    return Peer("pt_sync", "Powertools BatchProcessor", handler)


# ---------------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in changes}

    def apply(values: Mapping[str, str | None]) -> None:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    apply(changes)
    try:
        yield
    finally:
        apply(saved)


def run_batch(peer: Peer, event: dict[str, Any], context: Any) -> float:
    """One batch through ``peer``'s Lambda handler; its duration in seconds."""
    from lambdaloop.runtime import get_loop

    with environment(peer.environ):
        get_loop()  # the layer's loop is the thread's current loop, as in a warm environment
        gc.collect()
        started = time.perf_counter()
        response = peer.handler(event, context)
        elapsed = time.perf_counter() - started
    if response != {"batchItemFailures": []}:
        raise BenchError(f"{peer.label}: the batch did not come back clean: {str(response)[:300]}")
    return elapsed


def round_robin(
    peers: Sequence[Peer], event: dict[str, Any], context: Any, runs: int
) -> dict[str, list[float]]:
    """One uncounted batch per peer, then ``runs`` rounds, rotating who goes first."""
    for peer in peers:
        run_batch(peer, event, context)
    samples: dict[str, list[float]] = {peer.name: [] for peer in peers}
    for round_no in range(runs):
        shift = round_no % len(peers)
        for peer in [*peers[shift:], *peers[:shift]]:
            samples[peer.name].append(run_batch(peer, event, context))
    return samples


@dataclass(slots=True)
class Results:
    runs: int
    sync_max_s: float
    #: records -> peer name -> seconds per batch; the sync peer is absent where skipped.
    io: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    overhead: dict[str, list[float]] = field(default_factory=dict)


def measure(args: argparse.Namespace) -> Results:
    context = lambda_context("ConsumerBench")
    results = Results(args.runs, args.sync_max_s)
    for records in SIZES:
        event = sqs_batch(records)
        peers = [lambdaloop_peer(records, IO_S), powertools_async_peer(IO_S), floor_peer(IO_S)]
        if records * IO_S <= args.sync_max_s:
            peers.append(powertools_sync_peer(IO_S))
        results.io[records] = round_robin(peers, event, context, args.runs)
    event = sqs_batch(OVERHEAD_RECORDS)
    peers = [
        lambdaloop_peer(OVERHEAD_RECORDS, 0.0),
        powertools_async_peer(0.0),
        powertools_async_peer(0.0, on_lambda=False),
        powertools_sync_peer(0.0),
        floor_peer(0.0),
    ]
    results.overhead = round_robin(peers, event, context, args.runs)
    return results


# ------------------------------------------------------------------------------------- report


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


IO_LABELS = {
    "lambdaloop": "lambdaloop SqsProcessor",
    "pt_async": "Powertools AsyncBatchProcessor",
    "pt_sync": "Powertools BatchProcessor",
    "floor": "bare asyncio.gather (floor)",
}
OVERHEAD_LABELS = {
    "lambdaloop": "lambdaloop SqsProcessor",
    "pt_async": "AsyncBatchProcessor (LAMBDA_TASK_ROOT set)",
    "pt_async_run": "AsyncBatchProcessor (asyncio.run)",
    "pt_sync": "BatchProcessor (sync)",
    "floor": "bare asyncio.gather (floor)",
}


def render_io(results: Results) -> list[str]:
    ideal_ms = IO_S * 1e3
    lines = [
        f"SQS batches, {ideal_ms:.0f} ms of I/O per record (ideal = one I/O = {ideal_ms:.0f} ms; "
        f"N={results.runs} runs per size, medians; python {platform.python_version()}, "
        f"Powertools {version('aws-lambda-powertools')})",
        f"{'records':>8}  {'processor':<32}{'median ms':>10}{'p90 ms':>9}{'x ideal':>9}"
        f"{'vs lambdaloop':>15}{'vs floor':>10}   goal",
    ]
    for records, samples in results.io.items():
        ours = statistics.median(samples["lambdaloop"])
        floor = statistics.median(samples["floor"])
        for name, label in IO_LABELS.items():
            if name not in samples:
                skipped = f"skipped (would take {records * IO_S:,.0f} s)"
                lines.append(f"{records:>8,}  {label:<32}{skipped:>43}")
                continue
            median = statistics.median(samples[name])
            ratio = median / IO_S
            goal = ""
            if name == "lambdaloop":
                goal = f"<= {GOALS[records]}x ideal {met(ratio <= GOALS[records])}"
            lines.append(
                f"{records:>8,}  {label:<32}{median * 1e3:>10.1f}{p90(samples[name]) * 1e3:>9.1f}"
                f"{ratio:>8.2f}x{median / ours:>14.2f}x{median / floor:>9.2f}x   {goal}"
            )
    ratios = {
        records: statistics.median(samples["lambdaloop"]) / IO_S
        for records, samples in results.io.items()
    }
    wanted = ", ".join(f"<= {GOALS[records]}x at {records:,}" for records in ratios)
    got = ", ".join(f"{ratio:.2f}x" for ratio in ratios.values())
    all_met = all(ratio <= GOALS[records] for records, ratio in ratios.items())
    lines.append(f"goal: lambdaloop {wanted} -> {met(all_met)} ({got})")
    versus = {
        records: statistics.median(results.io[records]["lambdaloop"])
        / statistics.median(results.io[records]["pt_async"])
        for records in GOAL_PEER_SIZES
        if records in results.io
    }
    lines.append(
        "goal: lambdaloop at most AsyncBatchProcessor's time at "
        + " and ".join(f"{records:,}" for records in versus)
        + f" -> {met(all(ratio <= 1.0 for ratio in versus.values()))} ("
        + ", ".join(f"{ratio:.2f}x" for ratio in versus.values())
        + ")"
    )
    return lines


def render_overhead(results: Results) -> list[str]:
    lines = [
        f"per-record overhead, no I/O (the handler returns None after the parse), "
        f"{OVERHEAD_RECORDS:,} records, N={results.runs} runs, medians",
        f"{'processor':<44}{'batch ms':>10}{'p90 ms':>9}{'us/record':>11}{'vs lambdaloop':>15}"
        f"{'vs floor':>10}",
    ]
    ours = statistics.median(results.overhead["lambdaloop"])
    floor = statistics.median(results.overhead["floor"])
    for name, label in OVERHEAD_LABELS.items():
        median = statistics.median(results.overhead[name])
        lines.append(
            f"{label:<44}{median * 1e3:>10.1f}{p90(results.overhead[name]) * 1e3:>9.1f}"
            f"{median / OVERHEAD_RECORDS * 1e6:>11.2f}{median / ours:>14.2f}x"
            f"{median / floor:>9.2f}x"
        )
    us = ours / OVERHEAD_RECORDS * 1e6
    lines.append(
        f"goal: lambdaloop <= {GOAL_OVERHEAD_US:.0f} us/record -> "
        f"{met(us <= GOAL_OVERHEAD_US)} ({us:.2f} us)"
    )
    lines.append(
        f"goal: lambdaloop <= {GOAL_OVERHEAD_VS_FLOOR}x the bare gather's per-record time -> "
        f"{met(ours / floor <= GOAL_OVERHEAD_VS_FLOOR)} ({ours / floor:.2f}x)"
    )
    return lines


def footnotes(results: Results) -> list[str]:
    return [
        "times: the sync Lambda handler call (event in, batchItemFailures out), every batch clean;",
        "lambdaloop: lambda_handler + SqsProcessor, concurrency = the batch size, no idempotency",
        "  guard, on the layer's loop (get_loop()), deadline from a LocalContext 1 h away;",
        "AsyncBatchProcessor: async_process_partial_response, gather over every record (no bound);",
        "  with LAMBDA_TASK_ROOT set (as on Lambda) it runs on asyncio.get_event_loop(), here the",
        "  layer's loop; without it, asyncio.run(): a new loop per batch, closed after, and the",
        "  thread left with no current loop (set_event_loop(None));",
        "BatchProcessor: process_partial_response, time.sleep per record; run only where that",
        f"  takes <= {results.sync_max_s:g} s (records x {IO_S * 1e3:.0f} ms);",
        "every record handler parses and checks the envelope (Envelope.from_json): lambdaloop's",
        "  processor does it before calling the handler, the Powertools handlers do it themselves;",
        "floor: no processor at all (one gather on the layer's loop, no reporting, bound or",
        "  deadline): what a plain gather of one task per record costs here, for reference.",
    ]


def raw_numbers(results: Results) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "powertools": version("aws-lambda-powertools"),
        "runs": results.runs,
        "io_s": IO_S,
        "io": {str(records): samples for records, samples in results.io.items()},
        "overhead_records": OVERHEAD_RECORDS,
        "overhead": results.overhead,
    }


# --------------------------------------------------------------------------------------- main


def quiet_logs() -> None:
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    logging.getLogger("lambdaloop").setLevel(logging.WARNING)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="timed batches per peer and size (5)")
    parser.add_argument(
        "--sync-max-s",
        type=float,
        default=1.0,
        help="run the sync BatchProcessor only where a batch takes at most this long (1.0)",
    )
    parser.add_argument("--json", action="store_true", help="also print the raw numbers as JSON")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import_paths()
    quiet_logs()
    try:
        results = measure(args)
    except BenchError as exc:
        print(f"consumer: {exc}", file=sys.stderr)
        return 1
    print("\n".join([*render_io(results), "", *render_overhead(results), *footnotes(results)]))
    if args.json:
        print(json.dumps(raw_numbers(results), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
