"""Users in DynamoDB (single-table design), with email uniqueness enforced by DynamoDB.

Every key is inside the tenant's partition (``T#<tenant>``, :mod:`lambdaloop.tenancy`): ids,
emails and the id counter are per tenant, and no key of one tenant names another's record.

T#<tenant>#USER#<id>      PROFILE   the user (with a version for optimistic concurrency)
T#<tenant>#EMAIL#<email>  EMAIL     the email's owner: claimed in the same transaction as the
                                    user, so two users can never hold one address
T#<tenant>#COUNTER#users  COUNTER   the last server-assigned id (UpdateItem ADD)

Users created by POST carry the ``batch`` token of the transaction that wrote them (on the
user and on its email claim), so undoing a batch deletes exactly what that batch wrote, and
nothing a concurrent request wrote at the same keys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

from api.errors import EmailTaken, IdsExhausted, IdTaken, RecordChanged
from api.users.models import MAX_USER_ID
from lambdaloop.errors import ConditionFailed, DependencyUnavailable, TransactionConflict
from lambdaloop.store import BatchGetResult, Item, Key, TransactOp
from lambdaloop.tenancy import scoped

__all__ = ["TRANSACTION_USERS", "TableLike", "UsersRepository", "user_view"]

#: TransactWriteItems takes 100 operations: a user and its email claim are two.
TRANSACTION_USERS = 50
#: A PUT that creates a user moves the id counter past its id only when the id is at most
#: this far ahead of it: so no PUT can push the counter to the end of the id range (a POST
#: that later meets a farther PUT id takes fresh ids past it).
RESERVE_WINDOW = 1_000_000
_PUBLIC = ("id", "name", "email", "webhook_url", "created_at", "updated_at")


class TableLike(Protocol):
    """What the repository needs of :class:`lambdaloop.store.Table` (fakes implement it too)."""

    async def get(self, key: Key, *, consistent: bool = False) -> Item | None: ...
    async def batch_get(
        self, keys: Sequence[Key], *, consistent: bool = False
    ) -> BatchGetResult: ...
    async def increment(self, key: Key, attribute: str, by: int = 1) -> int: ...
    async def update(
        self,
        key: Key,
        changes: dict[str, Any],
        *,
        must_exist: bool = True,
        condition: str | None = None,
        names: dict[str, str] | None = None,
        values: dict[str, Any] | None = None,
    ) -> Item: ...
    async def transact_write(
        self, operations: Sequence[TransactOp], *, token: str | None = None
    ) -> None: ...


def user_key(tenant: str, user_id: int) -> Key:
    return {"pk": scoped(tenant, "USER", user_id), "sk": "PROFILE"}


def email_key(tenant: str, email: str) -> Key:
    # One claim per address whatever its case: Bob@x.org and bob@x.org are one mailbox.
    return {"pk": scoped(tenant, "EMAIL", email.lower()), "sk": "EMAIL"}


def _counter(tenant: str) -> Key:
    return {"pk": scoped(tenant, "COUNTER", "users"), "sk": "COUNTER"}


def user_view(item: Item) -> dict[str, Any]:
    """The user as the API shows it (no keys, no version)."""
    user = {name: item.get(name) for name in _PUBLIC}
    user["id"] = int(item["id"])
    return user


def _user_item(tenant: str, user: dict[str, Any], version: int) -> Item:
    item = {**user_key(tenant, user["id"]), **{k: v for k, v in user.items() if v is not None}}
    item["version"] = version
    return item


def _claim(tenant: str, user: dict[str, Any], batch: str | None = None) -> TransactOp:
    claim = {**email_key(tenant, user["email"]), "user_id": user["id"]}
    if batch is not None:
        claim["batch"] = batch
    return TransactOp.put(claim, condition="attribute_not_exists(pk)")


class UsersRepository:
    def __init__(self, table: TableLike) -> None:
        self.table = table

    async def get(self, tenant: str, user_id: int, *, consistent: bool = False) -> Item | None:
        return await self.table.get(user_key(tenant, user_id), consistent=consistent)

    async def get_many(self, tenant: str, user_ids: Sequence[int]) -> list[Item]:
        """The users that exist, in one BatchGetItem (per 100); the rest are missing."""
        result = await self.table.batch_get([user_key(tenant, i) for i in user_ids])
        if result.unprocessed:
            raise DependencyUnavailable("dynamodb", f"{len(result.unprocessed)} keys unread")
        return result.items

    async def next_ids(self, tenant: str, count: int) -> list[int]:
        last = await self.table.increment(_counter(tenant), "value", count)
        if last > MAX_USER_ID:  # only reachable by ~9e9 PUTs, each moving it RESERVE_WINDOW
            raise IdsExhausted("This tenant has no user ids left")
        return list(range(last - count + 1, last + 1))

    async def reserve_id(self, tenant: str, user_id: int) -> None:
        """Move the counter past an id a client chose (PUT) when it is at most
        :data:`RESERVE_WINDOW` ahead, so assigned ids avoid it."""
        if user_id <= RESERVE_WINDOW:
            condition = "attribute_not_exists(#value) OR #value < :reserved"
            values = {":reserved": user_id}
        else:
            condition = "#value < :reserved AND #value >= :floor"
            values = {":reserved": user_id, ":floor": user_id - RESERVE_WINDOW}
        with contextlib.suppress(ConditionFailed):  # past it already, or it is too far
            await self.table.update(
                _counter(tenant),
                {"value": user_id},
                must_exist=False,
                condition=condition,
                names={"#value": "value"},
                values=values,
            )

    async def insert(
        self, tenant: str, users: Sequence[dict[str, Any]], *, batch: str | None = None
    ) -> None:
        """Create up to 50 users and claim their emails, all or nothing.

        ``batch`` (a fresh token per call, at most 36 characters) marks what this call
        writes and is its transaction's ClientRequestToken: calling again with the same
        ``batch`` after an answer was lost applies it at most once and answers success if
        the first call went in. Raises :class:`~api.errors.IdTaken` when an id is taken and
        :class:`~api.errors.EmailTaken` naming the emails that are already in use.
        """
        operations: list[TransactOp] = []
        for user in users:
            item = _user_item(tenant, user, 1)
            if batch is not None:
                item["batch"] = batch
            operations.append(TransactOp.put(item, condition="attribute_not_exists(pk)"))
            operations.append(_claim(tenant, user, batch))
        try:
            await self.table.transact_write(operations, token=batch)
        except TransactionConflict as exc:
            taken = IdTaken(f"An id of users {[u['id'] for u in users]} is taken")
            raise _explain(exc, users, taken) from exc

    async def replace(self, tenant: str, current: Item, user: dict[str, Any]) -> None:
        """Replace ``current`` with ``user`` unless someone changed it since it was read."""
        version = int(current["version"])
        operations = [
            TransactOp.put(
                _user_item(tenant, user, version + 1),
                condition="#version = :version",
                names={"#version": "version"},
                values={":version": version},
            )
        ]
        if current["email"].lower() != user["email"].lower():
            operations.append(_claim(tenant, user))
            operations.append(TransactOp.delete(email_key(tenant, current["email"])))
        try:
            await self.table.transact_write(operations)
        except TransactionConflict as exc:
            raise _explain(exc, [user], _changed(user["id"])) from exc

    async def remove(self, tenant: str, current: Item) -> None:
        version = int(current["version"])
        try:
            await self.table.transact_write(
                [
                    TransactOp.delete(
                        user_key(tenant, int(current["id"])),
                        condition="#version = :version",
                        names={"#version": "version"},
                        values={":version": version},
                    ),
                    TransactOp.delete(email_key(tenant, current["email"])),
                ]
            )
        except TransactionConflict as exc:
            raise _changed(current["id"]) from exc

    async def undo_insert(
        self, tenant: str, users: Sequence[dict[str, Any]], batch: str, *, token: str
    ) -> bool:
        """Delete what :meth:`insert` with ``batch`` wrote, in one transaction (``token``
        its ClientRequestToken); False when that insert is not there to undo (it never went
        in, or a user of it was changed since)."""
        operations = [
            TransactOp.delete(
                key, "#batch = :batch", names={"#batch": "batch"}, values={":batch": batch}
            )
            for user in users
            for key in (user_key(tenant, user["id"]), email_key(tenant, user["email"]))
        ]
        try:
            await self.table.transact_write(operations, token=token)
        except TransactionConflict as exc:
            if _THROTTLED & set(exc.reasons):
                raise DependencyUnavailable("dynamodb", f"undo throttled: {exc.reasons}") from exc
            return False
        return True


_THROTTLED = frozenset({"ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"})


def _changed(user_id: object) -> RecordChanged:
    return RecordChanged(f"User {user_id} is being changed concurrently; try again")


def _explain(
    exc: TransactionConflict, users: Sequence[dict[str, Any]], otherwise: Exception
) -> Exception:
    """Why the transaction was cancelled: throttling is DynamoDB's trouble (503), a taken
    email the client's conflict (409), else the user record's condition (``otherwise``: a
    race the service retries)."""
    if _THROTTLED & set(exc.reasons):
        return DependencyUnavailable("dynamodb", f"transaction throttled: {exc.reasons}")
    taken = [
        user["email"]
        for index, user in enumerate(users)
        if _failed(exc.reasons, 2 * index + 1)  # each user's claim follows its record
    ]
    if taken:
        return EmailTaken("Email address already in use", emails=taken)
    return otherwise


def _failed(reasons: Sequence[str], index: int) -> bool:
    return index < len(reasons) and reasons[index] == "ConditionalCheckFailed"
