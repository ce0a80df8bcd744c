"""The idempotency guard on the template's IdempotencyTable in moto (real conditional writes).

Every test uses its own random keys: the table is shared by the whole session.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from lambdaloop.errors import IdempotencyInProgress, IdempotencyKeyReused
from lambdaloop.idempotency import IdempotencyGuard, Outcome, payload_hash
from lambdaloop.runtime import Deadline
from lambdaloop.store import Table
from lambdaloop_local.stack import LocalStack
from support import run

HASH = payload_hash({"n": 1})


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table(local_stack: LocalStack) -> Table:
    return Table(
        local_stack.resources.refs["IdempotencyTable"],
        client=local_stack.aws_client("dynamodb"),
        key_schema=("id",),
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def guard(table: Table, clock: Clock) -> IdempotencyGuard:
    return IdempotencyGuard(table, expires_after_s=3600, clock=clock)


@pytest.fixture
def key() -> str:
    return f"test-{uuid.uuid4().hex}"


def counted(result: Any, runs: list[str], name: str = "work") -> Any:
    async def work() -> Any:
        runs.append(name)
        return result

    return work


def test_the_result_is_stored_then_replayed(
    guard: IdempotencyGuard, table: Table, key: str
) -> None:
    runs: list[str] = []

    first = run(guard.run(key, HASH, counted({"a": [1, 2.5]}, runs), Deadline.after(5)))
    second = run(guard.run(key, HASH, counted({"b": 2}, runs), Deadline.after(5)))

    assert first == Outcome({"a": [1, 2.5]})
    assert second == Outcome({"a": [1, 2.5]}, replayed=True)
    assert runs == ["work"]
    stored = run(table.get({"id": key}, consistent=True))
    assert stored is not None
    assert stored["status"] == "completed"


def test_a_reused_key_with_another_payload_is_refused(guard: IdempotencyGuard, key: str) -> None:
    runs: list[str] = []
    run(guard.run(key, HASH, counted(1, runs), Deadline.after(5)))

    with pytest.raises(IdempotencyKeyReused):
        run(guard.run(key, payload_hash({"n": 2}), counted(2, runs), Deadline.after(5)))

    assert runs == ["work"]


def test_a_claim_blocks_until_its_deadline_passes(
    guard: IdempotencyGuard, clock: Clock, key: str
) -> None:
    runs: list[str] = []
    started = asyncio.Event()

    async def crashing() -> None:
        started.set()
        await asyncio.Event().wait()  # never set: the attempt dies while running

    async def scenario() -> Outcome:
        attempt = asyncio.ensure_future(guard.run(key, HASH, crashing, Deadline.after(30)))
        await started.wait()
        attempt.cancel()
        await asyncio.wait([attempt])
        with pytest.raises(IdempotencyInProgress):
            await guard.run(key, HASH, counted("x", runs), Deadline.after(5))
        clock.now += 31
        return await guard.run(key, HASH, counted("retried", runs), Deadline.after(5))

    assert run(scenario()) == Outcome("retried")
    assert runs == ["work"]


def test_failed_work_releases_its_claim(guard: IdempotencyGuard, table: Table, key: str) -> None:
    async def failing() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run(guard.run(key, HASH, failing, Deadline.after(5)))

    assert run(table.get({"id": key}, consistent=True)) is None
    assert run(guard.run(key, HASH, counted("ok", []), Deadline.after(5))) == Outcome("ok")


def test_twenty_concurrent_attempts_run_the_work_once(guard: IdempotencyGuard, key: str) -> None:
    runs: list[str] = []

    async def work() -> str:
        runs.append("work")
        await asyncio.sleep(0)
        return "done"

    async def attempt() -> Outcome | str:
        try:
            return await guard.run(key, HASH, work, Deadline.after(10))
        except IdempotencyInProgress:
            return "in progress"

    async def scenario() -> list[Outcome | str]:
        return await asyncio.gather(*(attempt() for _ in range(20)))

    outcomes = run(scenario())

    assert runs == ["work"]
    assert outcomes.count(Outcome("done")) == 1
    assert all(
        o in ("in progress", Outcome("done", replayed=True))
        for o in outcomes
        if o != Outcome("done")
    )
