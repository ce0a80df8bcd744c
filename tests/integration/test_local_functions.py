"""Local execution environments behave like Lambda's: isolated, reused, killed on timeout."""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest

from lambdaloop_local.functions import FunctionPool, InvocationError, LocalFunction
from support import function_in_folder

HANDLERS = """
import os, time

STARTED = time.monotonic()
COUNT = 0

def echo(event, context):
    global COUNT
    COUNT += 1
    return {"event": event, "count": COUNT, "pid": os.getpid(),
            "secret": os.environ.get("PARENT_SECRET"), "mine": os.environ.get("MINE"),
            "remaining_ms": context.get_remaining_time_in_millis()}

def sleepy(event, context):
    time.sleep(event["seconds"])
    return "woke"

def fails(event, context):
    raise ValueError("bad input: " + str(event))

def unserialisable(event, context):
    return {"when": object()}

def blocks(event, context):
    import sys, threading
    sys.stderr.write(f"blocking in {os.getpid()}\\n")
    sys.stderr.flush()
    threading.Event().wait()  # never set
"""

#: An emulator in a process of its own: a pool whose one invocation never returns.
EMULATOR = """
import asyncio, dataclasses, sys
from pathlib import Path

from lambdaloop_local.functions import FunctionPool
from support import function_in_folder

async def main():
    function = function_in_folder(Path(sys.argv[1]), "handlers.blocks", timeout=900)
    pool = FunctionPool(dataclasses.replace(function, snapstart=sys.argv[2] == "snapstart"))
    await pool.invoke({})

asyncio.run(main())
"""

#: Seconds a test waits for a process to show a line or to exit: a bound, not an expectation.
_BOUND = 60.0


def local_function(code: Path, handler: str, timeout: int = 3) -> LocalFunction:
    return function_in_folder(code, handler, timeout=timeout, environment={"MINE": "mine"})


@pytest.fixture
def code(tmp_path: Path) -> Path:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    (tmp_path / "broken.py").write_text("import no_such_module_anywhere\n")
    return tmp_path


def invoke_each(function: LocalFunction, *events: Any) -> list[Any]:
    async def scenario() -> list[Any]:
        pool = FunctionPool(function)
        outcomes: list[Any] = []
        try:
            for event in events:
                try:
                    outcomes.append(await pool.invoke(event))
                except InvocationError as exc:
                    outcomes.append(exc)
        finally:
            await pool.aclose()
        return outcomes

    return asyncio.run(scenario())


def test_a_warm_environment_is_reused_and_isolated(
    code: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARENT_SECRET", "do-not-leak")

    first, second = invoke_each(local_function(code, "handlers.echo"), {"n": 1}, {"n": 2})

    assert first.init_ms is not None  # cold start
    assert second.init_ms is None  # warm
    assert first.result["pid"] == second.result["pid"]
    assert second.result["count"] == 2
    assert second.result["event"] == {"n": 2}
    assert first.result["secret"] is None
    assert first.result["mine"] == "mine"
    assert 0 < first.result["remaining_ms"] <= 3000
    assert first.result["pid"] != os.getpid()


def test_a_timeout_kills_the_environment_and_the_next_call_is_cold(code: Path) -> None:
    timed_out, after = invoke_each(
        local_function(code, "handlers.sleepy", timeout=1), {"seconds": 30}, {"seconds": 0}
    )

    assert isinstance(timed_out, InvocationError)
    assert timed_out.payload["errorType"] == "Sandbox.Timedout"
    assert "timed out after 1.00 seconds" in timed_out.payload["errorMessage"]
    assert after.result == "woke"
    assert after.init_ms is not None


def test_a_handler_error_is_lambdas_error_object(code: Path) -> None:
    [failed, again] = invoke_each(local_function(code, "handlers.fails"), {"x": 1}, {"x": 2})

    assert isinstance(failed, InvocationError)
    assert failed.payload["errorType"] == "ValueError"
    assert failed.payload["errorMessage"] == "bad input: {'x': 1}"
    assert isinstance(again, InvocationError)  # the environment survived the error


def test_an_import_error_is_reported_on_invocation(code: Path) -> None:
    [failed] = invoke_each(local_function(code, "broken.handler"), {})

    assert isinstance(failed, InvocationError)
    assert failed.payload["errorType"] == "Runtime.ImportModuleError"
    assert "no_such_module_anywhere" in failed.payload["errorMessage"]


def test_a_result_lambda_cannot_serialise_is_an_error(code: Path) -> None:
    [failed] = invoke_each(local_function(code, "handlers.unserialisable"), {})

    assert isinstance(failed, InvocationError)
    assert failed.payload["errorType"] == "TypeError"


def _line_matching(stream: IO[bytes], pattern: str, bound: float) -> re.Match[bytes]:
    """The first match of ``pattern`` in what ``stream`` says within ``bound`` seconds."""
    deadline = time.monotonic() + bound
    seen = b""
    while (found := re.search(pattern.encode(), seen)) is None:
        left = deadline - time.monotonic()
        readable, _, _ = select.select([stream], [], [], max(left, 0))
        chunk = os.read(stream.fileno(), 4096) if readable else b""
        if not chunk:
            pytest.fail(f"no {pattern!r} within {bound} s; it said: {seen.decode()[-2000:]}")
        seen += chunk
    return found


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits on a pid through a pidfd (Linux)")
@pytest.mark.parametrize("kind", ["worker", "snapstart"])
def test_a_worker_busy_with_an_invocation_dies_with_its_killed_emulator(
    code: Path, kind: str
) -> None:
    # Given an emulator process whose environment (a worker, or a restore forked from the
    # SnapStart snapshot) is inside an invocation that never returns
    emulator = subprocess.Popen(
        [sys.executable, "-c", EMULATOR, str(code), kind],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert emulator.stderr is not None
        worker = int(_line_matching(emulator.stderr, r"blocking in (\d+)\n", _BOUND)[1])
        assert worker not in {emulator.pid, os.getpid()}
        worker_exit = os.pidfd_open(worker)  # readable once that process has ended
        try:
            assert select.select([worker_exit], [], [], 0)[0] == []  # it runs the handler

            # When the emulator is SIGKILLed (no chance to stop its workers)
            emulator.send_signal(signal.SIGKILL)
            assert emulator.wait(_BOUND) == -signal.SIGKILL

            # Then the worker ends too, without its invocation returning
            assert select.select([worker_exit], [], [], _BOUND)[0] == [worker_exit]
        finally:
            os.close(worker_exit)
    finally:
        if emulator.poll() is None:
            emulator.kill()
            emulator.wait()
        if emulator.stderr is not None:
            emulator.stderr.close()
