"""``lambdaloop``: the bundle's Docker-free ``sam local``.

    lambdaloop dev                          the whole bundle on 127.0.0.1 (API on :3000)
    lambdaloop dev --services-only --host 172.17.0.1   moto, Redis and the resources only
    lambdaloop invoke ApiFunction -e ev.json   one invocation, result JSON on stdout
    lambdaloop token alice                  a bearer token the local API accepts
    lambdaloop env-vars -o env.json         sam local's --env-vars for the running dev

``invoke`` attaches to a running ``lambdaloop dev`` (so it sees the same data) and otherwise
starts a throw-away stack of its own; ``env-vars`` needs one. They keep their state (the
running stack's endpoints, the local JWT signing key) in ``.lambdaloop/`` beside the template.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

# What `lambdaloop token` needs, and only that: the stack's modules (moto, fakeredis, aiohttp)
# cost seconds to import, so `dev` and `invoke` import them when they run.
from lambdaloop_local.auth import (
    DEFAULT_TTL_S,
    LOCAL_AUDIENCE,
    LOCAL_ISSUER,
    JwtAuthorizer,
    SigningKey,
    template_scopes,
)
from lambdaloop_local.template import TEMPLATE_PATH, TemplateError, load_template

if TYPE_CHECKING:
    from lambdaloop_local.stack import LocalStack
    from lambdaloop_local.streams import StreamEventSource

__all__ = ["main"]

logger = logging.getLogger("lambdaloop_local")


def _state_dir(template: Path) -> Path:
    """The stack's state folder: the running dev's endpoints and the local JWT signing key."""
    return template.parent / ".lambdaloop"


def _state_file(template: Path) -> Path:
    return _state_dir(template) / "dev.json"


def _running_dev(template: Path) -> dict[str, Any] | None:
    """The endpoints of a ``lambdaloop dev`` that is still running, if there is one."""
    try:
        state: dict[str, Any] = json.loads(_state_file(template).read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return state


@contextlib.contextmanager
def _state(template: Path, stack: LocalStack, api_url: str | None) -> Iterator[None]:
    path = _state_file(template)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    state = {
        "pid": os.getpid(),
        "api": api_url,  # None: services only
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
    from lambdaloop_local.stack import LocalStack, StackConfig

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
    try:
        if args.services_only:
            return await _serve_services(args, stack)
        return await _serve_bundle(args, stack)
    finally:
        await stack.aclose_functions()
        stack.stop()


async def _serve_bundle(args: argparse.Namespace, stack: LocalStack) -> int:
    """``dev``: the API on ``args.port`` and the event source pollers, over the stack."""
    from aiohttp import web

    from lambdaloop_local.apigw import http_api_routes, make_server

    runner: web.ServerRunner | None = None
    stop = asyncio.Event()
    pollers: list[asyncio.Task[None]] = []
    readers = _StreamReaders(stack)
    try:
        routes = http_api_routes(stack.template)
        authorizer = JwtAuthorizer(SigningKey.load_or_create(_state_dir(args.template)))
        functions = sorted({route.function for route in routes})
        pools = [stack.pool(name, args.concurrency) for name in functions]
        await asyncio.gather(*(pool.warm() for pool in pools))

        async def invoke(function: str, event: dict[str, Any]) -> Any:
            return (await stack.pool(function).invoke(event)).result

        sources = stack.sqs_event_sources()
        streams = stack.stream_event_sources()
        pollers = [asyncio.create_task(source.run(stop)) for source in sources]
        readers.start(streams)
        stack.supervisor.after_restart("moto", readers.restart_soon)
        runner = web.ServerRunner(make_server(routes, invoke, authorizer))
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        api_url = f"http://{args.host}:{args.port}"
        with _state(args.template, stack, api_url):
            print(f"lambdaloop dev ({args.template.name})", flush=True)
            print(f"  API         {api_url}", flush=True)
            for route in routes:
                guard = f"  [{route.auth.describe()}]" if route.auth else ""
                line = f"{route.route_key:34} -> {route.function}{guard}"
                print(f"                {line}", flush=True)
            if any(route.auth for route in routes):
                print(
                    f"  JWT         issuer {LOCAL_ISSUER}, audience {LOCAL_AUDIENCE}"
                    " (tokens: lambdaloop token SUBJECT)",
                    flush=True,
                )
            print(f"  AWS (moto)  {stack.aws_endpoint}", flush=True)
            print(f"  Redis       {stack.redis_url}  [{stack.redis_kind}]", flush=True)
            for source in sources:
                print(f"  SQS         {source.config.queue_arn}", flush=True)
            for stream in streams:
                print(f"  DynamoDB    {stream.config.stream_arn}", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            _stop_on_signals(stop)
            await stop.wait()
        print("stopping...", flush=True)
    finally:
        stop.set()
        readers.close()
        await asyncio.gather(*pollers, *readers.tasks, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
    return 0


class _StreamReaders:
    """The stream event sources of ``dev``. A restarted moto has new streams (a stream's ARN
    ends with its creation time): the readers of the old ones stop, and new ones start on the
    new streams from their beginning."""

    def __init__(self, stack: LocalStack) -> None:
        self._stack = stack
        self._generation = asyncio.Event()  # set: the current readers stop
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, streams: Sequence[StreamEventSource]) -> None:
        self.tasks += [asyncio.create_task(s.run(self._generation)) for s in streams]

    def restart_soon(self) -> None:
        """Called on the supervisor's thread once moto's resources are made again."""
        self._loop.call_soon_threadsafe(self._restart)

    def _restart(self) -> None:
        if self._closed:
            return
        self._generation.set()
        self._generation = asyncio.Event()
        streams = self._stack.stream_event_sources()
        for stream in streams:
            logger.warning("reading the new stream %s", stream.config.stream_arn)
        self.start(streams)

    def close(self) -> None:
        self._closed = True
        self._generation.set()


async def _serve_services(args: argparse.Namespace, stack: LocalStack) -> int:
    """``dev --services-only``: moto, Redis and the template's resources, for functions that
    run elsewhere (``sam local``). No API server and no event source pollers: a consumer that
    sam local invokes must not race the emulator's for the same messages."""
    stop = asyncio.Event()
    with _state(args.template, stack, None):
        print(f"lambdaloop dev ({args.template.name}): services only", flush=True)
        print(f"  AWS (moto)  {stack.aws_endpoint}", flush=True)
        print(f"  Redis       {stack.redis_url}  [{stack.redis_kind}]", flush=True)
        print(
            "  No API server and no event source pollers; for sam local's --env-vars:"
            " lambdaloop env-vars --host HOSTNAME -o FILE",
            flush=True,
        )
        print("Press Ctrl-C to stop.", flush=True)
        _stop_on_signals(stop)
        await stop.wait()
    print("stopping...", flush=True)
    return 0


#: What `sam local` needs besides --env-vars: the region the local resources are in (moto
#: keeps resources per region, and SAM gives a function the profile's region otherwise), and
#: on Linux the host name (Docker Desktop has host.docker.internal built in).
_SAM_HINT = "sam local: pass --env-vars {path} --region {region}"
_SAM_HOST_HINT = " (on Linux also --add-host {host}:host-gateway)"
#: The endpoint SAM must pass for a function to use the local stack: a template that does not
#: declare it would let the function call real AWS.
_REQUIRED_SAM_VARIABLES = ("AWS_ENDPOINT_URL",)


def _env_vars(args: argparse.Namespace) -> int:
    """``lambdaloop env-vars``: sam local's --env-vars JSON for every function of the template,
    pointed at the running ``lambdaloop dev`` as a container reaches it (``--host``)."""
    from lambdaloop_local.stack import LocalStack, StackConfig

    running = _running_dev(args.template)
    if not running:
        raise SystemExit(
            f"lambdaloop env-vars: no lambdaloop dev runs for {args.template}; start one first:"
            " lambdaloop dev --services-only --host ADDRESS (an address containers reach)"
        )
    config = StackConfig(
        template_path=args.template,
        aws_endpoint=running["aws_endpoint"],
        redis_url=running["redis_url"],
        parameters=_parameters(args.parameter_overrides),
    )
    with LocalStack(config) as stack:  # attached: it only looks the resources up
        variables = sam_env_vars(stack, args.host)
        region = stack.config.pseudo.region
    text = json.dumps(variables, indent=2, sort_keys=True) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    hint = _SAM_HINT.format(path=args.output or "FILE", region=region)
    if not _is_address(args.host):
        hint += _SAM_HOST_HINT.format(host=args.host)
    print(hint, file=sys.stderr)
    return 0


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def sam_env_vars(stack: LocalStack, host: str) -> dict[str, dict[str, str]]:
    """For every function of the stack's template, the variables the template declares for it
    (SAM passes no others), with the values the emulator gives them, and the stack's own
    address in them replaced by ``host`` (the name a container reaches the stack by)."""
    listening = urlsplit(stack.aws_endpoint).hostname or ""
    variables: dict[str, dict[str, str]] = {}
    for spec in stack.template.functions():
        missing = [name for name in _REQUIRED_SAM_VARIABLES if name not in spec.environment]
        if missing:
            raise TemplateError(
                f"the template declares no {', '.join(missing)} for "
                f"{spec.logical_id}: sam local would not pass it, and the function would call"
                ' real AWS (declare it empty: AWS_ENDPOINT_URL: "" in Globals)'
            )
        environment = stack.function_environment(spec.logical_id)
        variables[spec.logical_id] = {
            name: _rehost(environment[name], listening, host) for name in spec.environment
        }
    return variables


def _rehost(value: str, listening: str, host: str) -> str:
    """``value`` with ``host`` for the host name of a URL on the stack's address (the moto
    endpoint, queue URLs, the Redis URL); anything else as it is."""
    parts = urlsplit(value)
    if not parts.scheme or parts.hostname != listening:
        return value
    netloc = f"{host}:{parts.port}" if parts.port else host
    if "@" in parts.netloc:
        netloc = parts.netloc.rpartition("@")[0] + "@" + netloc
    return urlunsplit(parts._replace(netloc=netloc))


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
    from lambdaloop_local.functions import InvocationError
    from lambdaloop_local.stack import LocalStack, StackConfig

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
    refusal = _authorize_invocation(stack, args, event)
    if refusal is not None:
        print(json.dumps(refusal, indent=2))
        return 1
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


def _authorize_invocation(
    stack: LocalStack, args: argparse.Namespace, event: Any
) -> dict[str, Any] | None:
    """API Gateway's part of an HTTP API event for a route with a JWT authorizer.

    An event that carries a token (its identity source, the ``authorization`` header) is
    checked as the gateway would check the request: a refusal is printed as the gateway's
    answer and the function is not invoked; an accepted token's claims replace whatever
    ``requestContext.authorizer`` the file had. An event without a token is passed as it is,
    like ``sam local invoke`` does: an event file stands for what the gateway delivered, so
    its ``requestContext.authorizer.jwt.claims`` (the shipped events carry some) are taken
    as already verified, and an event without claims reaches the function, which refuses it
    itself (what a misconfigured route would do in AWS).
    """
    from lambdaloop_local.apigw import authorize, find_route, http_api_routes

    if not isinstance(event, dict):
        return None
    route = find_route(http_api_routes(stack.template), args.function, event)
    if route is None or route.auth is None:
        return None
    headers = event.get("headers") or {}
    if not any(str(name).lower() == "authorization" for name in headers):
        return None
    authorizer = JwtAuthorizer(SigningKey.load_or_create(_state_dir(args.template)))
    refusal = authorize(route, event, authorizer)
    if refusal is None:
        claims = event["requestContext"]["authorizer"]["jwt"]["claims"]
        logger.info("the JWT authorizer accepted the token of sub %s", claims.get("sub"))
        return None
    logger.error(
        "the JWT authorizer refused the event (%s); the function was not invoked", refusal.reason
    )
    return refusal.as_result()


def _token(args: argparse.Namespace) -> int:
    """``lambdaloop token``: one line, a bearer token the local stack accepts."""
    if args.ttl <= 0:
        raise SystemExit("lambdaloop token: --ttl must be a positive number of seconds")
    template = load_template(args.template)  # also: the state folder is beside a template
    scopes = args.scope or template_scopes(template)
    key = SigningKey.load_or_create(_state_dir(args.template))
    print(key.mint(args.subject, scopes, args.ttl))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lambdaloop", description=__doc__.split("\n")[0])
    parser.add_argument("--template", type=Path, default=TEMPLATE_PATH, help="template.yaml")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run the bundle locally")
    dev.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address moto, Redis and the API listen on (for sam local: one containers"
        " reach, e.g. docker0's 172.17.0.1 on Linux)",
    )
    dev.add_argument(
        "--services-only",
        action="store_true",
        help="moto, Redis and the template's resources only: no API server and no event source"
        " pollers (the functions run in sam local)",
    )
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

    token = commands.add_parser(
        "token",
        help="print a bearer token the local stack accepts",
        description=(
            f"Prints one line: a JWT signed with the local key (RS256, in .lambdaloop/ beside "
            f"the template), issuer {LOCAL_ISSUER}, audience {LOCAL_AUDIENCE}, that the local "
            'API Gateway accepts: curl -H "Authorization: Bearer $(lambdaloop token alice)"'
        ),
    )
    token.add_argument("subject", help="the sub claim: the caller, i.e. the tenant")
    token.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="SCOPE",
        help="a scope to grant (repeat for more; default: every scope of the template's routes)",
    )
    token.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TTL_S,
        help=f"seconds of validity (default {DEFAULT_TTL_S})",
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

    env_vars = commands.add_parser(
        "env-vars",
        help="write sam local's --env-vars JSON for the running lambdaloop dev",
        description=(
            "Writes sam local's --env-vars JSON: for every function of the template, each "
            "variable the template declares for it (SAM passes no others) with the value "
            "lambdaloop gives it: the local resources' names, AWS_ENDPOINT_URL, the Redis URL, "
            "on the running `lambdaloop dev` (see --host)."
        ),
    )
    env_vars.add_argument(
        "--host",
        default="host.docker.internal",
        help="the host name containers reach the dev stack by (default host.docker.internal:"
        " Docker Desktop's, or on Linux with sam's --add-host host.docker.internal:host-gateway)",
    )
    env_vars.add_argument("-o", "--output", type=Path, help="write here (default: stdout)")
    for command in (dev, invoke, env_vars):
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
    reported: tuple[type[Exception], ...] = (TemplateError,)
    if args.command != "token":
        from lambdaloop_local.services import ServiceError

        reported += (ServiceError,)
    try:
        if args.command == "token":
            return _token(args)
        if args.command == "env-vars":
            return _env_vars(args)
        return asyncio.run(_dev(args) if args.command == "dev" else _invoke(args))
    except reported as exc:
        print(f"lambdaloop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
