"""An async adapter for one DynamoDB table: plain dicts in and out, SDK errors translated.

boto3 blocks, so every call runs in the layer's bounded thread pool
(:func:`~lambdaloop.clients.run_blocking`); the client is built on first use, in that pool,
unless one is injected. boto3 itself is imported by the first call, not by this module.

Values are plain Python on both sides:

- DynamoDB returns every number as ``Decimal``; here a number with no fractional part comes
  back as ``int`` and any other as ``float`` (so ``3.0`` stored comes back as ``3``).
  ``float`` values may be written: they are stored as ``Decimal(repr(value))``, the shortest
  decimal that round-trips; NaN and infinities are refused with ``ValueError``.
- Binary comes back as ``bytes``, number and string sets as ``set``, maps as ``dict``,
  lists as ``list``.

Errors are translated at this edge (``raise ... from exc``): a failed condition is
:class:`~lambdaloop.errors.ConditionFailed`, a cancelled transaction
:class:`~lambdaloop.errors.TransactionConflict` (with a reason code per operation),
throttling that outlasted botocore's retries and lost connections
:class:`~lambdaloop.errors.DependencyUnavailable`, timeouts
:class:`~lambdaloop.errors.DependencyTimeout`, any other service error
:class:`~lambdaloop.errors.DependencyError`. A ``ParamValidationError`` (a request the SDK
refuses to send) is a bug in the caller and propagates as is.

Batch calls split their input at the AWS limits (100 keys per BatchGetItem, 25 requests per
BatchWriteItem), run the chunks concurrently and retry what DynamoDB leaves unprocessed with
capped exponential backoff and full jitter. What is still unprocessed after the last attempt
is returned to the caller (and logged), never dropped. When a chunk fails outright, the
first error is raised after every chunk has finished; other chunks may have been written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, NamedTuple, TypeAlias, TypeVar

from lambdaloop._aws import AwsAdapter
from lambdaloop.backoff import Backoff
from lambdaloop.errors import (
    ConditionFailed,
    LambdaloopError,
    TransactionConflict,
)

__all__ = [
    "BatchGetResult",
    "BatchWriteResult",
    "Item",
    "Key",
    "Page",
    "Table",
    "TransactOp",
    "item_from_image",
    "utc_timestamp",
]

logger = logging.getLogger(__name__)

Item: TypeAlias = dict[str, Any]
Key: TypeAlias = dict[str, Any]
T = TypeVar("T")

#: AWS limits per request (moto enforces none of the two batch limits).
_BATCH_GET_LIMIT = 100
_BATCH_WRITE_LIMIT = 25
_TRANSACTION_LIMIT = 100
#: Retries of what a batch call left undone: 50 ms, doubling up to 1 s, full jitter.
_BACKOFF = Backoff(0.05, 1.0)

#: Error codes that mean "throttled", seen only once botocore's own retries gave up.


def utc_timestamp() -> str:
    """Now as ISO 8601 UTC with milliseconds (``2026-11-25T06:30:00.123Z``): the format of
    stored times, which sorts as text in time order (usable as a sort key)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class BatchGetResult:
    """The items found (in no particular order) and the keys DynamoDB never processed.

    A key that is neither among the items nor in ``unprocessed`` has no item.
    """

    items: list[Item]
    unprocessed: list[Key]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a query: its items, and the key to start the next page from (``None``
    on the last page)."""

    items: list[Item]
    next_key: Key | None


@dataclass(frozen=True, slots=True)
class BatchWriteResult:
    """The puts and deletes DynamoDB left unprocessed after the last attempt."""

    unprocessed_puts: list[Item]
    unprocessed_deletes: list[Key]

    @property
    def complete(self) -> bool:
        """Whether every put and delete was applied."""
        return not self.unprocessed_puts and not self.unprocessed_deletes


_OpKind: TypeAlias = Literal["Put", "Delete", "Update", "ConditionCheck"]


@dataclass(frozen=True, slots=True)
class TransactOp:
    """One operation of :meth:`Table.transact_write`; build it with the class methods.

    ``target`` is the item for a put and the key for every other kind. ``names`` and
    ``values`` fill the placeholders (``#name``, ``:value``) of ``expression`` (an update's
    expression) and ``condition``.
    """

    kind: _OpKind
    target: Mapping[str, Any]
    expression: str | None = None
    condition: str | None = None
    names: Mapping[str, str] | None = None
    values: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind == "Update" and not self.expression:
            raise ValueError("an Update operation needs an update expression")
        if self.kind == "ConditionCheck" and not self.condition:
            raise ValueError("a ConditionCheck operation needs a condition")

    @classmethod
    def put(
        cls,
        item: Mapping[str, Any],
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> TransactOp:
        """Write ``item`` whole, if ``condition`` holds."""
        return cls("Put", item, None, condition, names, values)

    @classmethod
    def delete(
        cls,
        key: Mapping[str, Any],
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> TransactOp:
        """Delete the item at ``key``, if ``condition`` holds."""
        return cls("Delete", key, None, condition, names, values)

    @classmethod
    def condition_check(
        cls,
        key: Mapping[str, Any],
        condition: str,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> TransactOp:
        """Write nothing, but cancel the transaction unless the item at ``key`` matches."""
        return cls("ConditionCheck", key, None, condition, names, values)

    @classmethod
    def update(
        cls,
        key: Mapping[str, Any],
        expression: str,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
        condition: str | None = None,
    ) -> TransactOp:
        """Apply the update ``expression`` to the item at ``key``, if ``condition`` holds."""
        return cls("Update", key, expression, condition, names, values)


# ----------------------------------------------------------------------------- the table


class Table(AwsAdapter):
    """One DynamoDB table, used from async code.

    ``client`` is a boto3 DynamoDB client (low level); by default the environment's
    (:func:`~lambdaloop.clients.aws_client`), built on first use. ``key_schema`` names the
    key attributes, partition key first: :meth:`create` and ``must_exist`` test the
    partition key, :meth:`batch_write` uses them to refuse duplicate keys. What a batch
    request leaves unprocessed is sent again, ``max_attempts`` calls in all, ``sleep``-ing
    ``backoff.delay(n)`` before retry ``n``.
    """

    def __init__(
        self,
        name: str,
        *,
        client: Any = None,
        key_schema: Sequence[str] = ("pk", "sk"),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_attempts: int = 8,
        backoff: Backoff = _BACKOFF,
    ) -> None:
        if not key_schema:
            raise ValueError("key_schema names at least the partition key")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.name = name
        self.key_schema = tuple(key_schema)
        super().__init__(client)
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._backoff = backoff

    service = "dynamodb"

    def __repr__(self) -> str:
        return f"Table({self.name!r})"

    def _client_error(
        self, code: str, message: str, response: Mapping[str, Any], operation: str
    ) -> LambdaloopError | None:
        if code == "ConditionalCheckFailedException":
            return ConditionFailed(f"{operation}: {message or 'the conditional request failed'}")
        if code == "TransactionCanceledException":
            reasons = response.get("CancellationReasons", [])
            return TransactionConflict([str(r.get("Code") or "None") for r in reasons])
        return None

    # ------------------------------------------------------------------- single items

    async def get(self, key: Key, *, consistent: bool = False) -> Item | None:
        """The item at ``key``, or ``None`` when there is none."""
        response = await self._call(
            "get_item", TableName=self.name, Key=_serialize_map(key), ConsistentRead=consistent
        )
        raw = response.get("Item")
        return None if raw is None else _deserialize_map(raw)

    async def put(
        self,
        item: Item,
        *,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        """Write ``item`` whole, replacing any item with its key.

        With ``condition`` (placeholders filled from ``names`` and ``values``) the write
        happens only if it holds, else :class:`~lambdaloop.errors.ConditionFailed`.
        """
        placeholders = _Placeholders(names, values)
        await self._call(
            "put_item",
            TableName=self.name,
            Item=_serialize_map(item),
            **_condition_params(condition),
            **placeholders.params(),
        )

    async def create(self, item: Item) -> None:
        """Write ``item`` only if no item has its key, else ``ConditionFailed``.

        When botocore retries a write whose first answer was lost, the retry finds the
        item the first attempt wrote and its condition fails: an item at the key equal to
        ``item`` is therefore taken as this call's own write, not as a conflict.
        """
        placeholders = _Placeholders()
        condition = f"attribute_not_exists({placeholders.name(self.key_schema[0])})"
        serialized = _serialize_map(item)
        try:
            await self._call(
                "put_item",
                TableName=self.name,
                Item=serialized,
                ConditionExpression=condition,
                **placeholders.params(),
            )
        except ConditionFailed:
            stored = await self.get({name: item[name] for name in self.key_schema}, consistent=True)
            if stored != _deserialize_map(serialized):
                raise

    async def update(
        self,
        key: Key,
        changes: Mapping[str, Any],
        *,
        add: Mapping[str, int | float] | None = None,
        must_exist: bool = True,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> Item:
        """Change some attributes of the item at ``key`` and return the whole item after.

        Each change sets its attribute, or removes it when the value is ``None``; each
        ``add`` entry adds to a number atomically (a missing one counts from 0). Any
        attribute name is safe (placeholders are generated). With ``must_exist`` a missing
        item is not created: :class:`~lambdaloop.errors.ConditionFailed` instead, as when
        ``condition`` does not hold. Key attributes cannot be changed (``ValueError``).
        """
        add = add or {}
        if not changes and not add:
            raise ValueError("update needs at least one change")
        if clash := sorted({*changes, *add} & {*key, *self.key_schema}):
            raise ValueError(f"key attributes cannot be updated: {', '.join(clash)}")
        placeholders = _Placeholders(names, values)
        sets = [
            f"{placeholders.name(attr)} = {placeholders.value(value)}"
            for attr, value in changes.items()
            if value is not None
        ]
        removes = [placeholders.name(attr) for attr, value in changes.items() if value is None]
        adds = [f"{placeholders.name(attr)} {placeholders.value(by)}" for attr, by in add.items()]
        clauses = [f"SET {', '.join(sets)}"] if sets else []
        if removes:
            clauses.append(f"REMOVE {', '.join(removes)}")
        if adds:
            clauses.append(f"ADD {', '.join(adds)}")
        response = await self._call(
            "update_item",
            TableName=self.name,
            Key=_serialize_map(key),
            UpdateExpression=" ".join(clauses),
            ReturnValues="ALL_NEW",
            **_condition_params(self._must_exist(must_exist, placeholders), condition),
            **placeholders.params(),
        )
        return _deserialize_map(response.get("Attributes", {}))

    async def delete(self, key: Key, *, must_exist: bool = False) -> Item | None:
        """Delete the item at ``key`` and return it (``None`` when there was none).

        With ``must_exist`` a missing item is :class:`~lambdaloop.errors.ConditionFailed`.
        """
        placeholders = _Placeholders()
        response = await self._call(
            "delete_item",
            TableName=self.name,
            Key=_serialize_map(key),
            ReturnValues="ALL_OLD",
            **_condition_params(self._must_exist(must_exist, placeholders)),
            **placeholders.params(),
        )
        raw = response.get("Attributes")
        return _deserialize_map(raw) if raw else None

    async def increment(self, key: Key, attribute: str, by: int = 1) -> int:
        """Add ``by`` to a counter atomically (a missing counter counts from 0); the new value.

        Concurrent increments never lose an update and each sees a distinct value.
        """
        placeholders = _Placeholders()
        response = await self._call(
            "update_item",
            TableName=self.name,
            Key=_serialize_map(key),
            UpdateExpression=f"ADD {placeholders.name(attribute)} {placeholders.value(by)}",
            ReturnValues="UPDATED_NEW",
            **placeholders.params(),
        )
        value: int = _deserialize_map(response["Attributes"])[attribute]
        return value

    async def query(
        self,
        key_condition: str,
        *,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, Any] | None = None,
        index: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        start_key: Key | None = None,
        consistent: bool = False,
    ) -> Page:
        """One page of the items matching ``key_condition`` (on the table, or on ``index``),
        in sort-key order (descending with ``newest_first``), at most ``limit`` of them.

        Pass the page's ``next_key`` as ``start_key`` for the next page. A page may hold
        fewer than ``limit`` items and still have a next one (DynamoDB stops at 1 MB).
        """
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        placeholders = _Placeholders(names, values)
        request: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": key_condition,
            "ScanIndexForward": not newest_first,
            "ConsistentRead": consistent,
            **placeholders.params(),
        }
        if index is not None:
            request["IndexName"] = index
        if limit is not None:
            request["Limit"] = limit
        if start_key is not None:
            request["ExclusiveStartKey"] = _serialize_map(start_key)
        response = await self._call("query", **request)
        last = response.get("LastEvaluatedKey")
        return Page(
            [_deserialize_map(raw) for raw in response.get("Items", [])],
            _deserialize_map(last) if last else None,
        )

    # ------------------------------------------------------------------- batches

    async def batch_get(self, keys: Sequence[Key], *, consistent: bool = False) -> BatchGetResult:
        """The items at ``keys`` (duplicates asked once); see :class:`BatchGetResult`."""
        unique = list({_key_identity(k): k for k in map(_serialize_map, keys)}.values())
        found: list[dict[str, Any]] = []

        async def send(pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
            request = {self.name: {"Keys": pending, "ConsistentRead": consistent}}
            response = await self._call("batch_get_item", RequestItems=request)
            found.extend(response.get("Responses", {}).get(self.name, []))
            unprocessed = response.get("UnprocessedKeys", {}).get(self.name, {})
            keys_left: list[dict[str, Any]] = unprocessed.get("Keys", [])
            return keys_left

        chunks = _chunks(unique, _BATCH_GET_LIMIT)
        left = await _gather(*(self._retry_unprocessed(chunk, send) for chunk in chunks))
        unprocessed = [_deserialize_map(k) for chunk in left for k in chunk]
        if unprocessed:
            logger.warning(
                "batch_get on %s: %d of %d key(s) still unprocessed after %d attempts",
                self.name,
                len(unprocessed),
                len(unique),
                self._max_attempts,
            )
        return BatchGetResult([_deserialize_map(i) for i in found], unprocessed)

    async def batch_write(
        self, puts: Sequence[Item] = (), deletes: Sequence[Key] = ()
    ) -> BatchWriteResult:
        """Write ``puts`` and delete ``deletes``, in no particular order.

        A key may appear only once across both (``ValueError``): AWS refuses duplicates in
        one request, and the outcome would depend on where the chunks are cut.
        """
        self._refuse_duplicate_keys(puts, deletes)
        requests = [{"PutRequest": {"Item": _serialize_map(item)}} for item in puts] + [
            {"DeleteRequest": {"Key": _serialize_map(key)}} for key in deletes
        ]

        async def send(pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
            response = await self._call("batch_write_item", RequestItems={self.name: pending})
            left: list[dict[str, Any]] = response.get("UnprocessedItems", {}).get(self.name, [])
            return left

        chunks = _chunks(requests, _BATCH_WRITE_LIMIT)
        left = await _gather(*(self._retry_unprocessed(chunk, send) for chunk in chunks))
        flat = [request for chunk in left for request in chunk]
        result = BatchWriteResult(
            [_deserialize_map(r["PutRequest"]["Item"]) for r in flat if "PutRequest" in r],
            [_deserialize_map(r["DeleteRequest"]["Key"]) for r in flat if "DeleteRequest" in r],
        )
        if flat:
            logger.warning(
                "batch_write on %s: %d put(s) and %d delete(s) still unprocessed after %d attempts",
                self.name,
                len(result.unprocessed_puts),
                len(result.unprocessed_deletes),
                self._max_attempts,
            )
        return result

    # ------------------------------------------------------------------- transactions

    async def transact_write(
        self, operations: Sequence[TransactOp], *, token: str | None = None
    ) -> None:
        """Apply ``operations`` (at most 100) on this table all together, or none of them.

        When any condition fails, or another request is changing one of the items, nothing
        is written and :class:`~lambdaloop.errors.TransactionConflict` is raised; its
        ``reasons`` hold one code per operation, in order (``"None"`` for the ones that
        were fine).

        ``token`` (1 to 36 characters) is the ClientRequestToken: for 10 minutes DynamoDB
        applies the same operations with the same token at most once and answers a repeat
        with success. A caller whose call ended without an answer (a timeout) calls again
        with the same token to learn the outcome instead of guessing it.
        """
        if not 0 < len(operations) <= _TRANSACTION_LIMIT:
            raise ValueError(
                f"a transaction takes 1 to {_TRANSACTION_LIMIT} operations, not {len(operations)}"
            )
        items = [self._transact_item(op) for op in operations]
        extra = {} if token is None else {"ClientRequestToken": token}
        await self._call("transact_write_items", TransactItems=items, **extra)

    def _transact_item(self, op: TransactOp) -> dict[str, Any]:
        body: dict[str, Any] = {
            "TableName": self.name,
            ("Item" if op.kind == "Put" else "Key"): _serialize_map(op.target),
        }
        if op.expression:
            body["UpdateExpression"] = op.expression
        if op.condition:
            body["ConditionExpression"] = op.condition
        if op.names:
            body["ExpressionAttributeNames"] = dict(op.names)
        if op.values:
            body["ExpressionAttributeValues"] = _serialize_map(op.values)
        return {op.kind: body}

    # ------------------------------------------------------------------- internals

    def _must_exist(self, must_exist: bool, placeholders: _Placeholders) -> str | None:
        if not must_exist:
            return None
        return f"attribute_exists({placeholders.name(self.key_schema[0])})"

    def _refuse_duplicate_keys(self, puts: Sequence[Item], deletes: Sequence[Key]) -> None:
        seen: set[tuple[tuple[str, str, Any], ...]] = set()
        for item in [*puts, *deletes]:
            missing = [name for name in self.key_schema if name not in item]
            if missing:
                raise ValueError(f"batch_write: {item!r} lacks key attribute(s) {missing}")
            identity = _key_identity(_serialize_map({n: item[n] for n in self.key_schema}))
            if identity in seen:
                raise ValueError(f"batch_write: key {identity} appears more than once")
            seen.add(identity)

    async def _retry_unprocessed(
        self,
        pending: list[T],
        send: Callable[[list[T]], Awaitable[list[T]]],
    ) -> list[T]:
        """Send ``pending``, then what came back unprocessed, up to ``max_attempts`` calls;
        return what is left."""
        for attempt in range(self._max_attempts):
            if attempt:
                await self._sleep(self._backoff.delay(attempt - 1))
            pending = await send(pending)
            if not pending:
                break
        return pending


# ----------------------------------------------------------------------------- helpers


class _Placeholders:
    """Generated ``#fN`` / ``:vN`` placeholders merged with the caller's own."""

    def __init__(
        self, names: Mapping[str, str] | None = None, values: Mapping[str, Any] | None = None
    ) -> None:
        self._names: dict[str, str] = dict(names or {})
        self._values: dict[str, Any] = {k: _serialize(v) for k, v in (values or {}).items()}
        self._counters = {"#f": 0, ":v": 0}

    def _next(self, prefix: str, taken: Mapping[str, Any]) -> str:
        while True:
            placeholder = f"{prefix}{self._counters[prefix]}"
            self._counters[prefix] += 1
            if placeholder not in taken:
                return placeholder

    def name(self, attribute: str) -> str:
        placeholder = self._next("#f", self._names)
        self._names[placeholder] = attribute
        return placeholder

    def value(self, value: Any) -> str:
        placeholder = self._next(":v", self._values)
        self._values[placeholder] = _serialize(value)
        return placeholder

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self._names:
            params["ExpressionAttributeNames"] = self._names
        if self._values:
            params["ExpressionAttributeValues"] = self._values
        return params


def _condition_params(*conditions: str | None) -> dict[str, str]:
    """``ConditionExpression`` joining the given conditions with AND (none: no parameter)."""
    present = [c for c in conditions if c]
    if not present:
        return {}
    if len(present) == 1:
        return {"ConditionExpression": present[0]}
    return {"ConditionExpression": " AND ".join(f"({c})" for c in present)}


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _gather(*work: Awaitable[T]) -> list[T]:
    """Await all of ``work`` concurrently; then raise the first failure, if any.

    Unlike a bare ``gather``, no chunk is left running behind the caller's back.
    """
    results = await asyncio.gather(*work, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def _key_identity(serialized: Mapping[str, Any]) -> tuple[tuple[str, str, Any], ...]:
    """A hashable identity for a serialized key; numerically equal numbers are one key."""
    parts = []
    for name, attribute in serialized.items():
        for kind, raw in attribute.items():
            value = str(Decimal(raw).normalize()) if kind == "N" else raw
            parts.append((name, kind, value if isinstance(value, str | bytes) else repr(value)))
    return tuple(sorted(parts))


class _Codec(NamedTuple):
    serializer: Any
    deserializer: Any
    binary: Any  # boto3.dynamodb.types.Binary


@functools.cache
def _codec() -> _Codec:
    from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer

    return _Codec(TypeSerializer(), TypeDeserializer(), Binary)


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"DynamoDB cannot store {value!r}")
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {k: _to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    if isinstance(value, set | frozenset):
        return {_to_dynamo(v) for v in value}
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    if isinstance(value, set):
        return {_from_dynamo(v) for v in value}
    if isinstance(value, _codec().binary):
        return bytes(value)
    return value


def _serialize(value: Any) -> dict[str, Any]:
    serialized: dict[str, Any] = _codec().serializer.serialize(_to_dynamo(value))
    return serialized


def _serialize_map(item: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: _serialize(value) for name, value in item.items()}


def item_from_image(image: Mapping[str, Any]) -> Item:
    """An item from DynamoDB's own JSON (a stream record's ``NewImage``), as :class:`Table`
    returns items."""
    return _deserialize_map(image)


def _deserialize_map(raw: Mapping[str, Any]) -> Item:
    deserializer = _codec().deserializer
    return {name: _from_dynamo(deserializer.deserialize(value)) for name, value in raw.items()}
