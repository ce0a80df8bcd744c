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

A second table, in the same run and the same round-robin, measures what deploys: the API
handler imported from the built artifact of ``make build-x86_64`` (``ApiFunction`` and
``CoreLayer/python`` of ``.aws-sam/build-x86_64``, the x86_64 variant because this runs on x86
machines; the arm64 build is the same but for its wheels), copied into a temporary folder as
``var/task`` and ``opt/python`` and made read-only (``chmod -R a-w``) like Lambda's ``/var/task``
and ``/opt``, with ``PYTHONDONTWRITEBYTECODE=1`` (chmod does not stop root): once with the
bytecode ``make build`` ships and once from a copy without its ``__pycache__`` folders, which
compiles every module again on every start, as a cold start did before the build shipped
bytecode. Goal: the artifact's init at most ``GOAL_BUILT_VS_VENV`` times the ``.venv``'s.

That comparison is made on one Python. The artifact's compiled wheels (pydantic-core,
aiohttp, ...) are cp313, so only 3.13 can import it, while the ``.venv`` (and the first
table) is 3.11, and 3.13 imports the same code at its own speed. So its baseline is the
first table's ``lambdaloop`` row run by ``.venv-py313`` (the 3.13 environment ``make
test-py313`` keeps, from the same lock), and the artifact rows run by that same interpreter:
the rows differ only in where the code comes from and whether its bytecode is there. The
ratio to the 3.11 ``.venv`` row is shown too. The child reports the files it imported the
handler and ``lambdaloop`` from, and a peer that imported them from anywhere but its own
folders (a venv's editable install puts the source tree on ``sys.path`` too) fails the run.
Without the build or ``.venv-py313``, or when the function's or the layer's own modules in
the build differ from the source tree's (a build older than the code), the second table is
left out, saying why; if they change during the run, the run fails.

Run it with ``make bench`` or, from any directory, ``.venv/bin/python bench/coldstart.py``
(``--runs N`` for more runs, ``--json`` to print the raw numbers too).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import ROOT, BenchError, p90

API_CODE_URI = ROOT / "functions" / "api"
SHARED_LAYER = ROOT / "shared"
#: What `make build-x86_64` writes: the API function and the layer as Lambda gets them.
ARTIFACT = ROOT / ".aws-sam" / "build-x86_64"
BUILT_FUNCTION = ARTIFACT / "ApiFunction"
BUILT_LAYER = ARTIFACT / "CoreLayer" / "python"
#: The Python 3.13 environment `make test-py313` keeps (the artifact's wheels are cp313).
VENV313_PYTHON = ROOT / ".venv-py313" / "bin" / "python"
WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH

#: Ratios of lambdaloop's median init the bundle aims for.
GOAL_VS_BARE = 1.15
GOAL_VS_NAIVE = 0.45
#: The built artifact's median init against the .venv's, on the same Python.
GOAL_BUILT_VS_VENV = 1.1

#: The same environment for every peer: what the API function's cold start reads.
BENCH_ENV = {
    "USERS_TABLE": "bench-users",
    "NOTIFICATIONS_TABLE": "bench-notifications",
    "NOTIFY_QUEUE_URL": "http://127.0.0.1:9/000000000000/bench",
    "JOBS_TABLE": "bench-jobs",
    "JOBS_QUEUE_URL": "http://127.0.0.1:9/000000000000/bench-jobs",
    "COMPUTE_QUEUE_URL": "http://127.0.0.1:9/000000000000/bench-compute",
    "IDEMPOTENCY_TABLE": "bench-idempotency",
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
# Where the handler and the layer came from, so the parent can tell a peer imported its own.
files = [sys.modules[name].__file__ for name in (module, "lambdaloop") if name in sys.modules]
print(
    json.dumps(
        {
            "init_ms": (t1 - t0) * 1e3,
            "request_ms": (t2 - t1) * 1e3,
            "python": ".".join(map(str, sys.version_info[:3])),
            "files": files,
        }
    )
)
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


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    label: str
    module: str
    pythonpath: tuple[Path, ...]
    attribute: str = "handler"
    python: str = sys.executable
    #: Set in the child's environment on top of BENCH_ENV.
    extra_env: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Samples:
    init_ms: list[float] = field(default_factory=list)
    first_ms: list[float] = field(default_factory=list)  # init + first request
    process_ms: list[float] = field(default_factory=list)
    python: str = ""  # the version the child reported


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


def set_writable(root: Path, *, writable: bool) -> None:
    """``chmod -R u+w`` or ``chmod -R a-w`` on ``root``."""
    for folder, _, names in os.walk(root):
        for path in (Path(folder), *(Path(folder) / name for name in names)):
            mode = path.stat().st_mode
            path.chmod(mode | stat.S_IWUSR if writable else mode & ~WRITE_BITS)


def read_only_copy(destination: Path, *, bytecode: bool) -> tuple[Path, Path]:
    """The API function and the layer's ``python`` folder of the built artifact copied as
    Lambda lays them out (``var/task``, ``opt/python``) and made read-only, with or without
    their ``__pycache__`` folders; returns (task, layer)."""
    ignore = None if bytecode else shutil.ignore_patterns("__pycache__")
    task, layer = destination / "var" / "task", destination / "opt" / "python"
    shutil.copytree(BUILT_FUNCTION, task, ignore=ignore)
    shutil.copytree(BUILT_LAYER, layer, ignore=ignore)
    set_writable(destination, writable=False)
    return task, layer


def stale_modules() -> list[str]:
    """The API function's and the layer's own modules that differ between the source tree and
    the built artifact: the rows would compare different code."""
    differing = []
    for source, built in (
        (API_CODE_URI, BUILT_FUNCTION),
        (SHARED_LAYER / "lambdaloop", BUILT_LAYER / "lambdaloop"),
    ):
        names = {path.relative_to(source) for path in source.rglob("*.py")}
        names |= {path.relative_to(built) for path in built.rglob("*.py")}
        for name in sorted(names):
            mine, shipped = source / name, built / name
            if (
                not (mine.is_file() and shipped.is_file())
                or mine.read_bytes() != shipped.read_bytes()
            ):
                differing.append(str((source / name).relative_to(ROOT)))
    return differing


def artifact_peers(workdir: Path, python313: Path) -> tuple[list[Peer], str]:
    """The 3.13 rows: the source tree with ``python313`` (a 3.13 venv) and read-only copies of
    the built artifact with and without its bytecode; or none, and why."""
    if not (BUILT_FUNCTION.is_dir() and BUILT_LAYER.is_dir()):
        return [], f"no built artifact in {ARTIFACT}: `make build-x86_64` adds its rows"
    if not python313.is_file():
        return [], f"no {python313} (the artifact's wheels are cp313): `make test-py313` makes it"
    if stale := stale_modules():
        return [], f"{ARTIFACT} is older than the source ({', '.join(stale)}): rebuild it"
    if not any(BUILT_LAYER.rglob("*.cpython-313.pyc")):
        raise BenchError(f"{ARTIFACT} ships no bytecode: build it with `make build-x86_64`")
    with_pyc = read_only_copy(workdir / "built", bytecode=True)
    without_pyc = read_only_copy(workdir / "built-no-pyc", bytecode=False)
    python = str(python313)
    # chmod does not stop root, so the environment is what keeps these copies unwritten.
    no_writes = (("PYTHONDONTWRITEBYTECODE", "1"),)
    source = (API_CODE_URI, SHARED_LAYER)
    return [
        Peer("venv313", "lambdaloop, .venv 3.13", "api.handler", source, python=python),
        Peer(
            "built", "built, bytecode", "api.handler", with_pyc, python=python, extra_env=no_writes
        ),
        Peer(
            "built_no_pyc",
            "built, no bytecode",
            "api.handler",
            without_pyc,
            python=python,
            extra_env=no_writes,
        ),
    ], ""


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
    env.update(peer.extra_env)
    return env


def run_once(peer: Peer, event_json: str) -> tuple[float, float, float, str]:
    """One cold process: (init ms, init + first request ms, whole process ms, Python)."""
    argv = [peer.python, "-c", CHILD, peer.module, peer.attribute, event_json]
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
    # A venv's editable install also puts the source tree on sys.path, after PYTHONPATH: a
    # module missing from a peer's folders would quietly come from there.
    stray = [
        file
        for file in timings["files"]
        if not any(Path(file).is_relative_to(folder) for folder in peer.pythonpath)
    ]
    if stray:
        raise BenchError(f"{peer.name} imported from outside {peer.pythonpath}: {stray}")
    init_ms = float(timings["init_ms"])
    return init_ms, init_ms + float(timings["request_ms"]), process_ms, str(timings["python"])


def measure(peers: Sequence[Peer], runs: int) -> dict[str, Samples]:
    """A warm-up round (writes .pyc, checks 200), then ``runs`` round-robin rounds."""
    event_json = json.dumps(http_api_event())
    samples = {peer.name: Samples() for peer in peers}
    for peer in peers:
        samples[peer.name].python = run_once(peer, event_json)[3]
    for round_no in range(runs):
        shift = round_no % len(peers)  # rotate who goes first, too
        for peer in [*peers[shift:], *peers[:shift]]:
            init_ms, first_ms, process_ms, _ = run_once(peer, event_json)
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


def render_artifact_table(
    peers: Sequence[Peer], samples: dict[str, Samples], note: str
) -> list[str]:
    if not peers:
        return ["", f"built artifact: no rows ({note})"]
    init = {peer.name: statistics.median(samples[peer.name].init_ms) for peer in peers}
    venv, venv311 = init["venv313"], statistics.median(samples["lambdaloop"].init_ms)
    lines = [
        "",
        f"built artifact ({ARTIFACT.relative_to(ROOT)}, read-only copies, "
        f"PYTHONDONTWRITEBYTECODE=1; python {samples['venv313'].python})",
        f"{'peer':<24}{'init ms':>9}{'init p90':>10}{'init+first ms':>15}{'process ms':>12}"
        f"{'vs .venv 3.13':>15}{'vs .venv 3.11':>15}",
    ]
    for peer in peers:
        s = samples[peer.name]
        lines.append(
            f"{peer.label:<24}{init[peer.name]:>9.1f}{p90(s.init_ms):>10.1f}"
            f"{statistics.median(s.first_ms):>15.1f}{statistics.median(s.process_ms):>12.1f}"
            f"{init[peer.name] / venv:>14.2f}x{init[peer.name] / venv311:>14.2f}x"
        )
    built, no_pyc = init["built"] / venv, init["built_no_pyc"] / venv
    slower = init["built_no_pyc"] / init["built"]
    lines += [
        f"goal: built artifact init <= {GOAL_BUILT_VS_VENV}x the .venv's on the same Python -> "
        f"{'met' if built <= GOAL_BUILT_VS_VENV else 'NOT met'} ({built:.2f}x); without its "
        f"bytecode {no_pyc:.2f}x ({slower:.2f}x the artifact with it)",
        "built = api.handler from copies of ApiFunction (as /var/task) and CoreLayer/python (as",
        "  /opt/python), in that order on PYTHONPATH, read-only, pycs as `make build-x86_64` ships",
        "  them; no bytecode = the same copies without __pycache__, compiled again on every start;",
        "lambdaloop, .venv 3.13 = the first table's lambdaloop run by .venv-py313, whose bytecode",
        "  the warm-up wrote (as the .venv's); vs .venv 3.11 = against the first table's row.",
    ]
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
            name: {
                "python": s.python,
                "init_ms": s.init_ms,
                "first_ms": s.first_ms,
                "process_ms": s.process_ms,
            }
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
            built, note = artifact_peers(Path(workdir), VENV313_PYTHON)
            samples = measure([*peers, *built], args.runs)
            if built and (stale := stale_modules()):
                raise BenchError(f"the source changed during the run ({stale}): run it again")
        except BenchError as exc:
            print(f"coldstart: {exc}", file=sys.stderr)
            return 1
        finally:
            set_writable(Path(workdir), writable=True)  # so that it can be removed
    print("\n".join(render_table(peers, samples, args.runs)))
    print("\n".join(render_artifact_table(built, samples, note)))
    if args.json:
        print(json.dumps(raw_numbers(samples, args.runs), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
