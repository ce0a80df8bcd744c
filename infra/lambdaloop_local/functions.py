"""Execution environments for the template's functions, as worker processes.

Each environment is one process (see :mod:`lambdaloop_local.worker`), like a Lambda
execution environment: its own module state, environment variables and event loop, one
invocation at a time, reused while warm. An invocation that runs past the function's Timeout
gets Lambda's answer ("Task timed out") and its environment is killed; the next invocation
starts a fresh one (a cold start), exactly as in AWS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lambdaloop_local.template import FunctionSpec

__all__ = ["FunctionPool", "InvocationError", "InvocationResult", "LocalFunction"]

logger = logging.getLogger(__name__)

#: Lambda's synchronous payload limit is 6 MB; leave room for JSON escaping.
_LINE_LIMIT = 16 * 1024 * 1024
#: Worker start-up (interpreter + handler import) is not counted in the function's Timeout
#: in AWS either (init has its own 10 s limit); locally it gets this long.
_INIT_TIMEOUT_S = 30.0


class InvocationError(Exception):
    """The invocation failed; ``payload`` is Lambda's error object (errorType, errorMessage)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        super().__init__(f"{payload.get('errorType')}: {payload.get('errorMessage')}")


@dataclass(frozen=True, slots=True)
class InvocationResult:
    result: Any
    duration_ms: float
    init_ms: float | None  # set on a cold start


@dataclass(frozen=True, slots=True)
class LocalFunction:
    """What it takes to run one function of the template locally."""

    spec: FunctionSpec
    environment: Mapping[str, str]
    #: Folders put on PYTHONPATH after the CodeUri (the layers' content).
    layer_paths: tuple[Path, ...]


class _Environment:
    def __init__(self, function: LocalFunction) -> None:
        self.function = function
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.init_ms: float | None = None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        spec = self.function.spec
        parent, child = socket.socketpair()
        python_path = os.pathsep.join(str(p) for p in (spec.code_uri, *self.function.layer_paths))
        env = {**_base_environment(), **self.function.environment, "PYTHONPATH": python_path}
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "lambdaloop_local.worker",
                "--fd",
                str(child.fileno()),
                "--handler",
                spec.handler,
                env=env,
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                cwd=spec.code_uri,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._reader, self._writer = await asyncio.open_connection(sock=parent, limit=_LINE_LIMIT)
        try:
            ready = await asyncio.wait_for(self._read(), _INIT_TIMEOUT_S)
        except (TimeoutError, InvocationError):
            await self.stop()
            raise
        self.init_ms = ready.get("init_ms")
        if ready.get("error"):
            logger.error(
                "%s failed to initialise: %s", spec.logical_id, ready["error"].get("errorMessage")
            )

    async def _read(self) -> dict[str, Any]:
        assert self._reader is not None
        line = await self._reader.readline()
        if not line:
            code = self._process.returncode if self._process else None
            raise InvocationError(
                {
                    "errorType": "Runtime.ExitError",
                    "errorMessage": f"the runtime exited (code {code}) without answering",
                }
            )
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def invoke(self, event: Any, request_id: str) -> Any:
        assert self._writer is not None
        spec = self.function.spec
        deadline_ms = int(time.time() * 1000) + spec.timeout * 1000
        request = {
            "request_id": request_id,
            "event": event,
            "deadline_ms": deadline_ms,
            "function_name": spec.logical_id,
            "memory_mb": spec.memory_size,
        }
        self._writer.write(json.dumps(request).encode() + b"\n")
        await self._writer.drain()
        try:
            reply = await asyncio.wait_for(self._read(), spec.timeout)
        except TimeoutError:
            await self.stop()
            raise InvocationError(
                {
                    "errorType": "Sandbox.Timedout",
                    "errorMessage": f"Task timed out after {spec.timeout:.2f} seconds",
                }
            ) from None
        except InvocationError:
            await self.stop()
            raise
        if not reply.get("ok"):
            raise InvocationError(reply.get("error") or {"errorType": "Unknown"})
        return reply.get("result")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
        if process is not None:
            await process.wait()


def _base_environment() -> dict[str, str]:
    # A function sees its own variables, not the emulator's (as in Lambda), plus what a
    # process needs to start here.
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "VIRTUAL_ENV")
    return {name: os.environ[name] for name in keep if name in os.environ}


class FunctionPool:
    """Up to ``max_environments`` warm environments for one function, created on demand."""

    def __init__(self, function: LocalFunction, max_environments: int = 1) -> None:
        if max_environments < 1:
            raise ValueError("max_environments must be at least 1")
        self.function = function
        self._idle: list[_Environment] = []
        self._all: set[_Environment] = set()
        self._slots = asyncio.Semaphore(max_environments)

    @property
    def logical_id(self) -> str:
        return self.function.spec.logical_id

    @contextlib.asynccontextmanager
    async def _environment(self) -> AsyncIterator[_Environment]:
        async with self._slots:
            environment = self._idle.pop() if self._idle else None
            if environment is None or not environment.alive:
                environment = _Environment(self.function)
                self._all.add(environment)
                await environment.start()
            try:
                yield environment
            finally:
                if environment.alive:
                    self._idle.append(environment)
                else:
                    self._all.discard(environment)

    async def warm(self) -> None:
        """Start one environment now (the init phase) rather than on the first request."""
        async with self._environment():
            pass

    async def invoke(self, event: Any, request_id: str | None = None) -> InvocationResult:
        request_id = request_id or str(uuid.uuid4())
        async with self._environment() as environment:
            cold = environment.init_ms
            environment.init_ms = None
            started = time.perf_counter()
            result = await environment.invoke(event, request_id)
            duration = round((time.perf_counter() - started) * 1000, 1)
        logger.info(
            "%s %s: %.1f ms%s",
            self.logical_id,
            request_id,
            duration,
            f" (init {cold:.0f} ms)" if cold is not None else "",
        )
        return InvocationResult(result, duration, cold)

    async def aclose(self) -> None:
        environments, self._all, self._idle = list(self._all), set(), []
        await asyncio.gather(*(e.stop() for e in environments))
