"""POST to first message through the outbox relay, against the direct publish it replaced.

One run starts the local stack (moto in server mode + a real redis-server + the template's
resources), gives this process the API function's environment and builds the real handler
(``asgi_handler(create_app())``). Before any timing it starts the template's DynamoDB stream
event sources (:meth:`LocalStack.stream_event_sources`, as ``make dev`` runs them) on a loop
of their own, in a thread: each invokes ``RelayFunction`` in its real execution environment
(a worker process of the emulator, started before the first sample so its init phase is not
timed). They run until the end.

Each sample is one ``POST /jobs/fetch`` (one URL) through the handler, an API Gateway HTTP
API (v2) event built by the emulator's own code with the claims the JWT authorizer passes on
(a new tenant per sample: see :func:`new_tenant`), timed with ``time.perf_counter`` from the
call to the moment the job's first message (envelope id ``T#<tenant>#JOB#<job_id>.0``) is
received from JobsQueue by this process (a long-polling ReceiveMessage, which moto answers
as soon as a message is added):

- ``outbox``: the POST alone. It writes the job's record (``queued``); the jobs table's
  stream brings the record to the relay, which publishes the message
  (:func:`lambdaloop.outbox.messages_for`, ``Publisher.publish_many``).
- ``direct``: what the API did before the outbox: the same POST (the same write), then at
  once, on the environment's loop, a ``Publisher.publish_many`` of the same envelope (the
  layer's SQS client, the request's correlation id). The relay publishes this job too, a
  little later: that copy is awaited and deleted outside the clock, so it never overlaps
  the next sample (the first time, the two copies are checked to be the same message: body
  and correlation id).

Each row also shows when the API answered (``direct``: after its publish): the outbox makes
the answer cheaper and the message later.

Lambda polls a stream's shards 4 times a second (AWS's words are quoted in
:meth:`Bench._pause`), and so does the local source
(``lambdaloop_local.streams._POLL_INTERVAL_S`` = 0.25 s): a record waits for the next read,
on average half an interval. Samples run back to back would all land just after a read and
wait almost a whole interval (the source reads again at once after an invocation, then
sleeps), so each sample is preceded, for both rows alike, by an untimed random pause of up
to one interval: writes land at random points of the cycle, as a client's do.

Rows are interleaved in :data:`BLOCKS` blocks (alternating which goes first) after an
uncounted warm-up of each. The handler's stdout (JSON logs, EMF metrics) is captured and
shown only when the run fails.

Run it with ``.venv/bin/python bench/outbox.py`` from any directory (``--iterations N``
samples per row, ``--seed N`` for the pauses, ``--json`` to print the numbers as JSON too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from benchkit import (
    API_CODE_URI,
    BenchError,
    api_event,
    checked,
    import_paths,
    lambda_context,
    quiet_logs,
    with_handler_output_captured,
)

if TYPE_CHECKING:
    from lambdaloop.jobs import JobRef
    from lambdaloop.queue import Publisher
    from lambdaloop_local.stack import LocalStack


#: One URL: the smallest fetch job (one record, one first message).
FETCH_BODY = json.dumps({"urls": ["https://example.com/"]}).encode()
BLOCKS = 10
#: Uncounted samples of each row first (the relay's environment is warmed before).
WARMUP = 5
#: The longest a message may take to be receivable before the run is called failed.
ARRIVAL_TIMEOUT_S = 30.0
#: The relay's quietness: no INFO lines from its environment (it writes to this terminal).
QUIET_FUNCTIONS = {"POWERTOOLS_LOG_LEVEL": "WARNING"}

Sampler = Callable[[], "Sample"]


@dataclass(frozen=True, slots=True)
class Sample:
    #: From the POST's start to its answer (direct: to the end of its publish).
    answer_s: float
    #: From the POST's start to the message's receipt.
    first_message_s: float


# -------------------------------------------------------------------------------- requests


def new_tenant() -> str:
    """A tenant of its own for each sample. The POST counts the tenant's jobs in flight (an
    index query that reads them, up to the limit) and no consumer runs here, so one tenant's
    POSTs would slow down as its queued jobs pile up; a client with a few jobs in flight is
    the case measured."""
    return f"bench-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------------- the relay


class RelayThread:
    """The template's stream event sources, run until :meth:`stop` on a loop in a thread (the
    handler runs the environment's loop on this thread, one call at a time)."""

    def __init__(self, stack: LocalStack) -> None:
        self._stack = stack
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="relay", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(120)
        if self._error is not None:
            raise BenchError(f"the stream event sources did not start: {self._error!r}")
        if self._stop is None:
            raise BenchError("the stream event sources did not start within 120 s")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _run(self) -> None:
        sources = self._stack.stream_event_sources()
        if not sources:
            raise BenchError("the template has no DynamoDB stream event source")
        # The init phase (imports, settings) before the first record, not inside a sample.
        await self._stack.pool("RelayFunction").warm()
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        pollers = [asyncio.create_task(source.run(self._stop)) for source in sources]
        self._ready.set()
        try:
            await asyncio.gather(*pollers)
        finally:
            await self._stack.aclose_functions()


# ------------------------------------------------------------------------------------ the queue


class QueueWatch:
    """Receives (and deletes) JobsQueue's messages, noting when each envelope id came."""

    def __init__(self, stack: LocalStack, url: str) -> None:
        self._sqs = stack.aws_client("sqs")
        self._url = url
        #: Every message received so far, by envelope id: (body, correlation id) per copy.
        self.arrivals: dict[str, list[tuple[str, str | None]]] = {}

    def wait(self, envelope_id: str, copies: int = 1) -> float:
        """The perf_counter time at which the ``copies``-th copy of ``envelope_id`` was
        received (now, if that copy came with an earlier receive)."""
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
        while len(self.arrivals.get(envelope_id, ())) < copies:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{envelope_id}: {len(self.arrivals.get(envelope_id, ()))} of {copies} "
                    f"cop(ies) received within {ARRIVAL_TIMEOUT_S:.0f} s"
                )
            # Long polling: moto answers as soon as a message is added, so the receipt time
            # is the message's, not a polling period's.
            messages = self._sqs.receive_message(
                QueueUrl=self._url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            received = time.perf_counter()
            for message in messages:
                body = message["Body"]
                attribute = (message.get("MessageAttributes") or {}).get("correlation_id")
                copy = (body, attribute["StringValue"] if attribute else None)
                self.arrivals.setdefault(json.loads(body)["id"], []).append(copy)
            if messages:
                self._delete(messages)
            if len(self.arrivals.get(envelope_id, ())) >= copies:
                return received
        return time.perf_counter()

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        entries = [
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)
        ]
        response = self._sqs.delete_message_batch(QueueUrl=self._url, Entries=entries)
        if response.get("Failed"):
            raise BenchError(f"DeleteMessageBatch failed: {response['Failed']}")


# -------------------------------------------------------------------------------------- bench


class Bench:
    def __init__(self, stack: LocalStack, seed: int) -> None:
        from api.app import create_app
        from lambdaloop.asgi import asgi_handler
        from lambdaloop.queue import Publisher
        from lambdaloop.runtime import get_loop

        self.loop = get_loop()
        self.context = lambda_context("ApiFunction")
        self.handler = asgi_handler(create_app())
        self.publisher: Publisher = Publisher(str(stack.resources.refs["JobsQueue"]))
        self.queue = QueueWatch(stack, str(stack.resources.refs["JobsQueue"]))
        self.random = random.Random(seed)
        self.checked_copy = False

    def _pause(self) -> None:
        """A random point of the stream source's polling cycle for the next write."""
        # The cycle is Lambda's: "Lambda polls shards in your DynamoDB stream for records at
        # a base rate of 4 times per second" and "invokes your function as soon as records
        # are available" (https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html,
        # "Polling and batching streams"). DynamoDB itself writes stream records "in
        # near-real time" (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/
        # Streams.html); AWS gives no figure for that part, nor for write-to-invocation as a
        # whole, so only the polling wait is known to carry over from this emulator to AWS.
        from lambdaloop_local.streams import _POLL_INTERVAL_S

        time.sleep(self.random.uniform(0.0, _POLL_INTERVAL_S))

    def _post(self, tenant: str, correlation_id: str) -> JobRef:
        from lambdaloop.jobs import JobRef

        headers = {"x-correlation-id": correlation_id}
        response = self.handler(
            api_event("POST", "/jobs/fetch", tenant, body=FETCH_BODY, headers=headers), self.context
        )
        return JobRef(tenant, checked(response, 202, "POST /jobs/fetch")["job_id"])

    def outbox(self) -> Sample:
        self._pause()
        tenant, correlation_id = new_tenant(), uuid.uuid4().hex
        started = time.perf_counter()
        job = self._post(tenant, correlation_id)
        answered = time.perf_counter()
        received = self.queue.wait(job.part_id(0))
        return Sample(answered - started, received - started)

    def direct(self) -> Sample:
        from lambdaloop.messages import FetchPart
        from lambdaloop.queue import OutgoingMessage

        self._pause()
        tenant, correlation_id = new_tenant(), uuid.uuid4().hex
        started = time.perf_counter()
        job = self._post(tenant, correlation_id)
        message = OutgoingMessage(FetchPart(job, 0).envelope(), correlation_id=correlation_id)
        self.loop.run_until_complete(self.publisher.publish_many([message]))
        answered = time.perf_counter()
        received = self.queue.wait(job.part_id(0))
        # The relay's copy of the same job, outside the clock: the next sample starts with
        # an idle relay and an empty queue.
        self.queue.wait(job.part_id(0), copies=2)
        if not self.checked_copy:
            (direct, direct_id), (relayed, relayed_id) = self.queue.arrivals[job.part_id(0)]
            same_ids = direct_id == relayed_id == correlation_id
            if json.loads(direct) != json.loads(relayed) or not same_ids:
                raise BenchError(
                    f"the relay's message differs: {relayed} ({relayed_id}), "
                    f"not {direct} ({direct_id})"
                )
            self.checked_copy = True
        return Sample(answered - started, received - started)


def interleave(samplers: dict[str, Sampler], n: int) -> dict[str, list[Sample]]:
    """:data:`WARMUP` uncounted samples of each, then :data:`BLOCKS` rounds of ``n / BLOCKS``
    samples per row, alternating which row goes first."""
    for sampler in samplers.values():
        for _ in range(WARMUP):
            sampler()
    names = list(samplers)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    per_block = n // BLOCKS
    for block in range(BLOCKS):
        order = names if block % 2 == 0 else names[::-1]
        for name in order:
            samples[name].extend(samplers[name]() for _ in range(per_block))
    return samples


# ------------------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class Stats:
    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = [s * 1e3 for s in seconds]
        cuts = statistics.quantiles(ms, n=100, method="inclusive")
        return cls(len(ms), statistics.median(ms), cuts[89], cuts[98], statistics.fmean(ms))


LABELS = {
    "outbox": "outbox (write; stream -> relay)",
    "direct": "direct (write + publish_many)",
}


def summarize(samples: dict[str, list[Sample]]) -> dict[str, dict[str, Stats]]:
    return {
        name: {
            "answer": Stats.of([s.answer_s for s in values]),
            "first_message": Stats.of([s.first_message_s for s in values]),
            "after_answer": Stats.of([s.first_message_s - s.answer_s for s in values]),
        }
        for name, values in samples.items()
    }


def render_table(
    stats: dict[str, dict[str, Stats]], args: argparse.Namespace, redis_kind: str
) -> list[str]:
    from lambdaloop_local.streams import _POLL_INTERVAL_S

    peer = stats["direct"]["first_message"].p50_ms
    lines = [
        f"outbox relay: POST /jobs/fetch to its first message on JobsQueue (in-process API "
        f"handler, moto + {redis_kind}; python {platform.python_version()}; "
        f"N={args.iterations} per row, {os.cpu_count()} CPU(s))",
        f"{'way':<34}{'answer p50 ms':>14}{'1st msg p50 ms':>16}{'p99 ms':>9}{'vs direct':>11}",
    ]
    for name, label in LABELS.items():
        answer, first = stats[name]["answer"], stats[name]["first_message"]
        lines.append(
            f"{label:<34}{answer.p50_ms:>14.1f}{first.p50_ms:>16.1f}{first.p99_ms:>9.1f}"
            f"{first.p50_ms / peer:>10.2f}x"
        )
    after = stats["outbox"]["after_answer"]
    interval_ms = _POLL_INTERVAL_S * 1e3
    lines += [
        f"outbox, answer -> message: p50 {after.p50_ms:.1f} ms, p99 {after.p99_ms:.1f} ms: "
        f"the stream source polls every {interval_ms:.0f} ms",
        "  as Lambda does (a record waits half an interval on average), then GetRecords on moto,",
        "  the relay's invocation in its worker process and its SendMessageBatch;",
        "answer: the POST's (direct: POST + publish_many, as the API used to answer);",
        "1st msg: POST start -> the message received by a long-polling ReceiveMessage here;",
        "each sample after an untimed random pause of up to one poll interval; a new tenant",
        "  each; the relay's copy of each direct job awaited outside the clock (the first",
        "  checked identical to the direct one).",
        f"{BLOCKS} interleaved blocks, {WARMUP} warm-up samples per row discarded.",
    ]
    return lines


def raw_numbers(
    stats: dict[str, dict[str, Stats]], args: argparse.Namespace, redis_kind: str
) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "redis": redis_kind,
        "iterations": args.iterations,
        "rows": {
            name: {
                measure: {
                    "n": s.n,
                    "p50_ms": round(s.p50_ms, 2),
                    "p90_ms": round(s.p90_ms, 2),
                    "p99_ms": round(s.p99_ms, 2),
                    "mean_ms": round(s.mean_ms, 2),
                }
                for measure, s in by_measure.items()
            }
            for name, by_measure in stats.items()
        },
        "ratio_first_message_p50": round(
            stats["outbox"]["first_message"].p50_ms / stats["direct"]["first_message"].p50_ms, 3
        ),
    }


# --------------------------------------------------------------------------------------- main


def measure(args: argparse.Namespace) -> tuple[dict[str, list[Sample]], str]:
    from lambdaloop_local.stack import LocalStack, StackConfig

    stack = LocalStack(
        StackConfig(aws_port=0, redis_port=0, env_vars={"RelayFunction": QUIET_FUNCTIONS})
    )
    stack.start()
    try:
        os.environ.update({**stack.function_environment("ApiFunction"), **QUIET_FUNCTIONS})
        bench = Bench(stack, args.seed)
        relay = RelayThread(stack)
        relay.start()
        try:
            samples = interleave({"outbox": bench.outbox, "direct": bench.direct}, args.iterations)
        finally:
            relay.stop()
        return samples, stack.redis_kind
    finally:
        stack.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=100, help="timed samples per row (100)")
    parser.add_argument("--seed", type=int, default=1, help="of the random pauses (1)")
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = parser.parse_args(argv)
    if args.iterations < BLOCKS * 2 or args.iterations % BLOCKS:
        parser.error(f"--iterations must be a multiple of {BLOCKS}, at least {BLOCKS * 2}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import_paths(API_CODE_URI)
    quiet_logs()
    measured = with_handler_output_captured("outbox", lambda: measure(args))
    if measured is None:
        return 1
    samples, redis_kind = measured
    stats = summarize(samples)
    print("\n".join(render_table(stats, args, redis_kind)))
    if args.json:
        print(json.dumps(raw_numbers(stats, args, redis_kind), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
