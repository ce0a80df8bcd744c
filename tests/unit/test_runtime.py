"""The runtime: one loop for every invocation, deadlines, and no task outliving its invocation."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from lambdaloop._aws import AwsAdapter
from lambdaloop.errors import DeadlineExceeded, DependencyTimeout
from lambdaloop.runtime import (
    Deadline,
    beyond_budget,
    budget,
    call_deadline,
    current_deadline,
    current_invocation,
    get_loop,
    lambda_handler,
)
from support import lambda_context


def test_every_invocation_runs_on_the_same_loop() -> None:
    @lambda_handler
    async def handler(event: Any, context: Any) -> int:
        return id(asyncio.get_running_loop())

    loops = {handler({}, lambda_context()) for _ in range(3)}

    assert loops == {id(get_loop())}
    assert not get_loop().is_closed()


def test_a_task_left_running_is_cancelled_when_the_invocation_ends() -> None:
    # Given a handler that starts a task which would run forever
    leftovers: list[asyncio.Task[None]] = []

    @lambda_handler
    async def handler(event: Any, context: Any) -> str:
        leftovers.append(asyncio.create_task(asyncio.sleep(3600), name="forever"))
        return "done"

    # When the invocation ends (deadline: 1.2 s minus the 0.5 s margin)
    assert handler({}, lambda_context(timeout_s=1.2)) == "done"

    # Then the task did not survive it, and the next invocation starts clean
    assert leftovers[0].cancelled()
    assert handler({}, lambda_context()) == "done"
    assert leftovers[1].cancelled()


def test_tasks_spawned_by_tasks_are_tracked_too() -> None:
    inner: list[asyncio.Task[None]] = []

    async def starts_another() -> None:
        inner.append(asyncio.create_task(asyncio.sleep(3600)))

    @lambda_handler
    async def handler(event: Any, context: Any) -> None:
        asyncio.create_task(starts_another())  # noqa: RUF006 - forgotten on purpose

    handler({}, lambda_context(timeout_s=1.0))

    assert len(inner) == 1
    assert inner[0].cancelled()


def test_a_handler_that_runs_into_its_deadline_raises_deadline_exceeded() -> None:
    @lambda_handler
    async def handler(event: Any, context: Any) -> None:
        await asyncio.sleep(3600)

    # Lambda allows 0.6 s; the runtime keeps its 0.5 s margin to report.
    with pytest.raises(DeadlineExceeded):
        handler({}, lambda_context(timeout_s=0.6))


def test_the_invocation_is_visible_to_the_code_it_runs() -> None:
    @lambda_handler
    async def handler(event: Any, context: Any) -> tuple[str, bool]:
        return current_invocation().request_id, current_deadline().remaining() < 10

    context = lambda_context(timeout_s=10)
    assert handler({}, context) == (context.aws_request_id, True)


def test_outside_an_invocation() -> None:
    with pytest.raises(RuntimeError, match="not inside"):
        current_invocation()
    assert current_deadline().timeout() is None


def test_deadline_from_a_context() -> None:
    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 3000

    deadline = Deadline.from_context(Context(), margin_s=0.5)

    assert 0 < deadline.remaining() <= 2.5
    assert deadline.timeout(cap=0.1) == 0.1
    assert not deadline.expired
    assert Deadline.from_context(object(), margin_s=0.5).timeout() is None
    assert Deadline.after(0).expired


def test_a_budget_bounds_calls_tighter_than_the_invocation_and_lifts_for_cleanup() -> None:
    @lambda_handler
    async def handler(event: Any, context: Any) -> tuple[float, float, float, float]:
        invocation = current_deadline().expires_at
        with budget(1.0) as bound:
            inside = call_deadline().expires_at
            with beyond_budget():
                lifted = call_deadline().expires_at
            with budget(3600.0):  # a budget never reaches past the invocation
                wide = call_deadline().expires_at
        assert wide == invocation
        return invocation, bound.expires_at, inside, lifted

    invocation, bound, inside, lifted = handler({}, lambda_context(timeout_s=30.0))

    assert inside == bound < invocation
    assert lifted == invocation


def test_an_adapter_call_with_no_time_left_is_a_timeout_without_a_request() -> None:
    class Counting(AwsAdapter):
        service = "dynamodb"
        calls = 0

        def _invoke(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
            Counting.calls += 1
            return {}

    @lambda_handler
    async def handler(event: Any, context: Any) -> None:
        with budget(0.0):
            await Counting()._call("get_item")

    with pytest.raises(DependencyTimeout, match="no time left"):
        handler({}, lambda_context())
    assert Counting.calls == 0


def test_an_adapter_call_that_outlasts_the_budget_is_cut_as_a_timeout() -> None:
    release = threading.Event()

    class Hanging(AwsAdapter):
        service = "dynamodb"

        def _invoke(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
            release.wait(30)  # an SDK call that does not answer
            return {}

    @lambda_handler
    async def handler(event: Any, context: Any) -> None:
        with budget(0.05):
            await Hanging()._call("get_item")

    try:
        with pytest.raises(DependencyTimeout, match="no answer within the time left"):
            handler({}, lambda_context())
    finally:
        release.set()
