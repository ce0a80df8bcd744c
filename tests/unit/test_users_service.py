"""The Users logic over in-memory fakes of the table and of Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import pytest

from api.errors import Conflict, EmailTaken, NotFound
from api.users.models import UserFields, UserPatch
from api.users.repository import UsersRepository, email_key, user_key
from api.users.service import UsersService
from fakes import CountingRedis, FakeTable
from lambdaloop.cache import Cache
from lambdaloop.errors import DependencyUnavailable, TransactionConflict
from lambdaloop.runtime import get_loop
from lambdaloop.store import TransactOp
from lambdaloop.tenancy import scoped
from support import TENANT

T = TypeVar("T")


def run(work: Awaitable[T]) -> T:
    return get_loop().run_until_complete(work)


class World:
    def __init__(self) -> None:
        self.table = FakeTable()
        self.redis = CountingRedis()
        self.service = UsersService(
            UsersRepository(self.table), Cache("users", client=self.redis), clock=lambda: "T"
        )

    def users(self) -> list[dict[str, Any]]:
        prefix = scoped(TENANT, "USER", "")
        return [i for (pk, _), i in self.table.items.items() if pk.startswith(prefix)]

    def claims(self) -> set[str]:
        prefix = scoped(TENANT, "EMAIL", "")
        return {pk for (pk, _) in self.table.items if pk.startswith(prefix)}


def claim(email: str) -> str:
    """The key of an email's claim in :data:`TENANT`'s partition (as written, not lowered)."""
    return scoped(TENANT, "EMAIL", email)


@pytest.fixture
def world() -> World:
    return World()


def fields(email: str, name: str = "Ann", webhook_url: str | None = None) -> UserFields:
    return UserFields(name=name, email=email, webhook_url=webhook_url)


def test_create_assigns_ids_and_writes_through(world: World) -> None:
    first = run(world.service.create(TENANT, fields("a@x.org")))
    second = run(world.service.create(TENANT, fields("b@x.org")))
    world.table.calls.clear()

    again = run(world.service.get(TENANT, second["id"]))

    assert (first["id"], second["id"]) == (1, 2)
    assert again == second
    assert world.table.calls["get"] == 0  # served by the cache


def test_an_email_is_claimed_once_whatever_its_case(world: World) -> None:
    run(world.service.create(TENANT, fields("ann@x.org")))

    with pytest.raises(EmailTaken) as caught:
        run(world.service.create(TENANT, fields("ANN@X.ORG")))

    assert caught.value.extensions == {"emails": ["ANN@x.org"]}  # domains are normalised
    assert len(world.users()) == 1
    assert world.claims() == {claim("ann@x.org")}


def test_replace_creates_then_replaces_and_moves_the_claim(world: World) -> None:
    user, created = run(world.service.replace(TENANT, 7, fields("old@x.org")))
    replaced, created_again = run(world.service.replace(TENANT, 7, fields("new@x.org", name="Bo")))
    assigned = run(world.service.create(TENANT, fields("next@x.org")))

    assert (created, created_again) == (True, False)
    assert replaced["name"] == "Bo"
    assert replaced["created_at"] == user["created_at"]
    assert world.claims() == {claim("new@x.org"), claim("next@x.org")}
    assert assigned["id"] == 8  # the counter moved past the id the client chose


def test_patch_changes_only_what_is_given(world: World) -> None:
    user = run(world.service.create(TENANT, fields("p@x.org", webhook_url="https://h.example/x")))

    renamed = run(world.service.patch(TENANT, user["id"], UserPatch(name="Cy")))
    unhooked = run(world.service.patch(TENANT, user["id"], UserPatch(webhook_url=None)))

    assert (renamed["name"], renamed["email"]) == ("Cy", "p@x.org")
    assert renamed["webhook_url"] == "https://h.example/x"
    assert unhooked["webhook_url"] is None
    assert "webhook_url" not in world.table.items[(scoped(TENANT, "USER", 1), "PROFILE")]


def test_patch_to_a_taken_email_is_a_conflict_and_changes_nothing(world: World) -> None:
    run(world.service.create(TENANT, fields("one@x.org")))
    two = run(world.service.create(TENANT, fields("two@x.org")))

    with pytest.raises(EmailTaken):
        run(world.service.patch(TENANT, two["id"], UserPatch(email="one@x.org")))

    assert run(world.service.get(TENANT, two["id"]))["email"] == "two@x.org"
    assert world.claims() == {claim("one@x.org"), claim("two@x.org")}


def test_delete_removes_the_user_and_its_claim_and_caches_the_absence(world: World) -> None:
    user = run(world.service.create(TENANT, fields("d@x.org")))

    run(world.service.delete(TENANT, user["id"]))
    world.table.calls.clear()

    with pytest.raises(NotFound):
        run(world.service.get(TENANT, user["id"]))
    assert world.table.calls["get"] == 0
    assert world.users() == []
    assert world.claims() == set()
    with pytest.raises(NotFound):
        run(world.service.delete(TENANT, user["id"]))


def test_batch_get_takes_one_mget_one_batch_read_and_one_fill(world: World) -> None:
    users = [run(world.service.create(TENANT, fields(f"u{i}@x.org"))) for i in range(4)]
    # Two of them fell out of the cache.
    evicted = [world.service.cache.key("user", TENANT, u["id"]) for u in users[2:]]
    assert run(world.redis.delete(*evicted)) == 2
    world.redis.commands.clear()
    world.table.calls.clear()

    found, missing = run(world.service.get_many(TENANT, [4, 3, 99, 1, 2, 3]))

    assert [u["id"] for u in found] == [4, 3, 1, 2]
    assert missing == [99]
    assert world.redis.commands["MGET"] == 1
    assert world.redis.commands["GET"] == 0
    assert world.table.calls == {"batch_get": 1}

    world.table.calls.clear()
    assert run(world.service.get_many(TENANT, [99, 3])) == ([users[2]], [99])
    assert world.table.calls == {}


def test_a_batch_is_all_or_nothing(world: World) -> None:
    run(world.service.create(TENANT, fields("taken@x.org")))
    batch = [fields(f"b{i}@x.org") for i in range(70)] + [fields("taken@x.org")]

    with pytest.raises(EmailTaken) as caught:
        run(world.service.create_many(TENANT, batch))

    assert caught.value.extensions == {"emails": ["taken@x.org"]}
    assert len(world.users()) == 1  # the 50 of the first transaction were taken out again
    assert world.claims() == {claim("taken@x.org")}


def test_repeated_emails_in_one_batch_are_refused_before_any_write(world: World) -> None:
    with pytest.raises(Conflict) as caught:
        run(world.service.create_many(TENANT, [fields("r@x.org"), fields("R@x.org")]))

    assert caught.value.extensions == {"emails": ["r@x.org"]}
    assert world.table.calls == {}


def test_an_id_taken_behind_the_counters_back_is_skipped(world: World) -> None:
    user_1, claim_z = user_key(TENANT, 1), email_key(TENANT, "z@x.org")
    world.table.items[(user_1["pk"], user_1["sk"])] = {**user_1, "id": 1, "version": 1}
    world.table.items[(claim_z["pk"], claim_z["sk"])] = {**claim_z, "user_id": 1}

    user = run(world.service.create(TENANT, fields("a@x.org")))

    assert user["id"] == 2


class ThrottledTable(FakeTable):
    async def transact_write(
        self, operations: Sequence[TransactOp], *, token: str | None = None
    ) -> None:
        raise TransactionConflict(["ThrottlingError"] + ["None"] * (len(operations) - 1))


def test_a_throttled_transaction_is_dynamodbs_trouble_not_a_conflict() -> None:
    cache = Cache("users", client=CountingRedis())
    service = UsersService(UsersRepository(ThrottledTable()), cache)

    with pytest.raises(DependencyUnavailable):
        run(service.create(TENANT, fields("t@x.org")))
