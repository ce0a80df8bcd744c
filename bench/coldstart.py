"""Cold start of the API function, measured as whole processes against its peers.

Four handlers answer ``GET /`` through Mangum:

- ``bare``: a bare FastAPI + Mangum app, the floor any FastAPI-on-Lambda function pays;
- ``typed``: the same plus one typed route (a model, a path parameter), which makes FastAPI
  import pydantic.v1 to rule out v1 models: the floor of any real API;
- ``lambdaloop``: the real API handler (``api.handler.handler``, CodeUri ``functions/api``,
  layer ``shared``), with its settings read from a fixed bench environment;
- ``naive``: the seed-tutorial shape: every SDK imported and every client (boto3, redis,
  Powertools Logger/Metrics/Tracer) built at import time, ``Mangum(app)`` with its default
  lifespan.

Each run is a fresh interpreter (``sys.executable -c``) that times the handler import
("init") and one API Gateway HTTP API (v2) request with ``time.perf_counter``, checks the
answer is 200 and prints both durations as JSON on its last stdout line; the parent also
times the whole process, spawn to exit. Peers run round-robin (so machine noise hits all of
them alike) after one uncounted warm-up round that writes the .pyc files Lambda would ship.

Run it with ``make bench`` or, from any directory, ``.venv/bin/python bench/coldstart.py``
(``--runs N`` for more runs, ``--json`` to print the raw numbers too).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import ROOT, p90

API_CODE_URI = ROOT / "functions" / "api"
SHARED_LAYER = ROOT / "shared"

#: Ratios of lambdaloop's median init the bundle aims for.
GOAL_VS_BARE = 1.15
GOAL_VS_NAIVE = 0.5

#: The same environment for every peer: what the API function's cold start reads.
BENCH_ENV = {
    "USERS_TABLE": "bench-users",
    "NOTIFICATIONS_TABLE": "bench-notifications",
    "NOTIFY_QUEUE_URL": "http://127.0.0.1:9/000000000000/bench",
    "JOBS_TABLE": "bench-jobs",
    "JOBS_QUEUE_URL": "http://127.0.0.1:9/000000000000/bench-jobs",
    "COMPUTE_QUEUE_URL": "http://127.0.0.1:9/000000000000/bench-compute",
    "REDIS_URL": "redis://127.0.0.1:9/0",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",  # Lambda sets both; boto3 reads this one
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "POWERTOOLS_SERVICE_NAME": "lambdaloop",
    "POWERTOOLS_METRICS_NAMESPACE": "lambdaloop",
}
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")

#: Runs in each child. The Lambda runtime has json imported before it loads the handler,
#: so the event is parsed before the clock starts.
CHILD = """
import importlib, json, sys, time

module, attribute, event = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])


class Context:
    aws_request_id = "bench-request"
    function_name = "bench"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:bench"

    def get_remaining_time_in_millis(self):
        return 10000


t0 = time.perf_counter()
handler = getattr(importlib.import_module(module), attribute)
t1 = time.perf_counter()
response = handler(event, Context())
t2 = time.perf_counter()
if response.get("statusCode") != 200:
    sys.exit(f"{module}: GET / answered {response.get('statusCode')}: {response.get('body')!r}")
print(json.dumps({"init_ms": (t1 - t0) * 1e3, "request_ms": (t2 - t1) * 1e3}))
"""

BARE_HANDLER = '''\
"""A bare FastAPI app behind Mangum: the floor."""

from fastapi import FastAPI
from mangum import Mangum

app = FastAPI()


@app.get("/")
async def root():
    return {"service": "bare", "version": "0"}


handler = Mangum(app, lifespan="off")
'''

TYPED_HANDLER = '''\
"""A bare FastAPI app behind Mangum with one typed route (a model and a path parameter):
the least a real API has. FastAPI's first typed field probes for pydantic.v1 (~20 ms)."""

from fastapi import FastAPI
from mangum import Mangum
from pydantic import BaseModel

app = FastAPI()


class Item(BaseModel):
    id: int
    name: str


@app.get("/")
async def root():
    return {"service": "bare-typed", "version": "0"}


@app.get("/items/{item_id}", response_model=Item)
async def item(item_id: int) -> Item:
    return Item(id=item_id, name="x")


handler = Mangum(app, lifespan="off")
'''

NAIVE_HANDLER = '''\
"""Seed-tutorial style: every SDK imported and every client built at module level."""

import os

import aiohttp  # noqa: F401  (used by routes that call other services)
import boto3
import redis.asyncio as redis
from aws_lambda_powertools import Logger, Metrics, Tracer
from fastapi import FastAPI
from mangum import Mangum

logger = Logger()
metrics = Metrics()
tracer = Tracer()

dynamodb = boto3.resource("dynamodb")
users_table = dynamodb.Table(os.environ["USERS_TABLE"])
sqs = boto3.client("sqs")
cache = redis.from_url(os.environ["REDIS_URL"])

app = FastAPI()


@app.get("/")
async def root():
    return {"service": "naive", "version": "0"}


asgi_handler = Mangum(app)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return asgi_handler(event, context)
'''


class BenchError(RuntimeError):
    """A peer failed to start or to answer 200."""


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    label: str
    module: str
    pythonpath: tuple[Path, ...]
    attribute: str = "handler"


@dataclass(slots=True)
class Samples:
    init_ms: list[float] = field(default_factory=list)
    first_ms: list[float] = field(default_factory=list)  # init + first request
    process_ms: list[float] = field(default_factory=list)


def write_peers(workdir: Path) -> list[Peer]:
    """Write the peers' handlers into ``workdir``; return the peers."""
    sources = (("bare", BARE_HANDLER), ("typed", TYPED_HANDLER), ("naive", NAIVE_HANDLER))
    for name, source in sources:
        (workdir / name).mkdir()
        (workdir / name / f"{name}_handler.py").write_text(source)
    return [
        Peer("bare", "bare FastAPI", "bare_handler", (workdir / "bare",)),
        Peer("typed", "bare, typed", "typed_handler", (workdir / "typed",)),
        Peer("lambdaloop", "lambdaloop", "api.handler", (API_CODE_URI, SHARED_LAYER)),
        Peer("naive", "naive", "naive_handler", (workdir / "naive",)),
    ]


def http_api_event() -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event for ``GET /``."""
    user_agent = "lambdaloop-bench/1"
    return {
        "version": "2.0",
        "routeKey": "GET /",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {"host": "bench.execute-api.us-east-1.amazonaws.com", "user-agent": user_agent},
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "bench",
            "domainName": "bench.execute-api.us-east-1.amazonaws.com",
            "http": {
                "method": "GET",
                "path": "/",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": user_agent,
            },
            "requestId": "bench-request",
            "routeKey": "GET /",
            "stage": "$default",
            "timeEpoch": time.time_ns() // 1_000_000,  # a timestamp, not a timer
        },
        "isBase64Encoded": False,
    }


def child_env(peer: Peer) -> dict[str, str]:
    env = {key: os.environ[key] for key in _INHERITED if key in os.environ}
    env.update(BENCH_ENV)
    env["PYTHONPATH"] = os.pathsep.join(str(path) for path in peer.pythonpath)
    return env


def run_once(peer: Peer, event_json: str) -> tuple[float, float, float]:
    """One cold process: (init ms, init + first request ms, whole process ms)."""
    argv = [sys.executable, "-c", CHILD, peer.module, peer.attribute, event_json]
    start = time.perf_counter()
    # cwd is the code folder, as /var/task is on Lambda.
    done = subprocess.run(
        argv,
        env=child_env(peer),
        cwd=peer.pythonpath[0],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    process_ms = (time.perf_counter() - start) * 1e3
    if done.returncode != 0:
        raise BenchError(f"{peer.name} exited {done.returncode}:\n{done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    try:
        timings = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise BenchError(f"{peer.name} printed no timings:\n{done.stdout[-2000:]}") from None
    init_ms = float(timings["init_ms"])
    return init_ms, init_ms + float(timings["request_ms"]), process_ms


def measure(peers: Sequence[Peer], runs: int) -> dict[str, Samples]:
    """A warm-up round (writes .pyc, checks 200), then ``runs`` round-robin rounds."""
    event_json = json.dumps(http_api_event())
    for peer in peers:
        run_once(peer, event_json)
    samples = {peer.name: Samples() for peer in peers}
    for round_no in range(runs):
        shift = round_no % len(peers)  # rotate who goes first, too
        for peer in [*peers[shift:], *peers[:shift]]:
            init_ms, first_ms, process_ms = run_once(peer, event_json)
            samples[peer.name].init_ms.append(init_ms)
            samples[peer.name].first_ms.append(first_ms)
            samples[peer.name].process_ms.append(process_ms)
    return samples


def render_table(peers: Sequence[Peer], samples: dict[str, Samples], runs: int) -> list[str]:
    init = {name: statistics.median(s.init_ms) for name, s in samples.items()}
    header = (
        f"{'peer':<13}{'init ms':>9}{'init p90':>10}{'init+first ms':>15}"
        f"{'process ms':>12}{'vs bare':>9}{'vs typed':>10}{'vs naive':>10}"
    )
    lines = [
        f"cold start (N={runs} runs each, medians; python {platform.python_version()})",
        header,
    ]
    for peer in peers:
        s = samples[peer.name]
        lines.append(
            f"{peer.label:<13}{init[peer.name]:>9.1f}{p90(s.init_ms):>10.1f}"
            f"{statistics.median(s.first_ms):>15.1f}{statistics.median(s.process_ms):>12.1f}"
            f"{init[peer.name] / init['bare']:>8.2f}x{init[peer.name] / init['typed']:>9.2f}x"
            f"{init[peer.name] / init['naive']:>9.2f}x"
        )
    vs_bare = init["lambdaloop"] / init["bare"]
    vs_naive = init["lambdaloop"] / init["naive"]
    met = vs_bare <= GOAL_VS_BARE and vs_naive <= GOAL_VS_NAIVE
    lines.append(
        f"goal: lambdaloop init <= {GOAL_VS_BARE}x bare and <= {GOAL_VS_NAIVE}x naive -> "
        f"{'met' if met else 'NOT met'} ({vs_bare:.2f}x, {vs_naive:.2f}x); "
        f"vs the typed bare app: {init['lambdaloop'] / init['typed']:.2f}x"
    )
    lines.extend(footnotes())
    return lines


def footnotes() -> list[str]:
    if importlib.util.find_spec("aws_xray_sdk") is None:
        xray = "naive: aws_xray_sdk is ABSENT, so its Tracer import cost is not counted"
    else:
        xray = (
            "naive: its Tracer imports the X-Ray SDK but, outside Lambda (no LAMBDA_TASK_ROOT),\n"
            "  skips patch_all: naive's numbers are a lower bound"
        )
    return [
        "init = handler import; init+first = import + one GET / (HTTP API v2); ratios: init;",
        "typed = the bare app plus one route with a model and a path parameter;",
        "process = spawn to exit, seen by the parent; p90 of init over the N runs.",
        xray,
    ]


def raw_numbers(samples: dict[str, Samples], runs: int) -> dict[str, Any]:
    return {
        "runs": runs,
        "python": platform.python_version(),
        "peers": {
            name: {"init_ms": s.init_ms, "first_ms": s.first_ms, "process_ms": s.process_ms}
            for name, s in samples.items()
        },
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15, help="timed runs per peer (default 15)")
    parser.add_argument("--json", action="store_true", help="also print the raw numbers as JSON")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lambdaloop-bench-") as workdir:
        peers = write_peers(Path(workdir))
        try:
            samples = measure(peers, args.runs)
        except BenchError as exc:
            print(f"coldstart: {exc}", file=sys.stderr)
            return 1
    print("\n".join(render_table(peers, samples, args.runs)))
    if args.json:
        print(json.dumps(raw_numbers(samples, args.runs), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
