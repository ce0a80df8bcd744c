"""One local execution environment: a process that imports a handler and serves invocations.

Started by :mod:`lambdaloop_local.functions` with the function's environment variables and
its CodeUri and layer on ``PYTHONPATH``, like Lambda's runtime. The module import is the
init phase; invocations then arrive one at a time as JSON lines on the socket inherited as
``--fd``, and each answer is one JSON line. The handler's own output (logs) goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from lambdaloop_local.context import LocalContext

__all__ = ["main"]

Handler = Callable[[Any, Any], Any]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lambdaloop-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--handler", required=True)
    args = parser.parse_args(argv)

    # The handler's prints and log lines must not mix with the protocol: send them to stderr.
    sys.stdout = sys.stderr
    channel = socket.socket(fileno=args.fd)
    reader = channel.makefile("rb")
    writer = channel.makefile("wb")

    started = time.perf_counter()
    handler: Handler | None = None
    init_error: dict[str, Any] | None = None
    try:
        handler = _load(args.handler)
    except Exception as exc:
        init_error = _error(exc, "Runtime.ImportModuleError")
    init_ms = round((time.perf_counter() - started) * 1000, 1)
    writer.write(json.dumps({"ready": True, "init_ms": init_ms, "error": init_error}).encode())
    writer.write(b"\n")
    writer.flush()

    for line in reader:
        request = json.loads(line)
        reply = _invoke(handler, request) if handler else {"ok": False, "error": init_error}
        writer.write(json.dumps(reply).encode() + b"\n")
        writer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
