"""The Users logic: cache-aside reads, write-through writes, races retried.

Every call acts within one tenant (the caller API Gateway verified): its records and its cache
keys are the tenant's own, so another tenant's user is exactly as absent as a missing one.

The cache holds the latest known state of each user, including "absent" (``None``): writes
replace it (write-through) so a client reads its own write, and read fills only fill an empty
slot (``SET NX``) so a slow reader never overwrites a newer write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from api.errors import Conflict, NotFound
from api.users.models import UserFields, UserPatch
from api.users.repository import TRANSACTION_USERS, UserExists, UsersRepository, public
from lambdaloop.cache import MISS, Cache, CacheAside
from lambdaloop.store import Item, utc_timestamp

__all__ = ["UsersService"]

#: Optimistic-concurrency retries when another request changes the same user meanwhile.
_ATTEMPTS = 3


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
        return public(item) if item else None

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
            found = {int(item["id"]): public(item) for item in items}
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
        """Create users with server-assigned ids, all or nothing."""
        emails = [fields.email.lower() for fields in batch]
        repeated = sorted({e for e in emails if emails.count(e) > 1})
        if repeated:
            raise Conflict("The same email address appears more than once", emails=repeated)
        created: list[dict[str, Any]] = []
        try:
            for start in range(0, len(batch), TRANSACTION_USERS):
                part = batch[start : start + TRANSACTION_USERS]
                created.extend(await self._insert_part(tenant, part))
        except BaseException:
            # All or nothing: undo the parts that went in before the failure.
            if created:
                await self.repository.delete_created(tenant, created)
            raise
        await self.cache.set_many({self._key(tenant, u["id"]): u for u in created})
        return created

    async def _insert_part(self, tenant: str, part: Sequence[UserFields]) -> list[dict[str, Any]]:
        for _ in range(_ATTEMPTS):
            ids = await self.repository.next_ids(tenant, len(part))
            users = [self._new(i, fields) for i, fields in zip(ids, part, strict=True)]
            try:
                await self.repository.insert(tenant, users)
            except UserExists:
                continue  # a client PUT one of these ids: take fresh ones
            return users
        raise Conflict("Could not assign user ids; try again")

    async def replace(
        self, tenant: str, user_id: int, fields: UserFields
    ) -> tuple[dict[str, Any], bool]:
        """Create or replace user ``user_id``; True when it was created."""
        for _ in range(_ATTEMPTS):
            current = await self.repository.get(tenant, user_id, consistent=True)
            try:
                if current is None:
                    await self.repository.reserve_id(tenant, user_id)
                    user = self._new(user_id, fields)
                    await self.repository.insert(tenant, [user])
                else:
                    user = self._new(user_id, fields, created_at=current["created_at"])
                    await self.repository.replace(tenant, current, user)
            except UserExists:
                continue  # changed (or created) concurrently: read it again
            await self.cache.set(self._key(tenant, user_id), user)
            return user, current is None
        raise Conflict(f"User {user_id} is being changed concurrently; try again")

    async def patch(self, tenant: str, user_id: int, changes: UserPatch) -> dict[str, Any]:
        for _ in range(_ATTEMPTS):
            current = await self._current(tenant, user_id)
            merged = {**public(current), **changes.model_dump(exclude_unset=True)}
            user = {**merged, "updated_at": self._clock()}
            try:
                await self.repository.replace(tenant, current, user)
            except UserExists:
                continue
            await self.cache.set(self._key(tenant, user_id), user)
            return user
        raise Conflict(f"User {user_id} is being changed concurrently; try again")

    async def delete(self, tenant: str, user_id: int) -> None:
        for _ in range(_ATTEMPTS):
            current = await self._current(tenant, user_id)
            try:
                await self.repository.remove(tenant, current)
            except UserExists:
                continue
            await self.cache.set(self._key(tenant, user_id), None)  # known absent
            return
        raise Conflict(f"User {user_id} is being changed concurrently; try again")

    async def _current(self, tenant: str, user_id: int) -> Item:
        current = await self.repository.get(tenant, user_id, consistent=True)
        if current is None:
            raise NotFound(f"User {user_id} does not exist")
        return current
