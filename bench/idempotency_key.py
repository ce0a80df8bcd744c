"""What an Idempotency-Key costs a POST: with a fresh key, without one, and a replay.

One run starts the local stack (moto in server mode + a real redis-server + the template's
resources), gives this process the API function's environment and builds the real handler
(``asgi_handler(create_app())``: Mangum, the middleware with the Idempotency-Key guard, the
routes, the jobs service). Every request is a ``POST /jobs/fetch`` of one URL, an API Gateway
HTTP API (v2) event built by the local emulator's own code with the claims API Gateway's JWT
authorizer passes on, timed with ``time.perf_counter`` around the handler call alone (the
event is built before the clock starts):

- ``without key``: no header; the route counts the tenant's jobs in flight (an index query)
  and writes the job (a conditional PutItem): 202.
- ``with key``: the same with a new ``Idempotency-Key`` each time: the guard claims the key
  (a conditional PutItem in the idempotency table), the route runs, and the answer is stored
  (a PutItem): 202, not replayed.
- ``replay``: a retry: the key and body of a request made (untimed) before the blocks, by
  the same tenant. The claim fails, the stored answer is read (a consistent GetItem) and
  sent back, the route does not run: 202 with ``Idempotent-Replayed: true`` and the first
  answer's job id.

Each request has a tenant of its own (a replay, its first request's): the route counts the
tenant's queued jobs, reading them, and no consumer runs here, so one tenant's POSTs would
slow down as its jobs piled up. moto answers an index query by scanning the whole table, so
the jobs a block created are deleted after it (off the clock; the replays' first jobs stay):
the table stays small, as an index query's cost on DynamoDB does not grow with the table.
The DynamoDB requests each row makes are counted (a botocore ``before-send`` hook on the
layer's client) during the warm-up only, off the clock.

DynamoDB is moto, in this process (a thread, the same GIL); its loopback round trip is far
shorter than DynamoDB's, so the guard's two extra requests cost less here than they would
against AWS, and the ratio is a lower bound. Rows are interleaved in :data:`BLOCKS` blocks
(rotating which goes first) after an uncounted warm-up. The handler's stdout (JSON logs, EMF
metrics) is captured and shown only when the run fails.

Run it with ``.venv/bin/python bench/idempotency_key.py`` from any directory
(``--iterations N`` per row, ``--json`` to print the numbers as JSON too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
import uuid
from collections import Counter
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
    from lambdaloop_local.stack import LocalStack


#: One URL: the smallest fetch job.
FETCH_BODY = json.dumps({"urls": ["https://example.com/"]}).encode()
BLOCKS = 10
#: Uncounted calls of each row before the blocks (the DynamoDB requests are counted then).
WARMUP = 30
#: Keys made before the blocks for the replays to retry, in turn.
REPLAY_KEYS = 50

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
#: Checks a request's answer (given the request's event and the answer).
Check = Callable[[dict[str, Any], dict[str, Any]], None]
#: Runs ``n`` timed calls and returns their durations in seconds.
Sampler = Callable[[int], list[float]]


# -------------------------------------------------------------------------------- requests


def new_tenant() -> str:
    return f"bench-{uuid.uuid4().hex[:12]}"


def post_event(tenant: str, key: str | None) -> dict[str, Any]:
    """``POST /jobs/fetch`` as API Gateway passes it on, with ``key`` if given."""
    headers = {} if key is None else {"idempotency-key": key}
    return api_event("POST", "/jobs/fetch", tenant, body=FETCH_BODY, headers=headers)


def job_of(event: dict[str, Any], response: dict[str, Any], *, replayed: bool, what: str) -> JobRef:
    """The job the answer names (the event's tenant's); BenchError unless it is a 202,
    replayed or not as expected."""
    from lambdaloop.jobs import JobRef

    body = checked(response, 202, what)
    headers = {name.lower(): value for name, value in (response.get("headers") or {}).items()}
    if (headers.get("idempotent-replayed") == "true") != replayed:
        raise BenchError(f"{what}: expected {'a' if replayed else 'no'} replay, got {headers}")
    tenant = event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"]
    return JobRef(tenant, body["job_id"])


# ------------------------------------------------------------------------------ samplers


class RequestCounter:
    """Counts the layer's DynamoDB requests by operation (botocore ``before-send``, so a
    retry counts too) while :attr:`on`."""

    def __init__(self, client: Any) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.on = False
        client.meta.events.register("before-send.dynamodb.*", self._on_send)

    def _on_send(self, event_name: str, **kwargs: Any) -> None:
        if self.on:
            with self._lock:
                self.counts[event_name.rsplit(".", 1)[-1]] += 1

    def take(self) -> Counter[str]:
        with self._lock:
            counts, self.counts = self.counts, Counter()
        return counts


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    label: str
    #: The next request's event (built off the clock), and how to check its answer.
    next_request: Callable[[], tuple[dict[str, Any], Check]]


class Bench:
    def __init__(self, stack: LocalStack) -> None:
        from api.app import create_app
        from lambdaloop.asgi import asgi_handler

        self.context = lambda_context("ApiFunction")
        self.handler: Handler = asgi_handler(create_app())
        self._replays: list[tuple[str, str, JobRef]] = []  # tenant, key, first job
        self._next_replay = 0
        #: The jobs the timed requests created, deleted after each block.
        self._created: list[JobRef] = []
        self._dynamodb = stack.aws_client("dynamodb")  # not the layer's: never counted
        self._jobs_table = str(stack.resources.refs["JobsTable"])

    def rows(self) -> list[Row]:
        return [
            Row("without_key", "without Idempotency-Key", self._without_key),
            Row("with_key", "with a new Idempotency-Key", self._with_key),
            Row("replay", "replay (same key, same body)", self._replay),
        ]

    def _without_key(self) -> tuple[dict[str, Any], Check]:
        def check(event: dict[str, Any], response: dict[str, Any]) -> None:
            self._created.append(job_of(event, response, replayed=False, what="POST"))

        return post_event(new_tenant(), None), check

    def _with_key(self) -> tuple[dict[str, Any], Check]:
        def check(event: dict[str, Any], response: dict[str, Any]) -> None:
            job = job_of(event, response, replayed=False, what="POST with a new key")
            self._created.append(job)

        return post_event(new_tenant(), uuid.uuid4().hex), check

    def _replay(self) -> tuple[dict[str, Any], Check]:
        tenant, key, first = self._replays[self._next_replay % len(self._replays)]
        self._next_replay += 1

        def check(event: dict[str, Any], response: dict[str, Any]) -> None:
            got = job_of(event, response, replayed=True, what="POST, a replay")
            if got != first:
                raise BenchError(f"the replay of {key} answered job {got}, not {first}")

        return post_event(tenant, key), check

    def make_replay_keys(self) -> None:
        """The requests the replays retry: made once, untimed."""
        for _ in range(REPLAY_KEYS):
            tenant, key = new_tenant(), uuid.uuid4().hex
            event = post_event(tenant, key)
            response = self.handler(event, self.context)
            first = job_of(event, response, replayed=False, what="POST (to replay)")
            self._replays.append((tenant, key, first))

    def delete_created(self) -> None:
        """Delete the jobs the timed requests created (25 per BatchWriteItem, its limit)."""
        created, self._created = self._created, []
        for start in range(0, len(created), 25):
            requests: list[dict[str, Any]] = [
                {"DeleteRequest": {"Key": {"pk": {"S": job.pk}, "sk": {"S": "META"}}}}
                for job in created[start : start + 25]
            ]
            while requests:
                response = self._dynamodb.batch_write_item(
                    RequestItems={self._jobs_table: requests}
                )
                requests = response.get("UnprocessedItems", {}).get(self._jobs_table, [])

    def sampler(self, row: Row) -> Sampler:
        def run(n: int) -> list[float]:
            samples = []
            for _ in range(n):
                event, check = row.next_request()
                started = time.perf_counter()
                response = self.handler(event, self.context)
                samples.append(time.perf_counter() - started)
                check(event, response)
            return samples

        return run


def interleave(
    samplers: dict[str, Sampler],
    n: int,
    warmup: Callable[[str, Sampler], None],
    after_block: Callable[[], None],
) -> dict[str, list[float]]:
    """``warmup`` of each, then :data:`BLOCKS` rounds of ``n / BLOCKS`` calls per row,
    rotating which row goes first, each round followed by ``after_block`` (untimed)."""
    for name, sampler in samplers.items():
        warmup(name, sampler)
    after_block()
    names = list(samplers)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for block in range(BLOCKS):
        shift = block % len(names)
        for name in [*names[shift:], *names[:shift]]:
            samples[name].extend(samplers[name](n // BLOCKS))
        after_block()
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


@dataclass(frozen=True, slots=True)
class Result:
    stats: dict[str, Stats]
    #: DynamoDB requests per call of each row, by operation (from the warm-up).
    requests: dict[str, dict[str, float]]
    redis_kind: str


def requests_text(per_call: dict[str, float]) -> str:
    total = sum(per_call.values())
    return f"{total:g}: " + ", ".join(f"{op} {n:g}" for op, n in sorted(per_call.items()))


def render_table(result: Result, args: argparse.Namespace, labels: dict[str, str]) -> list[str]:
    stats = result.stats
    base = stats["without_key"].p50_ms
    lines = [
        f"Idempotency-Key on POST /jobs/fetch (in-process API handler, moto + "
        f"{result.redis_kind}; python {platform.python_version()}; N={args.iterations} per "
        f"row, {os.cpu_count()} CPU(s))",
        f"{'request':<32}{'p50 ms':>8}{'p99 ms':>8}{'vs without':>12}   DynamoDB requests",
    ]
    for name, label in labels.items():
        s = stats[name]
        lines.append(
            f"{label:<32}{s.p50_ms:>8.2f}{s.p99_ms:>8.2f}{s.p50_ms / base:>11.2f}x   "
            f"{requests_text(result.requests[name])}"
        )
    cost = stats["with_key"].p50_ms - base
    lines += [
        f"the check costs {cost:.2f} ms at p50 per keyed POST (moto on loopback, in this",
        "  process: against DynamoDB each extra request is a network round trip);",
        "every answer 202; a replay answers its first request's job id, Idempotent-Replayed;",
        "a new tenant per request (a replay: its first request's); each block's jobs deleted",
        "  after it (moto scans the table for an index query); requests counted in the warm-up",
        f"  ({WARMUP} calls per row). {BLOCKS} interleaved blocks, warm-up discarded.",
    ]
    return lines


def raw_numbers(result: Result, args: argparse.Namespace) -> dict[str, Any]:
    base = result.stats["without_key"].p50_ms
    return {
        "python": platform.python_version(),
        "redis": result.redis_kind,
        "iterations": args.iterations,
        "rows": {
            name: {
                "n": s.n,
                "p50_ms": round(s.p50_ms, 3),
                "p90_ms": round(s.p90_ms, 3),
                "p99_ms": round(s.p99_ms, 3),
                "mean_ms": round(s.mean_ms, 3),
                "ratio_p50": round(s.p50_ms / base, 3),
                "dynamodb_requests": result.requests[name],
            }
            for name, s in result.stats.items()
        },
    }


# --------------------------------------------------------------------------------------- main


def measure(args: argparse.Namespace) -> tuple[Result, dict[str, str]]:
    from lambdaloop.clients import aws_client
    from lambdaloop_local.stack import LocalStack, StackConfig

    stack: LocalStack = LocalStack(StackConfig(aws_port=0, redis_port=0))
    stack.start()
    try:
        os.environ.update(
            {**stack.function_environment("ApiFunction"), "POWERTOOLS_LOG_LEVEL": "WARNING"}
        )
        bench = Bench(stack)
        bench.make_replay_keys()  # also builds the layer's DynamoDB client, counted below
        counter = RequestCounter(aws_client("dynamodb"))
        rows = bench.rows()
        requests: dict[str, dict[str, float]] = {}

        def warmup(name: str, sampler: Sampler) -> None:
            counter.take()
            counter.on = True
            sampler(WARMUP)
            counter.on = False
            requests[name] = {op: n / WARMUP for op, n in counter.take().items()}

        samples = interleave(
            {row.name: bench.sampler(row) for row in rows},
            args.iterations,
            warmup,
            bench.delete_created,
        )
        stats = {name: Stats.of(values) for name, values in samples.items()}
        return Result(stats, requests, stack.redis_kind), {row.name: row.label for row in rows}
    finally:
        stack.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=500, help="timed calls per row (500)")
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = parser.parse_args(argv)
    if args.iterations < BLOCKS * 10 or args.iterations % BLOCKS:
        parser.error(f"--iterations must be a multiple of {BLOCKS}, at least {BLOCKS * 10}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import_paths(API_CODE_URI)
    quiet_logs()
    measured = with_handler_output_captured("idempotency_key", lambda: measure(args))
    if measured is None:
        return 1
    result, labels = measured
    print("\n".join(render_table(result, args, labels)))
    if args.json:
        print(json.dumps(raw_numbers(result, args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
