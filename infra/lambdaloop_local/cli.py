"""``lambdaloop``: the bundle's Docker-free ``sam local``.

    lambdaloop dev                          the whole bundle on 127.0.0.1 (API on :3000)
    lambdaloop invoke ApiFunction -e ev.json   one invocation, result JSON on stdout

``invoke`` attaches to a running ``lambdaloop dev`` (so it sees the same data) and otherwise
starts a throw-away stack of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lambdaloop_local.apigw import http_api_routes, make_app
from lambdaloop_local.functions import InvocationError
from lambdaloop_local.services import ServiceError
from lambdaloop_local.stack import LocalStack, StackConfig
from lambdaloop_local.template import TEMPLATE_PATH, TemplateError

__all__ = ["main"]

logger = logging.getLogger("lambdaloop_local")


def _state_file(template: Path) -> Path:
    return template.parent / ".lambdaloop" / "dev.json"


def _running_dev(template: Path) -> dict[str, Any] | None:
    """The endpoints of a ``lambdaloop dev`` that is still running, if there is one."""
    try:
        state: dict[str, Any] = json.loads(_state_file(template).read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return state


@contextlib.contextmanager
def _state(template: Path, stack: LocalStack, api_url: str) -> Iterator[None]:
    path = _state_file(template)
    path.parent.mkdir(exist_ok=True)
    state = {
        "pid": os.getpid(),
        "api": api_url,
        "aws_endpoint": stack.aws_endpoint,
        "redis_url": stack.redis_url,
    }
    path.write_text(json.dumps(state, indent=2))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


async def _dev(args: argparse.Namespace) -> int:
    from aiohttp import web

    config = StackConfig(
        template_path=args.template,
        host=args.host,
        aws_port=args.aws_port,
        redis_port=args.redis_port,
        prefer_real_redis=not args.embedded_redis,
        env_vars=_read_env_vars(args.env_vars),
        parameters=_parameters(args.parameter_overrides),
    )
    stack = LocalStack(config)
    stack.start()
    runner: web.AppRunner | None = None
    stop = asyncio.Event()
    pollers: list[asyncio.Task[None]] = []
    try:
        routes = http_api_routes(stack.template)
        functions = sorted({route.function for route in routes})
        pools = [stack.pool(name, args.concurrency) for name in functions]
        await asyncio.gather(*(pool.warm() for pool in pools))

        async def invoke(function: str, event: dict[str, Any]) -> Any:
            return (await stack.pool(function).invoke(event)).result

        sources = stack.sqs_event_sources()
        pollers = [asyncio.create_task(source.run(stop)) for source in sources]
        runner = web.AppRunner(make_app(routes, invoke), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        api_url = f"http://{args.host}:{args.port}"
        with _state(args.template, stack, api_url):
            print(f"lambdaloop dev ({args.template.name})", flush=True)
            print(f"  API         {api_url}", flush=True)
            for route in routes:
                print(f"                {route.route_key:24} -> {route.function}", flush=True)
            print(f"  AWS (moto)  {stack.aws_endpoint}", flush=True)
            print(f"  Redis       {stack.redis_url}  [{stack.redis_kind}]", flush=True)
            for source in sources:
                print(f"  SQS         {source.config.queue_arn}", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            _stop_on_signals(stop)
            await stop.wait()
        print("stopping...", flush=True)
    finally:
        stop.set()
        await asyncio.gather(*pollers, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        await stack.aclose_functions()
        stack.stop()
    return 0


def _read_event(source: str | None) -> Any:
    if source is None:
        return {}
    if source == "-":
        return json.load(sys.stdin)
    return json.loads(Path(source).read_text())


def _read_env_vars(path: Path | None) -> dict[str, dict[str, str]]:
    """An --env-vars file, in sam local's format: {"Function": {"VAR": "value"}, ...}."""
    if path is None:
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise SystemExit(f'{path}: expected {{"FunctionId": {{"NAME": "value"}}, ...}}')
    return data


async def _invoke(args: argparse.Namespace) -> int:
    event = _read_event(args.event)
    running = _running_dev(args.template)
    if running:
        logger.info("using the running lambdaloop dev (pid %s)", running["pid"])
        config = StackConfig(
            template_path=args.template,
            aws_endpoint=running["aws_endpoint"],
            redis_url=running["redis_url"],
            env_vars=_read_env_vars(args.env_vars),
            parameters=_parameters(args.parameter_overrides),
        )
    else:
        config = StackConfig(
            template_path=args.template,
            aws_port=0,
            env_vars=_read_env_vars(args.env_vars),
            parameters=_parameters(args.parameter_overrides),
        )
    stack = LocalStack(config)
    stack.template.function(args.function)  # an unknown name fails before anything starts
    with stack:
        try:
            outcome = await stack.pool(args.function).invoke(event)
        except InvocationError as exc:
            print(json.dumps(exc.payload, indent=2))
            return 1
        finally:
            await stack.aclose_functions()
    print(json.dumps(outcome.result, indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lambdaloop", description=__doc__.split("\n")[0])
    parser.add_argument("--template", type=Path, default=TEMPLATE_PATH, help="template.yaml")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run the bundle locally")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000, help="the HTTP API's port")
    dev.add_argument("--aws-port", type=int, default=5000, help="moto's port (0 = any)")
    dev.add_argument("--redis-port", type=int, default=0, help="Redis's port (0 = any)")
    dev.add_argument(
        "--embedded-redis",
        action="store_true",
        help="use the embedded fakeredis even if redis-server is installed",
    )
    dev.add_argument(
        "--concurrency", type=int, default=2, help="execution environments per function"
    )

    invoke = commands.add_parser("invoke", help="invoke one function once, like sam local invoke")
    invoke.add_argument("function", help="the function's logical id in the template")
    invoke.add_argument("-e", "--event", help="event JSON file ('-' = stdin; default {})")
    for command in (dev, invoke):
        command.add_argument(
            "-n",
            "--env-vars",
            type=Path,
            help="JSON of variables over the template's, as sam local takes them",
        )
        command.add_argument(
            "--parameter-overrides",
            nargs="+",
            default=[],
            metavar="NAME=VALUE",
            help="template parameters other than their defaults, as sam takes them",
        )
    return parser


def _parameters(pairs: Sequence[str]) -> dict[str, str]:
    """--parameter-overrides ``Name=Value`` pairs (sam's shorthand form)."""
    parameters = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise SystemExit(f"--parameter-overrides: expected NAME=VALUE, got {pair!r}")
        parameters[name] = value
    return parameters


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # Until the loop installs its own handler: unwind through the finally blocks so that
    # everything started so far (redis-server above all) is stopped.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args.template = args.template.resolve()
    command = _dev if args.command == "dev" else _invoke
    try:
        return asyncio.run(command(args))
    except (TemplateError, ServiceError) as exc:
        print(f"lambdaloop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
