"""One local execution environment: a process that imports a handler and serves invocations.

Started by :mod:`lambdaloop_local.functions` with the function's environment variables and
its CodeUri and layer on ``PYTHONPATH``, like Lambda's runtime. The module import is the
init phase; invocations then arrive one at a time as JSON lines on the socket inherited as
``--fd``, and each answer is one JSON line. The handler's own output (logs) goes to stderr.

With ``--snapshot`` the process stands in for SnapStart: it runs init once (and the
before-snapshot hooks), then serves no invocation itself. Each request on its socket carries
a new socket (SCM_RIGHTS); the process forks, and the child, a copy of the initialised
environment as a restore from the snapshot would be, closes the parent's socket, runs the
after-restore hooks and serves invocations on the socket it was given. The hooks are the
ones registered through ``snapshot_restore_py`` (Lambda's Python runtimes have it; locally
a stand-in on the function's path), read as Lambda's runtime reads them.

With ``--watch-stdin`` the process (and each restored child) exits as soon as its stdin
reaches end of file: the emulator holds the pipe's other end, so an emulator that dies
without stopping its workers (SIGKILL) does not leave them running a handler.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from lambdaloop_local.context import LocalContext

__all__ = ["RESTORE_REQUEST", "main"]

Handler = Callable[[Any, Any], Any]

#: What the emulator sends (with the new environment's socket) to ask for a restore.
RESTORE_REQUEST = b"R"


def _error(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    return {
        "errorType": error_type or type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc),
    }


def _load(handler_path: str) -> Handler:
    module_name, _, function_name = handler_path.rpartition(".")
    module = importlib.import_module(module_name)
    handler: Handler = getattr(module, function_name)
    return handler


def _invoke(handler: Handler, request: dict[str, Any]) -> dict[str, Any]:
    context = LocalContext(
        function_name=request["function_name"],
        memory_limit_in_mb=request["memory_mb"],
        aws_request_id=request["request_id"],
        deadline_ms=request["deadline_ms"],
        region=os.environ.get("AWS_REGION", "us-east-1"),
    )
    try:
        result = handler(request["event"], context)
        # Lambda serialises the result to JSON: so must we, or a bad result hides locally.
        return {"ok": True, "result": json.loads(json.dumps(result))}
    except Exception as exc:
        return {"ok": False, "error": _error(exc)}


def _exit_when_orphaned() -> None:
    """Block until stdin reaches end of file (the emulator is gone), then end the process at
    once, whatever the handler is doing. Raw reads: no lock a fork could copy held."""
    while os.read(0, 4096):
        pass
    os._exit(0)


def _watch_stdin() -> None:
    threading.Thread(target=_exit_when_orphaned, name="orphan-watch", daemon=True).start()


def _line(channel: socket.socket, message: dict[str, Any]) -> None:
    channel.sendall(json.dumps(message).encode() + b"\n")


def _serve(channel: socket.socket, handler: Handler | None, error: dict[str, Any] | None) -> None:
    """Answer invocations until the emulator closes the socket."""
    reader = channel.makefile("rb")
    writer = channel.makefile("wb")
    for line in reader:
        request = json.loads(line)
        reply = _invoke(handler, request) if handler else {"ok": False, "error": error}
        writer.write(json.dumps(reply).encode() + b"\n")
        writer.flush()


def _hooks() -> Any:
    """Lambda's SnapStart hook registry, or None where the function cannot have hooks."""
    try:
        return importlib.import_module("snapshot_restore_py")
    except ImportError:
        return None


def _before_snapshot() -> None:
    # As Lambda runs them: in the reverse order of their registration.
    hooks = _hooks()
    registered = hooks.get_before_snapshot() if hooks is not None else []
    while registered:
        func, args, kwargs = registered.pop()
        func(*args, **kwargs)


def _after_restore() -> None:
    # As Lambda runs them: in the order of their registration.
    hooks = _hooks()
    for func, args, kwargs in hooks.get_after_restore() if hooks is not None else []:
        func(*args, **kwargs)


def _serve_restores(
    control: socket.socket,
    handler: Handler | None,
    error: dict[str, Any] | None,
    watch_stdin: bool,
) -> None:
    """The snapshot: fork a restored environment for each request until the emulator
    closes the control socket."""
    # The kernel reaps the restored environments: nothing here waits for them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        message, fds, _, _ = socket.recv_fds(control, 16, 1)
        if not message:
            return
        if message != RESTORE_REQUEST or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise RuntimeError(f"unexpected request on the snapshot's socket: {message!r}")
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _restored(control, fds[0], handler, error, watch_stdin)  # never returns
        os.close(fds[0])
        _line(control, {"restored": pid})


def _restored(
    control: socket.socket,
    fd: int,
    handler: Handler | None,
    error: dict[str, Any] | None,
    watch_stdin: bool,
) -> None:
    """The child of a restore: run the after-restore hooks, then serve invocations."""
    code = 0
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the function may run subprocesses
        control.close()  # the snapshot's socket is not the environment's
        channel = socket.socket(fileno=fd)
        if watch_stdin:
            _watch_stdin()  # the snapshot's watcher thread is not copied by the fork
        started = time.perf_counter()
        if error is None:
            try:
                _after_restore()
            except Exception as exc:
                # Lambda refuses the invocation that found the restore failing.
                handler, error = None, _error(exc, "SnapStartException")
        restore_ms = round((time.perf_counter() - started) * 1000, 1)
        _line(channel, {"ready": True, "init_ms": None, "restore_ms": restore_ms, "error": error})
        _serve(channel, handler, error)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        # A forked copy must not run the parent's exit handlers (they are the snapshot's).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lambdaloop-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--handler", required=True)
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="stand in for SnapStart: init once, then fork a restored environment per request",
    )
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when stdin reaches end of file"
    )
    args = parser.parse_args(argv)
    if args.watch_stdin:
        _watch_stdin()

    # The handler's prints and log lines must not mix with the protocol: send them to stderr.
    sys.stdout = sys.stderr
    channel = socket.socket(fileno=args.fd)

    started = time.perf_counter()
    handler: Handler | None = None
    init_error: dict[str, Any] | None = None
    try:
        handler = _load(args.handler)
    except Exception as exc:
        init_error = _error(exc, "Runtime.ImportModuleError")
    if args.snapshot and handler is not None:
        try:
            _before_snapshot()
        except Exception as exc:
            handler, init_error = None, _error(exc, "SnapStartException")
    init_ms = round((time.perf_counter() - started) * 1000, 1)
    _line(channel, {"ready": True, "init_ms": init_ms, "error": init_error})

    if args.snapshot:
        _serve_restores(channel, handler, init_error, args.watch_stdin)
    else:
        _serve(channel, handler, init_error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
