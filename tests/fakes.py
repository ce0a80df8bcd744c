"""In-memory fakes behind the adapters' interfaces, for unit tests.

FakeTable implements what the users repository uses of lambdaloop.store.Table, with the
condition expressions it writes (attribute_[not_]exists, =, <, OR) evaluated for real, so a
transaction that would be refused by DynamoDB is refused here too.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from fakeredis import FakeAsyncRedis
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from lambdaloop.errors import ConditionFailed, TransactionConflict
from lambdaloop.store import BatchGetResult, Item, Key, TransactOp

_CLAUSE = re.compile(
    r"^(?:(?P<fn>attribute_exists|attribute_not_exists)\((?P<attr>[#\w]+)\)"
    r"|(?P<left>[#\w]+)\s*(?P<op>=|<)\s*(?P<right>:\w+))$"
)


def _clause_holds(
    clause: str, item: Item | None, names: Mapping[str, str], values: Mapping[str, Any]
) -> bool:
    found = _CLAUSE.match(clause.strip())
    if found is None:
        raise NotImplementedError(f"the fake cannot evaluate {clause!r}")
    if found["fn"]:
        exists = item is not None and names.get(found["attr"], found["attr"]) in item
        return exists == (found["fn"] == "attribute_exists")
    attribute = names.get(found["left"], found["left"])
    if item is None or attribute not in item:
        return False
    left, right = item[attribute], values[found["right"]]
    return bool(left == right if found["op"] == "=" else left < right)


def _holds(
    condition: str | None,
    item: Item | None,
    names: Mapping[str, str] | None,
    values: Mapping[str, Any] | None,
) -> bool:
    """Top-level ORs of (optionally parenthesised) ANDs: ``a OR (b AND c)``."""
    if not condition:
        return True
    return any(
        all(
            _clause_holds(clause, item, names or {}, values or {})
            for clause in (alt[1:-1] if alt.startswith("(") else alt).split(" AND ")
        )
        for alt in (part.strip() for part in condition.split(" OR "))
    )


class FakeTable:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], Item] = {}
        self.calls: Counter[str] = Counter()

    @staticmethod
    def _id(key: Mapping[str, Any]) -> tuple[str, str]:
        return key["pk"], key["sk"]

    async def get(self, key: Key, *, consistent: bool = False) -> Item | None:
        self.calls["get"] += 1
        item = self.items.get(self._id(key))
        return copy.deepcopy(item)

    async def batch_get(self, keys: Sequence[Key], *, consistent: bool = False) -> BatchGetResult:
        self.calls["batch_get"] += 1
        found = [copy.deepcopy(self.items[self._id(k)]) for k in keys if self._id(k) in self.items]
        return BatchGetResult(items=found, unprocessed=[])

    async def increment(self, key: Key, attribute: str, by: int = 1) -> int:
        self.calls["increment"] += 1
        item = self.items.setdefault(self._id(key), dict(key))
        item[attribute] = int(item.get(attribute, 0)) + by
        return int(item[attribute])

    async def update(
        self,
        key: Key,
        changes: dict[str, Any],
        *,
        must_exist: bool = True,
        condition: str | None = None,
        names: dict[str, str] | None = None,
        values: dict[str, Any] | None = None,
    ) -> Item:
        self.calls["update"] += 1
        current = self.items.get(self._id(key))
        if (must_exist and current is None) or not _holds(condition, current, names, values):
            raise ConditionFailed("condition failed")
        item = {**(current or dict(key)), **changes}
        self.items[self._id(key)] = item
        return copy.deepcopy(item)

    async def transact_write(
        self, operations: Sequence[TransactOp], *, token: str | None = None
    ) -> None:
        self.calls["transact_write"] += 1
        reasons = [
            "None"
            if _holds(op.condition, self.items.get(self._id(op.target)), op.names, op.values)
            else "ConditionalCheckFailed"
            for op in operations
        ]
        if any(reason != "None" for reason in reasons):
            raise TransactionConflict(reasons)
        for op in operations:
            if op.kind == "Put":
                self.items[self._id(op.target)] = copy.deepcopy(dict(op.target))
            elif op.kind == "Delete":
                self.items.pop(self._id(op.target), None)
            else:
                raise NotImplementedError(op.kind)


class CountingRedis(FakeAsyncRedis):
    """A fake Redis that counts the commands it is sent and can be switched off."""

    def __init__(self) -> None:
        # The same pool class and size as lambdaloop.clients gives the real client.
        super().__init__(connection_pool_class=BlockingConnectionPool, max_connections=64)
        self.commands: Counter[str] = Counter()
        self.down = False
        self.gets_reached = asyncio.Event()
        self.gets_target = 0
        #: While set (and not yet released), every command waits on it: a Redis that hangs.
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()  # set once a command is waiting on ``hold``

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.down:
            raise RedisConnectionError("Connection refused")
        if self.hold is not None:
            self.held.set()
            await self.hold.wait()
        name = str(args[0]).upper()
        self.commands[name] += 1
        if name == "GET" and self.gets_target and self.commands[name] >= self.gets_target:
            self.gets_reached.set()
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


class FakeIdempotencyTable:
    """The part of lambdaloop.store.Table the guard uses, keyed by ``id``."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.fail_puts_of: str | None = None  # a status whose puts fail (a table outage)

    async def get(self, key: dict[str, Any], *, consistent: bool = False) -> dict[str, Any] | None:
        self.calls["get"] += 1
        return copy.deepcopy(self.items.get(key["id"]))

    async def put(
        self,
        item: dict[str, Any],
        *,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        self.calls["put"] += 1
        if item.get("status") == self.fail_puts_of:
            raise ConnectionError("table unreachable")
        current = self.items.get(item["id"])
        if condition and not _holds(condition, current, names or {}, values or {}):
            raise ConditionFailed("condition failed")
        self.items[item["id"]] = copy.deepcopy(item)

    async def delete(
        self, key: dict[str, Any], *, must_exist: bool = False
    ) -> dict[str, Any] | None:
        self.calls["delete"] += 1
        return self.items.pop(key["id"], None)
