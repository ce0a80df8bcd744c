"""The local stack: moto, Redis, the template's resources, and its functions' environments.

One mechanism for ``lambdaloop dev``, ``lambdaloop invoke`` and the test suite: whatever
runs locally runs through here. The stack supervises the servers it starts: a moto or
redis-server process that dies is restarted on its port, and after moto's (its state is
lost with it) the template's resources are made again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

from lambdaloop_local.context import ACCOUNT_ID
from lambdaloop_local.functions import FunctionPool, LocalFunction
from lambdaloop_local.resources import LocalResources, Pseudo, create_resources
from lambdaloop_local.services import MotoServer, RedisServer
from lambdaloop_local.sqs import SqsEventSource, SqsEventSourceConfig
from lambdaloop_local.streams import StreamEventSource, StreamEventSourceConfig
from lambdaloop_local.supervisor import Supervisor
from lambdaloop_local.template import TEMPLATE_PATH, Template, TemplateError, load_template

__all__ = ["LocalStack", "StackConfig"]

logger = logging.getLogger(__name__)

#: Fake credentials: moto accepts anything, and real AWS must never be reached by mistake.
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


@dataclass(frozen=True, slots=True)
class StackConfig:
    template_path: Path = TEMPLATE_PATH
    host: str = "127.0.0.1"
    #: moto's port (0 = any free port).
    aws_port: int = 5000
    redis_port: int = 0
    prefer_real_redis: bool = True
    pseudo: Pseudo = field(default_factory=Pseudo)
    #: Attach to services that already run (a ``lambdaloop dev`` in another terminal).
    aws_endpoint: str | None = None
    redis_url: str | None = None
    #: Variables over the template's, in ``sam local``'s --env-vars shape: by function
    #: logical id, and under "Parameters" for every function.
    env_vars: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: Template parameters other than their defaults (``sam``'s --parameter-overrides).
    parameters: Mapping[str, str] = field(default_factory=dict)


class LocalStack:
    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.template: Template = load_template(self.config.template_path).with_parameters(
            self.config.parameters
        )
        self.moto: MotoServer | None = None
        self.redis: RedisServer | None = None
        #: Restarts moto and redis-server when they die (what the stack started, only).
        self.supervisor = Supervisor()
        self._resources: LocalResources | None = None
        self._resources_lock = threading.Lock()  # the supervisor's thread makes them too
        self._pools: dict[str, FunctionPool] = {}

    # -------------------------------------------------------------------- services

    @property
    def aws_endpoint(self) -> str:
        if self.config.aws_endpoint:
            return self.config.aws_endpoint
        if self.moto is None:
            raise RuntimeError("the local stack is not started")
        return self.moto.endpoint_url

    @property
    def redis_url(self) -> str:
        if self.config.redis_url:
            return self.config.redis_url
        if self.redis is None:
            raise RuntimeError("the local stack is not started")
        return self.redis.url

    @property
    def redis_kind(self) -> str:
        return self.redis.kind if self.redis else f"external ({self.redis_url})"

    def start(self) -> None:
        try:
            if not self.config.aws_endpoint:
                self.moto = MotoServer(self.config.host, self.config.aws_port)
                self.moto.start()
                self.supervisor.watch("moto", self.moto, lost=_MOTO_RESTART_NOTE)
                self.supervisor.after_restart("moto", self._remake_resources)
            if not self.config.redis_url:
                self.redis = RedisServer(
                    self.config.host, self.config.redis_port, self.config.prefer_real_redis
                )
                self.redis.start()
                if self.redis.is_real:
                    # Clients reconnect by themselves; the cache starts empty, as a new node's.
                    self.supervisor.watch("redis", self.redis, lost="the cache starts empty")
            self.create_resources()
        except BaseException:
            self.stop()
            raise

    def create_resources(self) -> LocalResources:
        """(Re)create the template's resources; after a moto reset, tests call this again.

        What the stack made before is kept where AWS would keep it: a secret made again has
        its earlier ARN and value (the functions' environments and webhook receivers know
        them)."""
        cache = urlsplit(self.redis_url)
        with self._resources_lock:
            self._resources = create_resources(
                self.template,
                self.aws_client,
                self.config.pseudo,
                cache_host=cache.hostname or self.config.host,
                cache_port=cache.port or 6379,
                previous=self._resources,
            )
            return self._resources

    def _remake_resources(self) -> None:
        self.create_resources()
        kinds = ("AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::S3::Bucket")
        made = ", ".join(f"{len(self.template.of_type(k))} {k.rsplit(':', 1)[1]}" for k in kinds)
        logger.warning("moto: the template's resources are made again, empty (%s)", made)

    def stop(self) -> None:
        """Stop what this stack started (idempotent); attached services are left alone."""
        self.supervisor.close()
        try:
            if self.redis is not None:
                self.redis.stop()
        finally:
            self.redis = None
            if self.moto is not None:
                self.moto.stop()
            self.moto = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def aws_client(self, service: str) -> Any:
        """A boto3 client for ``service`` that talks to the local AWS endpoint."""
        import boto3

        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.aws_endpoint,
            region_name=self.config.pseudo.region,
            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    # ------------------------------------------------------------------- functions

    @property
    def resources(self) -> LocalResources:
        if self._resources is None:
            raise RuntimeError("the local stack is not started")
        return self._resources

    def function_environment(self, logical_id: str) -> dict[str, str]:
        """The function's variables as Lambda would set them, pointed at the local stack."""
        spec = self.template.function(logical_id)
        resolver = self.resources.resolver(self.template, self.config.pseudo)
        variables = {name: str(value) for name, value in resolver.resolve(spec.environment).items()}
        for scope in ("Parameters", logical_id):
            variables.update({k: str(v) for k, v in self.config.env_vars.get(scope, {}).items()})
        region = self.config.pseudo.region
        return {
            **{name: self._local_url(value) for name, value in variables.items()},
            **LOCAL_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.aws_endpoint,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            # What Lambda itself sets in every execution environment.
            "AWS_LAMBDA_FUNCTION_NAME": logical_id,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_size),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{logical_id}",
            "_HANDLER": spec.handler,
            "LAMBDA_TASK_ROOT": str(spec.code_uri),
            "LAMBDALOOP_LOCAL": "true",
        }

    def _local_url(self, value: str) -> str:
        # ElastiCache Serverless speaks TLS only (rediss://); the local Redis speaks plain TCP.
        parts, local = urlsplit(value), urlsplit(self.redis_url)
        if parts.scheme == "rediss" and parts.netloc == local.netloc:
            return urlunsplit(parts._replace(scheme="redis"))
        return value

    def layer_paths(self, logical_id: str) -> tuple[Path, ...]:
        """The content folders of the function's layers that the template builds."""
        layers = self.template.of_type("AWS::Serverless::LayerVersion")
        paths: list[Path] = []
        for layer in self.template.function(logical_id).layers:
            name = layer.get("Ref") if isinstance(layer, dict) else None
            if name in layers:
                content = layers[name]["Properties"]["ContentUri"]
                paths.append((self.template.path.parent / content).resolve())
        return tuple(paths)

    def local_function(self, logical_id: str) -> LocalFunction:
        """The function as its execution environments run it; with SnapStart on (its
        ``SnapStart`` property, parameters resolved), each one is restored from one init, and
        the runtime's hook module is on its path as on Lambda's."""
        snapstart = self._snapstart(logical_id)
        layers = self.layer_paths(logical_id)
        return LocalFunction(
            spec=self.template.function(logical_id),
            environment=self.function_environment(logical_id),
            layer_paths=(*layers, RUNTIME_HOOKS) if snapstart else layers,
            snapstart=snapstart,
        )

    def _snapstart(self, logical_id: str) -> bool:
        properties = self.template.resources[logical_id].get("Properties") or {}
        resolver = self.resources.resolver(self.template, self.config.pseudo)
        setting = resolver.resolve({"SnapStart": properties.get("SnapStart")}).get("SnapStart")
        return isinstance(setting, dict) and setting.get("ApplyOn") == "PublishedVersions"

    def pool(self, logical_id: str, max_environments: int = 1) -> FunctionPool:
        """The function's environments (made on first use, then shared)."""
        pool = self._pools.get(logical_id)
        if pool is None:
            pool = FunctionPool(self.local_function(logical_id), max_environments)
            self._pools[logical_id] = pool
        return pool

    def _queue_urls(self) -> dict[str, str]:
        """The URL of each of the template's queues, by ARN."""
        return {
            self.resources.attributes[f"{lid}.Arn"]: self.resources.refs[lid]
            for lid in self.template.of_type("AWS::SQS::Queue")
        }

    def sqs_event_sources(self) -> list[SqsEventSource]:
        """One poller per SQS event of the template's functions, like Lambda's event source
        mappings, invoking the function's environments (as many as MaximumConcurrency)."""
        resolver = self.resources.resolver(self.template, self.config.pseudo)
        queue_urls = self._queue_urls()
        sources = []
        for spec in self.template.functions():
            for name, event in spec.events.items():
                if event.get("Type") != "SQS":
                    continue
                properties = resolver.resolve(event.get("Properties") or {})
                arn = properties.get("Queue")
                if arn not in queue_urls:
                    raise TemplateError(
                        f"{spec.logical_id}.{name}: Queue {arn!r} is not a queue of the template"
                    )
                config = SqsEventSourceConfig.from_event(properties, queue_urls[arn], arn)
                pool = self.pool(spec.logical_id, config.max_concurrency)
                sources.append(SqsEventSource(config, _results_of(pool), self.aws_client("sqs")))
        return sources

    def stream_event_sources(self) -> list[StreamEventSource]:
        """One reader per DynamoDB event of the template's functions, like Lambda's event
        source mappings on the tables' streams (an event with Enabled: false gets none).

        A function gets one execution environment per stream it reads: Lambda invokes it for
        each stream's shards independently. A setting the local source cannot honour (a
        filter operator it does not know, an OnFailure destination that is not one of the
        template's queues) raises TemplateError here, before anything runs.
        """
        resolver = self.resources.resolver(self.template, self.config.pseudo)
        queue_urls = self._queue_urls()
        region = self.config.pseudo.region
        sources = []
        for spec in self.template.functions():
            events = {
                name: event
                for name, event in spec.events.items()
                if event.get("Type") == "DynamoDB"
            }
            for name, event in events.items():
                properties = resolver.resolve(event.get("Properties") or {})
                if str(properties.get("Enabled", True)).lower() == "false":
                    continue
                try:
                    config = StreamEventSourceConfig.from_event(
                        properties,
                        queue_urls,
                        function_arn=f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{spec.logical_id}",
                        region=region,
                    )
                except ValueError as exc:
                    raise TemplateError(f"{spec.logical_id}.{name}: {exc}") from exc
                pool = self.pool(spec.logical_id, len(events))
                position = (self.aws_endpoint, spec.logical_id, config.stream_arn)
                sources.append(
                    StreamEventSource(
                        config,
                        _results_of(pool),
                        self.aws_client("dynamodbstreams"),
                        self.aws_client("sqs"),
                        checkpoints=_stream_positions.setdefault(position, {}),
                    )
                )
        return sources

    async def aclose_functions(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


#: What the log line of a moto restart says is lost, and what the stack does about it.
_MOTO_RESTART_NOTE = (
    "its state was in memory and is lost: the template's tables, queues, streams, bucket and"
    " secrets are made again, empty; stream readers start on the new streams"
)

#: The folder that holds the SnapStart runtime's hook module (``snapshot_restore_py``), put
#: on the path of functions with SnapStart.
RUNTIME_HOOKS = Path(__file__).parent / "runtime_hooks"

#: Where each function's stream event sources got to, per moto endpoint, function and stream:
#: shared by every LocalStack of the process on those services, so the sources of a stack
#: made later go on from there (a stream recreated by a moto reset has a new ARN).
_stream_positions: dict[tuple[str, str, str], dict[str, str]] = {}


def _results_of(pool: FunctionPool) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    async def invoke(event: dict[str, Any]) -> Any:
        return (await pool.invoke(event)).result

    return invoke
