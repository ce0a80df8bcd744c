"""Local execution environments behave like Lambda's: isolated, reused, killed on timeout."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

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
"""


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
