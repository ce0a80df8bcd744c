"""The async idempotency guard, on an in-memory table that evaluates its conditions."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest

from fakes import FakeIdempotencyTable
from lambdaloop.errors import ConditionFailed, IdempotencyInProgress, IdempotencyKeyReused
from lambdaloop.idempotency import IdempotencyGuard, Outcome, payload_hash
from lambdaloop.runtime import Deadline
from support import run


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Work:
    """Guarded work that counts its runs, optionally failing or waiting for a gate."""

    def __init__(self, result: Any = None, *, error: Exception | None = None) -> None:
        self.result = result
        self.error = error
        self.runs = 0
        self.started = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> Any:
        self.runs += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def table() -> FakeIdempotencyTable:
    return FakeIdempotencyTable()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def guard(table: FakeIdempotencyTable, clock: Clock) -> IdempotencyGuard:
    return IdempotencyGuard(table, expires_after_s=3600, clock=clock)


HASH = payload_hash({"n": 1})


def test_the_first_run_executes_the_work_and_stores_its_result(
    guard: IdempotencyGuard, table: FakeIdempotencyTable, clock: Clock
) -> None:
    work = Work({"sent": True, "n": [1, 2]})

    outcome = run(guard.run("k1", HASH, work, Deadline.after(5)))

    assert outcome == Outcome({"sent": True, "n": [1, 2]}, replayed=False)
    assert work.runs == 1
    assert table.items["k1"] == {
        "id": "k1",
        "status": "completed",
        "payload_hash": HASH,
        "expires_at": int(clock.now) + 3600,
        "result": '{"sent":true,"n":[1,2]}',
    }


def test_a_second_run_replays_the_stored_result_without_running(guard: IdempotencyGuard) -> None:
    first, second = Work({"n": 1}), Work({"n": 2})

    run(guard.run("k1", HASH, first, Deadline.after(5)))
    outcome = run(guard.run("k1", HASH, second, Deadline.after(5)))

    assert outcome == Outcome({"n": 1}, replayed=True)
    assert second.runs == 0


def test_a_none_result_is_replayed_as_none(guard: IdempotencyGuard) -> None:
    run(guard.run("k1", HASH, Work(None), Deadline.after(5)))

    assert run(guard.run("k1", HASH, Work("x"), Deadline.after(5))) == Outcome(None, True)


def test_a_key_reused_with_another_payload_is_refused(guard: IdempotencyGuard) -> None:
    run(guard.run("k1", HASH, Work(1), Deadline.after(5)))
    other = Work(2)

    with pytest.raises(IdempotencyKeyReused) as caught:
        run(guard.run("k1", payload_hash({"n": 2}), other, Deadline.after(5)))

    assert caught.value.key == "k1"
    assert other.runs == 0


def test_a_key_in_progress_elsewhere_is_refused_until_that_attempt_finishes(
    guard: IdempotencyGuard,
) -> None:
    holder, other = Work("done"), Work("other")
    holder.gate = asyncio.Event()

    async def scenario() -> tuple[Outcome, Outcome]:
        # Given an attempt that holds the key and is still running
        first = asyncio.ensure_future(guard.run("k1", HASH, holder, Deadline.after(5)))
        await holder.started.wait()
        # When another attempt comes, it is refused and does not run
        with pytest.raises(IdempotencyInProgress):
            await guard.run("k1", HASH, other, Deadline.after(5))
        # Then once the holder is done, the other attempt gets its result
        holder.gate.set()  # type: ignore[union-attr]
        return await first, await guard.run("k1", HASH, other, Deadline.after(5))

    first, second = run(scenario())

    assert first == Outcome("done")
    assert second == Outcome("done", replayed=True)
    assert other.runs == 0


def test_a_crashed_attempt_stops_blocking_once_its_deadline_has_passed(
    guard: IdempotencyGuard, table: FakeIdempotencyTable, clock: Clock
) -> None:
    crashed, retry = Work("never"), Work("retried")
    crashed.gate = asyncio.Event()  # never set: the attempt dies while running

    async def scenario() -> Outcome:
        attempt = asyncio.ensure_future(guard.run("k1", HASH, crashed, Deadline.after(30)))
        await crashed.started.wait()
        attempt.cancel()
        await asyncio.wait([attempt])
        # Its claim stays until its deadline (30 s from the clock's now)...
        with pytest.raises(IdempotencyInProgress):
            await guard.run("k1", HASH, retry, Deadline.after(5))
        # ...and no longer.
        clock.now += 31
        return await guard.run("k1", HASH, retry, Deadline.after(5))

    assert run(scenario()) == Outcome("retried")
    assert retry.runs == 1
    assert table.items["k1"]["status"] == "completed"


def test_the_in_progress_expiry_follows_the_deadline(
    guard: IdempotencyGuard, table: FakeIdempotencyTable, clock: Clock
) -> None:
    seen: dict[str, Any] = {}

    async def work() -> None:
        seen.update(table.items["k1"])

    run(guard.run("k1", HASH, work, Deadline.after(20)))

    expiry_s = seen["in_progress_expires_at"] / 1000 - clock.now
    assert 19 < expiry_s <= 20
    assert seen["status"] == "in_progress"
    assert seen["expires_at"] == int(clock.now) + 3600


def test_without_a_deadline_the_claim_lasts_the_record_lifetime(
    guard: IdempotencyGuard, table: FakeIdempotencyTable, clock: Clock
) -> None:
    seen: dict[str, Any] = {}

    async def work() -> None:
        seen.update(table.items["k1"])

    run(guard.run("k1", HASH, work, Deadline.never()))

    assert seen["in_progress_expires_at"] == int((clock.now + 3600) * 1000)


def test_failed_work_removes_its_claim_so_a_retry_runs(
    guard: IdempotencyGuard, table: FakeIdempotencyTable
) -> None:
    failing, retry = Work(error=RuntimeError("boom")), Work("ok")

    with pytest.raises(RuntimeError, match="boom"):
        run(guard.run("k1", HASH, failing, Deadline.after(5)))
    assert "k1" not in table.items

    assert run(guard.run("k1", HASH, retry, Deadline.after(5))) == Outcome("ok")
    assert retry.runs == 1


def test_a_result_that_is_not_json_fails_like_the_work(
    guard: IdempotencyGuard, table: FakeIdempotencyTable
) -> None:
    with pytest.raises(TypeError):
        run(guard.run("k1", HASH, Work({1, 2}), Deadline.after(5)))

    assert "k1" not in table.items


def test_a_completed_record_past_its_expiry_no_longer_counts(
    guard: IdempotencyGuard, clock: Clock
) -> None:
    run(guard.run("k1", HASH, Work("old"), Deadline.after(5)))
    clock.now += 3601  # DynamoDB's TTL has not deleted it yet
    again = Work("new")

    assert run(guard.run("k1", HASH, again, Deadline.after(5))) == Outcome("new")
    assert again.runs == 1


def test_failing_to_store_the_result_still_returns_it(
    guard: IdempotencyGuard, table: FakeIdempotencyTable, layer_caplog: pytest.LogCaptureFixture
) -> None:
    table.fail_puts_of = "completed"

    outcome = run(guard.run("k1", HASH, Work("done"), Deadline.after(5)))

    assert outcome == Outcome("done")
    assert "storing it failed" in layer_caplog.text


def test_a_claim_released_between_the_write_and_the_read_is_claimed_again() -> None:
    class Vanishing(FakeIdempotencyTable):
        """The holder's claim disappears (its work failed) right after our write fails."""

        async def get(
            self, key: dict[str, Any], *, consistent: bool = False
        ) -> dict[str, Any] | None:
            self.items.clear()
            return await super().get(key, consistent=consistent)

    vanishing = Vanishing()
    vanishing.items["k1"] = {
        "id": "k1",
        "status": "in_progress",
        "payload_hash": HASH,
        "expires_at": 2**40,
        "in_progress_expires_at": 2**60,
    }
    work = Work("mine")

    outcome = run(IdempotencyGuard(vanishing).run("k1", HASH, work, Deadline.after(5)))

    assert outcome == Outcome("mine")
    assert work.runs == 1


def test_a_claim_that_keeps_vanishing_is_reported_in_progress() -> None:
    class Flickering(FakeIdempotencyTable):
        """Every write meets a claim, every read finds it gone."""

        async def put(self, item: dict[str, Any], **_: Any) -> None:
            raise ConditionFailed("condition failed")

        async def get(
            self, key: dict[str, Any], *, consistent: bool = False
        ) -> dict[str, Any] | None:
            return None

    work = Work("never")

    with pytest.raises(IdempotencyInProgress):
        run(IdempotencyGuard(Flickering()).run("k1", HASH, work, Deadline.after(5)))

    assert work.runs == 0


def test_failing_to_release_a_claim_keeps_the_work_error(
    layer_caplog: pytest.LogCaptureFixture,
) -> None:
    class Undeletable(FakeIdempotencyTable):
        async def delete(
            self, key: dict[str, Any], *, must_exist: bool = False
        ) -> dict[str, Any] | None:
            raise ConnectionError("table unreachable")

    with pytest.raises(RuntimeError, match="boom"):
        run(
            IdempotencyGuard(Undeletable()).run(
                "k1", HASH, Work(error=RuntimeError("boom")), Deadline.after(5)
            )
        )

    assert "could not remove the failed claim" in layer_caplog.text


def test_payload_hash_is_sha256_of_canonical_json() -> None:
    payload = {"b": [1, {"y": 2, "x": "é"}], "a": None}

    digest = payload_hash(payload)

    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert digest == payload_hash({"a": None, "b": [1, {"x": "é", "y": 2}]})
    assert digest != payload_hash({"a": None, "b": [1, {"x": "é", "y": 3}]})


def test_expires_after_must_be_positive(table: FakeIdempotencyTable) -> None:
    with pytest.raises(ValueError, match="expires_after_s"):
        IdempotencyGuard(table, expires_after_s=0)
