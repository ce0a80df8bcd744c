"""The Users logic: cache-aside reads, write-through writes, races retried.

Every call acts within one tenant (the caller API Gateway verified): its records and its cache
keys are the tenant's own, so another tenant's user is exactly as absent as a missing one.

The cache holds the latest known state of each user, including "absent" (``None``): writes
replace it (write-through) so a client reads its own write, and read fills only fill an empty
slot (``SET NX``) so a slow reader never overwrites a newer write.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from api.errors import Conflict, EmailTaken, IdTaken, NotFound, RecordChanged
from api.users.models import UserFields, UserPatch
from api.users.repository import TRANSACTION_USERS, UsersRepository, user_view
from lambdaloop.cache import MISS, Cache, CacheAside
from lambdaloop.errors import DependencyError
from lambdaloop.runtime import beyond_budget
from lambdaloop.store import Item, utc_timestamp

__all__ = ["UsersService"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Optimistic-concurrency retries when another request changes the same user meanwhile.
_ATTEMPTS = 3


async def _until_unchanged(attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()`` (a read, then a write on the condition that nothing changed since) again
    while another request changes the user in between, up to ``_ATTEMPTS`` times; the last
    one's :class:`~api.errors.RecordChanged` is the client's 409."""
    for _ in range(_ATTEMPTS - 1):
        try:
            return await attempt()
        except (IdTaken, RecordChanged):
            continue  # changed (or created) concurrently: read it again
    try:
        return await attempt()
    except IdTaken as exc:  # a create raced another create of the id, every time
        raise RecordChanged(str(exc)) from exc


async def _learning_outcome(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, a write with a ClientRequestToken; when no answer came, once more with the
    same token (past the request's budget), which applies it at most once and answers how
    it went."""
    try:
        return await call()
    except DependencyError:
        with beyond_budget():
            return await call()


class UsersService:
    def __init__(
        self, repository: UsersRepository, cache: Cache, *, clock: Callable[[], str] = utc_timestamp
    ) -> None:
        self.repository = repository
        self.cache = cache
        self._aside = CacheAside(cache)
        self._clock = clock

    def _key(self, tenant: str, user_id: int) -> str:
        return self.cache.key("user", tenant, user_id)

    async def _load(self, tenant: str, user_id: int) -> dict[str, Any] | None:
        item = await self.repository.get(tenant, user_id)
        return user_view(item) if item else None

    async def get(self, tenant: str, user_id: int) -> dict[str, Any]:
        user = await self._aside.get_or_load(
            self._key(tenant, user_id), lambda: self._load(tenant, user_id)
        )
        if user is None:
            raise NotFound(f"User {user_id} does not exist")
        return user

    async def get_many(
        self, tenant: str, user_ids: Sequence[int]
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """One MGET for all, one BatchGetItem for the misses, one pipelined fill."""
        ids = list(dict.fromkeys(user_ids))
        keys = [self._key(tenant, i) for i in ids]
        cached = dict(zip(ids, await self.cache.get_many(keys), strict=True))
        misses = [i for i in ids if cached[i] is MISS]
        if misses:
            items = await self.repository.get_many(tenant, misses)
            found = {int(item["id"]): user_view(item) for item in items}
            fills = {self._key(tenant, i): found.get(i) for i in misses}
            await self.cache.set_many(fills, only_if_absent=True)
            cached.update({i: found.get(i) for i in misses})
        users = [cached[i] for i in ids if cached[i] is not None]
        missing = [i for i in ids if cached[i] is None]
        return users, missing

    def _new(
        self, user_id: int, fields: UserFields, created_at: str | None = None
    ) -> dict[str, Any]:
        now = self._clock()
        return {
            "id": user_id,
            "name": fields.name,
            "email": fields.email,
            "webhook_url": fields.webhook_url,
            "created_at": created_at or now,
            "updated_at": now,
        }

    async def create(self, tenant: str, fields: UserFields) -> dict[str, Any]:
        [user] = await self.create_many(tenant, [fields])
        return user

    async def create_many(self, tenant: str, batch: Sequence[UserFields]) -> list[dict[str, Any]]:
        """Create users with server-assigned ids, all or nothing.

        The users go in by parts of 50, one transaction each. A part whose answer did not
        arrive is asked again with its token, which tells whether it went in; when even
        that fails, the part counts as written. If any part fails, every part that went in
        (or may have) is undone before the error reaches the caller.
        """
        emails = [fields.email.lower() for fields in batch]
        repeated = sorted({e for e in emails if emails.count(e) > 1})
        if repeated:
            raise Conflict("The same email address appears more than once", emails=repeated)
        written: list[tuple[str, list[dict[str, Any]]]] = []  # (batch token, its users)
        try:
            for start in range(0, len(batch), TRANSACTION_USERS):
                await self._insert_part(tenant, batch[start : start + TRANSACTION_USERS], written)
        except BaseException:
            with beyond_budget():  # the undo runs even when the request is out of time
                await self._undo(tenant, written)
            raise
        created = [user for _, users in written for user in users]
        await self.cache.set_many({self._key(tenant, u["id"]): u for u in created})
        return created

    async def _insert_part(
        self,
        tenant: str,
        part: Sequence[UserFields],
        written: list[tuple[str, list[dict[str, Any]]]],
    ) -> None:
        for _ in range(_ATTEMPTS):
            ids = await self.repository.next_ids(tenant, len(part))
            users = [self._new(i, fields) for i, fields in zip(ids, part, strict=True)]
            token = str(uuid.uuid4())
            written.append((token, users))  # from here on it may have gone in
            try:
                await _learning_outcome(
                    functools.partial(self.repository.insert, tenant, users, batch=token)
                )
            except IdTaken:
                written.pop()  # refused: nothing of it went in
                continue  # a client PUT one of these ids: take fresh ones
            except EmailTaken:
                written.pop()  # refused: nothing of it went in
                raise
            return
        raise Conflict("Could not assign user ids; try again")

    async def _undo(self, tenant: str, written: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """Delete the parts in ``written``; the cache then says "absent" for their ids (or
        forgets them, when the undo itself failed and they may still exist)."""
        keys = [self._key(tenant, u["id"]) for _, users in written for u in users]
        try:
            for batch, users in written:
                token = str(uuid.uuid4())
                undo = functools.partial(self.repository.undo_insert, tenant, users, batch)
                await _learning_outcome(functools.partial(undo, token=token))
        except Exception:
            logger.exception("users batch: undo failed; users may remain: %s", keys)
            await self.cache.delete(*keys)
            return
        await self.cache.set_many(dict.fromkeys(keys))

    async def replace(
        self, tenant: str, user_id: int, fields: UserFields
    ) -> tuple[dict[str, Any], bool]:
        """Create or replace user ``user_id``; True when it was created."""

        async def attempt() -> tuple[dict[str, Any], bool]:
            current = await self.repository.get(tenant, user_id, consistent=True)
            if current is None:
                await self.repository.reserve_id(tenant, user_id)
                user = self._new(user_id, fields)
                await self.repository.insert(tenant, [user])
            else:
                user = self._new(user_id, fields, created_at=current["created_at"])
                await self.repository.replace(tenant, current, user)
            await self.cache.set(self._key(tenant, user_id), user)
            return user, current is None

        return await _until_unchanged(attempt)

    async def patch(self, tenant: str, user_id: int, changes: UserPatch) -> dict[str, Any]:
        async def attempt() -> dict[str, Any]:
            current = await self._current(tenant, user_id)
            merged = {**user_view(current), **changes.model_dump(exclude_unset=True)}
            user = {**merged, "updated_at": self._clock()}
            await self.repository.replace(tenant, current, user)
            await self.cache.set(self._key(tenant, user_id), user)
            return user

        return await _until_unchanged(attempt)

    async def delete(self, tenant: str, user_id: int) -> None:
        async def attempt() -> None:
            current = await self._current(tenant, user_id)
            await self.repository.remove(tenant, current)
            await self.cache.set(self._key(tenant, user_id), None)  # known absent

        await _until_unchanged(attempt)

    async def _current(self, tenant: str, user_id: int) -> Item:
        current = await self.repository.get(tenant, user_id, consistent=True)
        if current is None:
            raise NotFound(f"User {user_id} does not exist")
        return current
