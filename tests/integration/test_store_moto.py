"""The DynamoDB table adapter against moto (server mode), on the template's users table.

Every test writes under its own random partition-key prefix: the table is shared by the
whole session.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypeVar

import pytest

from lambdaloop.errors import ConditionFailed, TransactionConflict
from lambdaloop.store import Table, TransactOp
from lambdaloop_local.stack import LocalStack
from support import run

T = TypeVar("T")


@pytest.fixture
def table(local_stack: LocalStack) -> Table:
    return Table(
        local_stack.resources.refs["UsersTable"], client=local_stack.aws_client("dynamodb")
    )


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}"


def test_an_item_makes_the_round_trip_as_plain_python(table: Table, prefix: str) -> None:
    key = {"pk": f"{prefix}#user", "sk": "profile"}
    item = {
        **key,
        "name": "Ada",
        "age": 36,
        "score": 1.5,
        "tags": {"a", "b"},
        "nested": {"n": 1, "list": [1, 2.25, "x"]},
        "blob": b"\x00\x01",
        "active": True,
        "nothing": None,
    }

    run(table.put(item))
    found = run(table.get(key, consistent=True))

    assert found == item
    assert type(found["age"]) is int if found else False


def test_update_sets_and_removes_then_delete_returns_the_old_item(
    table: Table, prefix: str
) -> None:
    # Given an item
    key = {"pk": f"{prefix}#user", "sk": "profile"}
    run(table.put({**key, "name": "Ada", "email": "ada@example.com", "status": "new"}))

    # When attributes are changed (including a reserved word, "name") and one removed
    updated = run(table.update(key, {"name": "Ada L.", "status": "active", "email": None}))

    # Then the whole new item comes back
    assert updated == {**key, "name": "Ada L.", "status": "active"}
    assert run(table.get(key)) == updated

    # And delete returns it once, then nothing
    assert run(table.delete(key)) == updated
    assert run(table.delete(key)) is None
    assert run(table.get(key)) is None


def test_create_refuses_an_existing_item(table: Table, prefix: str) -> None:
    item = {"pk": f"{prefix}#user", "sk": "profile", "name": "Ada"}
    run(table.create(item))

    with pytest.raises(ConditionFailed):
        run(table.create({**item, "name": "Eve"}))

    assert run(table.get({"pk": item["pk"], "sk": "profile"})) == item


def test_update_and_delete_of_a_missing_item_fail_when_it_must_exist(
    table: Table, prefix: str
) -> None:
    key = {"pk": f"{prefix}#missing", "sk": "profile"}

    with pytest.raises(ConditionFailed):
        run(table.update(key, {"name": "Ada"}))
    with pytest.raises(ConditionFailed):
        run(table.delete(key, must_exist=True))

    assert run(table.get(key)) is None


def test_update_honours_the_callers_condition(table: Table, prefix: str) -> None:
    key = {"pk": f"{prefix}#user", "sk": "profile"}
    run(table.put({**key, "version": 1}))

    with pytest.raises(ConditionFailed):
        run(
            table.update(
                key, {"version": 3}, condition="version = :expected", values={":expected": 2}
            )
        )
    updated = run(
        table.update(key, {"version": 2}, condition="version = :expected", values={":expected": 1})
    )

    assert updated["version"] == 2


def test_increment_counts_from_nothing_and_never_loses_a_concurrent_update(
    table: Table, prefix: str
) -> None:
    key = {"pk": f"{prefix}#counter", "sk": "hits"}

    first = [run(table.increment(key, "count")) for _ in range(3)]

    async def many() -> list[int]:
        return list(await asyncio.gather(*(table.increment(key, "count") for _ in range(20))))

    concurrent = run(many())

    assert first == [1, 2, 3]
    assert sorted(concurrent) == list(range(4, 24))
    assert run(table.get(key, consistent=True)) == {**key, "count": 23}


def test_batch_write_then_batch_get_finds_every_item_and_no_missing_one(
    table: Table, prefix: str
) -> None:
    # Given 60 items written in one batch (three BatchWriteItem calls)
    items = [{"pk": f"{prefix}#item", "sk": f"{n:03d}", "n": n} for n in range(60)]
    written = run(table.batch_write(puts=items))
    assert written.complete

    # When they are read back with 5 keys that have no item
    keys = [{"pk": i["pk"], "sk": i["sk"]} for i in items]
    missing = [{"pk": f"{prefix}#item", "sk": f"missing-{n}"} for n in range(5)]
    result = run(table.batch_get(keys + missing, consistent=True))

    # Then exactly the 60 come back, nothing unprocessed
    assert sorted(result.items, key=lambda i: i["n"]) == items
    assert result.unprocessed == []

    # And a batch of deletes removes them
    assert run(table.batch_write(deletes=keys)).complete
    assert run(table.batch_get(keys, consistent=True)).items == []


def test_a_failing_transaction_names_the_operation_whose_condition_failed(
    table: Table, prefix: str
) -> None:
    # Given an existing account and a new one to create
    existing = {"pk": f"{prefix}#account", "sk": "a", "balance": 10}
    run(table.put(existing))
    new = {"pk": f"{prefix}#account", "sk": "b", "balance": 0}
    operations = [
        TransactOp.put(new, condition="attribute_not_exists(pk)"),
        TransactOp.update(
            {"pk": existing["pk"], "sk": "a"},
            "SET balance = balance - :amount",
            values={":amount": 50},
            condition="balance >= :amount",
        ),
    ]

    # When the transaction's second condition fails
    with pytest.raises(TransactionConflict) as raised:
        run(table.transact_write(operations))

    # Then the reasons say which one, and nothing was written
    assert raised.value.reasons == ["None", "ConditionalCheckFailed"]
    assert raised.value.failed == {1: "ConditionalCheckFailed"}
    assert run(table.get({"pk": new["pk"], "sk": "b"})) is None
    assert run(table.get({"pk": existing["pk"], "sk": "a"})) == existing


def test_a_transaction_applies_every_operation(table: Table, prefix: str) -> None:
    account = {"pk": f"{prefix}#account", "sk": "a", "balance": 10}
    gone = {"pk": f"{prefix}#account", "sk": "old"}
    owner = {"pk": f"{prefix}#owner", "sk": "profile"}
    run(table.batch_write(puts=[account, gone, owner]))
    operations = [
        TransactOp.put({"pk": account["pk"], "sk": "b", "balance": 5}),
        TransactOp.update(
            {"pk": account["pk"], "sk": "a"},
            "SET balance = balance - :amount",
            values={":amount": 5},
        ),
        TransactOp.delete(gone),
        TransactOp.condition_check(owner, "attribute_exists(pk)"),
    ]

    run(table.transact_write(operations))

    balances: dict[str, Any] = {
        i["sk"]: i["balance"]
        for i in run(
            table.batch_get([{"pk": account["pk"], "sk": s} for s in ("a", "b", "old")])
        ).items
    }
    assert balances == {"a": 5, "b": 5}


def test_update_adds_to_numbers_while_it_sets_others(table: Table, prefix: str) -> None:
    key = {"pk": f"{prefix}#note", "sk": "n"}
    run(table.put({**key, "status": "queued"}))

    first = run(table.update(key, {"status": "sending"}, add={"attempts": 1}))
    second = run(table.update(key, {"status": "retrying"}, add={"attempts": 1, "cost": 2.5}))

    assert (first["attempts"], first["status"]) == (1, "sending")
    assert (second["attempts"], second["cost"], second["status"]) == (2, 2.5, "retrying")


def test_query_pages_through_a_partition_in_either_order(table: Table, prefix: str) -> None:
    pk = f"{prefix}#inbox"
    for n in range(5):
        run(table.put({"pk": pk, "sk": f"note#{n}", "n": n}))
    run(table.put({"pk": f"{prefix}#other", "sk": "note#9", "n": 9}))

    def pages(newest_first: bool) -> list[list[int]]:
        seen: list[list[int]] = []
        start = None
        while True:
            page = run(
                table.query(
                    "#pk = :pk",
                    names={"#pk": "pk"},
                    values={":pk": pk},
                    limit=2,
                    newest_first=newest_first,
                    start_key=start,
                    consistent=True,
                )
            )
            seen.append([item["n"] for item in page.items])
            if page.next_key is None:
                return seen
            start = page.next_key

    assert [n for page in pages(False) for n in page] == [0, 1, 2, 3, 4]
    newest = pages(True)
    assert [n for page in newest for n in page] == [4, 3, 2, 1, 0]
    assert all(len(page) <= 2 for page in newest)
