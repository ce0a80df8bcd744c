"""Execution environments for the template's functions, as worker processes.

Each environment is one process (see :mod:`lambdaloop_local.worker`), like a Lambda
execution environment: its own module state, environment variables and event loop, one
invocation at a time, reused while warm. An invocation that runs past the function's Timeout
gets Lambda's answer ("Task timed out") and its environment is killed; the next invocation
starts a fresh one (a cold start), exactly as in AWS.

A function run with ``snapstart`` stands in for Lambda SnapStart: one worker runs the init
once (the snapshot), and every environment is a restore from it, a fork of that worker that
runs the after-restore hooks before it serves invocations (see :mod:`lambdaloop_local.worker`).

Every worker's stdin is the read end of one pipe whose write end only this process holds
(:func:`_lifeline`): when this process dies, even by SIGKILL, the workers read end of file
and exit, a worker busy with an invocation included.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lambdaloop_local.template import FunctionSpec
from lambdaloop_local.worker import RESTORE_REQUEST

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
    #: Set on the first invocation of an environment restored from a snapshot (SnapStart):
    #: the fork and the after-restore hooks.
    restore_ms: float | None = None


@dataclass(frozen=True, slots=True)
class LocalFunction:
    """What it takes to run one function of the template locally."""

    spec: FunctionSpec
    environment: Mapping[str, str]
    #: Folders put on PYTHONPATH after the CodeUri (the layers' content).
    layer_paths: tuple[Path, ...]
    #: Stand in for SnapStart: init once, restore every environment from that.
    snapstart: bool = False

    def process_environment(self) -> dict[str, str]:
        """The environment variables of the function's worker processes."""
        python_path = os.pathsep.join(str(p) for p in (self.spec.code_uri, *self.layer_paths))
        env = {**_base_environment(), **self.environment, "PYTHONPATH": python_path}
        if self.snapstart:
            env["AWS_LAMBDA_INITIALIZATION_TYPE"] = "snap-start"  # as Lambda sets it
        return env


@functools.cache
def _lifeline() -> int:
    """The read end of this process's lifeline pipe, the workers' stdin. Its write end stays
    open, unused, for the life of this process: it closes when the process dies, however it
    dies, and the workers then read end of file. A cache, so one pipe per process."""
    read_end, _write_end = os.pipe()  # both close on exec: no other child holds the write end
    return read_end


async def _spawn_worker(
    function: LocalFunction, fd: int, *extra: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lambdaloop_local.worker",
        "--fd",
        str(fd),
        "--handler",
        function.spec.handler,
        "--watch-stdin",
        *extra,
        env=function.process_environment(),
        pass_fds=(fd,),
        stdin=_lifeline(),
        cwd=function.spec.code_uri,
    )


class _Snapshot:
    """The SnapStart stand-in's snapshot: a worker that ran the function's init once and
    forks a restored environment from it on request (it serves no invocation itself)."""

    def __init__(self, function: LocalFunction) -> None:
        self.function = function
        self._process: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._lock = asyncio.Lock()  # one restore at a time on the control socket
        self.init_ms: float | None = None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.alive and self._process is not None else None

    async def start(self) -> None:
        spec = self.function.spec
        control, child = socket.socketpair()
        try:
            self._process = await _spawn_worker(self.function, child.fileno(), "--snapshot")
        except BaseException:
            control.close()
            raise
        finally:
            child.close()
        # The control socket is used from threads, blocking: it carries descriptors, which
        # asyncio's streams cannot.
        control.settimeout(_INIT_TIMEOUT_S)
        self._control = control
        try:
            ready = await asyncio.to_thread(self._read_line)
        except (OSError, InvocationError):
            await self.stop()
            raise
        self.init_ms = ready.get("init_ms")
        if ready.get("error"):
            logger.error(
                "%s failed to initialise: %s", spec.logical_id, ready["error"].get("errorMessage")
            )
        logger.info("%s: snapshot of its init (%.0f ms) taken", spec.logical_id, self.init_ms or 0)

    def _read_line(self) -> dict[str, Any]:
        assert self._control is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = self._control.recv(4096)
            if not chunk:
                raise InvocationError(
                    {
                        "errorType": "Runtime.ExitError",
                        "errorMessage": "the snapshot's runtime exited without answering",
                    }
                )
            line += chunk
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _restore(self, environment_end: socket.socket) -> int:
        assert self._control is not None
        socket.send_fds(self._control, [RESTORE_REQUEST], [environment_end.fileno()])
        pid: int = self._read_line()["restored"]
        return pid

    async def restore(self) -> tuple[socket.socket, int]:
        """A new environment restored from the snapshot: the socket to it, and its pid."""
        async with self._lock:
            ours, theirs = socket.socketpair()
            try:
                pid = await asyncio.to_thread(self._restore, theirs)
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
        return ours, pid

    async def stop(self) -> None:
        control, self._control = self._control, None
        if control is not None:
            control.close()
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
        if process is not None:
            await process.wait()


class _Environment:
    """One execution environment: its own worker process, or (SnapStart) a restore from the
    function's snapshot."""

    def __init__(self, function: LocalFunction, snapshot: _Snapshot | None = None) -> None:
        self.function = function
        self._snapshot = snapshot
        self._process: asyncio.subprocess.Process | None = None
        self._restored_pid: int | None = None  # a child of the snapshot, not of this process
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.init_ms: float | None = None
        self.restore_ms: float | None = None

    @property
    def alive(self) -> bool:
        if self._process is not None:
            return self._process.returncode is None
        return self._restored_pid is not None and _pid_alive(self._restored_pid)

    @property
    def pid(self) -> int | None:
        if self._process is not None:
            return self._process.pid
        return self._restored_pid

    async def start(self) -> None:
        if self._snapshot is not None:
            parent, self._restored_pid = await self._snapshot.restore()
        else:
            parent, child = socket.socketpair()
            try:
                self._process = await _spawn_worker(self.function, child.fileno())
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
        self.restore_ms = ready.get("restore_ms")
        if ready.get("error"):
            logger.error(
                "%s failed to %s: %s",
                self.function.spec.logical_id,
                "restore" if self._snapshot is not None else "initialise",
                ready["error"].get("errorMessage"),
            )

    async def _read(self) -> dict[str, Any]:
        assert self._reader is not None
        line = await self._reader.readline()
        if not line:
            code = self._process.returncode if self._process else None  # None: restored
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
        restored, self._restored_pid = self._restored_pid, None
        if restored is not None and _pid_alive(restored):
            with contextlib.suppress(ProcessLookupError):
                os.kill(restored, signal.SIGKILL)  # its parent, the snapshot, reaps it


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a pid reused by someone else's process: not ours any more
        return False
    return True


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
        self._snapshot: _Snapshot | None = None
        self._snapshot_lock = asyncio.Lock()

    @property
    def logical_id(self) -> str:
        return self.function.spec.logical_id

    @property
    def snapshot_pid(self) -> int | None:
        """The process of the function's snapshot (SnapStart), while there is one."""
        return self._snapshot.pid if self._snapshot is not None else None

    @property
    def environment_pids(self) -> tuple[int, ...]:
        """The processes of the function's live environments."""
        return tuple(e.pid for e in self._all if e.alive and e.pid is not None)

    async def _snapshot_taken(self) -> _Snapshot:
        async with self._snapshot_lock:
            if self._snapshot is None or not self._snapshot.alive:
                snapshot = _Snapshot(self.function)
                await snapshot.start()
                self._snapshot = snapshot
            return self._snapshot

    @contextlib.asynccontextmanager
    async def _environment(self) -> AsyncIterator[_Environment]:
        async with self._slots:
            environment = self._idle.pop() if self._idle else None
            if environment is None or not environment.alive:
                snapshot = await self._snapshot_taken() if self.function.snapstart else None
                environment = _Environment(self.function, snapshot)
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
            cold, restore = environment.init_ms, environment.restore_ms
            environment.init_ms = environment.restore_ms = None
            started = time.perf_counter()
            result = await environment.invoke(event, request_id)
            duration = round((time.perf_counter() - started) * 1000, 1)
        logger.info(
            "%s %s: %.1f ms%s%s",
            self.logical_id,
            request_id,
            duration,
            f" (init {cold:.0f} ms)" if cold is not None else "",
            f" (restore {restore:.0f} ms)" if restore is not None else "",
        )
        return InvocationResult(result, duration, cold, restore)

    async def aclose(self) -> None:
        environments, self._all, self._idle = list(self._all), set(), []
        await asyncio.gather(*(e.stop() for e in environments))
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is not None:
            await snapshot.stop()
