"""What the moto child (:mod:`lambdaloop_local.moto_child`) changes in moto before serving.

Two kinds of change: behaviour moto gets wrong where the bundle depends on it (each DynamoDB
request atomic, ClientRequestToken, shard iterators that expire, one receiver per SQS message),
and bounds on what moto would otherwise keep for ever, so that a long run (a fuzzer, a day of
``lambdaloop dev``) holds its memory and its latency:

- a transaction keeps an undo copy of the items it touches, not a deep copy of whole tables
  (streams included) per item: O(items in the request), no longer O(table);
- a table's stream keeps at most ``stream_records`` records per shard, and none older than
  DynamoDB's 24 hours;
- items of a table with TTL enabled are deleted once their TTL attribute has passed, as
  DynamoDB's TTL does (a sweep at most every ``ttl_sweep_s``);
- a shard iterator is forgotten 15 minutes after it was handed out, as AWS expires them;
- a queue remembers the receipt handles of deleted messages (a repeated delete succeeds) for
  the last ``deleted_handles`` of them, not all of them;
- a queue's messages are indexed (:mod:`lambdaloop_local.moto_sqs`): each SQS request costs
  O(the messages it touches), not O(queue depth), and each receive takes its messages alone.

Each patch runs in the child only, which holds nothing else: nothing here is imported by the
processes that use the server.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from lambdaloop_local.moto_sqs import patch_sqs

__all__ = ["Bounds", "apply"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Bounds:
    """The limits the child enforces; tests make them small to see them act."""

    #: Records kept per stream shard (the oldest go first). A record of the bundle's items is
    #: 1-3 KB as moto keeps it, so a shard holds at most some tens of MB.
    stream_records: int = 10_000
    #: Seconds between two sweeps of the TTL tables for expired items (0: before every request).
    ttl_sweep_s: float = 60.0
    #: Receipt handles of deleted messages a queue remembers, so that deleting one again
    #: succeeds as on SQS (a handle is a few hundred bytes). Every handle is worth keeping
    #: while its message could still be in flight (up to 12 hours on SQS); these are the latest.
    deleted_handles: int = 10_000


def apply(bounds: Bounds) -> None:
    """Patch moto in this process. Call once, before the server handles a request."""
    _patch_dynamodb(bounds)
    _patch_transactions()
    _patch_streams()
    patch_sqs(bounds.deleted_handles)


# ------------------------------------------------------------------------------- DynamoDB

_dynamodb_lock = threading.Lock()
#: Where a moto DynamoDB backend keeps what the patches add to it: attributes of the backend
#: object, so moto's reset (which replaces the backends) forgets them with the tables.
_CLIENT_TOKENS_ATTRIBUTE = "_lambdaloop_client_tokens"
_LAST_SWEEP_ATTRIBUTE = "_lambdaloop_ttl_swept_at"

#: How long DynamoDB remembers a TransactWriteItems' ClientRequestToken after the request.
_CLIENT_TOKEN_TTL_S = 600.0
#: DynamoDB Streams keeps a record for 24 hours.
_STREAM_RETENTION = timedelta(hours=24)
#: Who DynamoDB names as the writer of a TTL deletion's stream record.
_TTL_IDENTITY = {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}


@dataclass(frozen=True, slots=True)
class _CompletedTransaction:
    digest: str
    response: tuple[int, dict[str, Any], Any]
    completed_at: float


def _patch_dynamodb(bounds: Bounds) -> None:
    """Make moto's DynamoDB requests take turns, as AWS applies each write atomically, make
    TransactWriteItems honour ClientRequestToken, which moto ignores, and keep the streams
    and TTL tables within their bounds before each request.

    moto's server answers every request on its own thread, and its DynamoDB backend has no
    lock: two conditional writes to one item can both pass their condition before either is
    applied (an optimistic update then loses a write that AWS would have refused). One lock
    around each DynamoDB request restores DynamoDB's behaviour; moto holds the GIL throughout
    anyway, so little is lost.
    """
    from moto.dynamodb.responses import DynamoHandler

    call_action = DynamoHandler.call_action

    @functools.wraps(call_action)
    def serialized(self: DynamoHandler) -> Any:
        with _dynamodb_lock:
            backend = self.dynamodb_backend
            _sweep_expired_items(backend, bounds.ttl_sweep_s)
            try:
                if self._get_action() == "TransactWriteItems":
                    return _transact_write_items(self, lambda: call_action(self))
                return call_action(self)
            finally:
                _trim_streams(backend.tables.values(), bounds.stream_records)

    DynamoHandler.call_action = serialized  # type: ignore[method-assign]


def _transact_write_items(handler: Any, call: Callable[[], Any]) -> Any:
    """A TransactWriteItems as DynamoDB runs it: for 10 minutes after a request with a
    ClientRequestToken succeeds, the same request again succeeds without writing anything
    (even where its conditions would now fail), and the token with another request fails
    with IdempotentParameterMismatchException.

    Only a success is remembered. AWS documents the success case alone ("If the original
    TransactWriteItems call was successful, the subsequent TransactWriteItems calls with the
    same client token return successfully without making any changes"); a cancelled or
    rejected transaction wrote nothing, so a repeat is run as a new request, which is what
    the SDKs' retries of a failed call expect. Runs under the DynamoDB lock.
    """
    request = json.loads(handler.body or "{}") if isinstance(handler.body, str | bytes) else {}
    token = request.pop("ClientRequestToken", None)
    if not token:
        return call()
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    backend = handler.dynamodb_backend
    tokens: dict[str, _CompletedTransaction] = backend.__dict__.setdefault(
        _CLIENT_TOKENS_ATTRIBUTE, {}
    )
    now = time.monotonic()
    for old in [t for t, done in tokens.items() if now - done.completed_at > _CLIENT_TOKEN_TTL_S]:
        del tokens[old]
    done = tokens.get(token)
    if done is not None and done.digest != digest:
        return _idempotent_parameter_mismatch()
    if done is not None:
        status, headers, body = done.response
        return status, dict(headers), body
    status, headers, body = call()
    if status == 200:
        tokens[token] = _CompletedTransaction(
            digest, (status, dict(headers), body), time.monotonic()
        )
    return status, headers, body


def _idempotent_parameter_mismatch() -> tuple[int, dict[str, Any], str]:
    from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException

    error = DynamodbException(
        ERROR_TYPE_PREFIX + "IdempotentParameterMismatchException",
        "Request parameters do not match the request that first used this client token",
    )
    return 400, dict(error.get_headers()), error.get_body()


# ---------------------------------------------------------------------------- transactions

#: True while moto's transact_write_items runs under the patch below (always under the
#: DynamoDB lock, so one flag for the process is enough).
_in_transaction = False


def _patch_transactions() -> None:
    """Roll a cancelled transaction back from copies of the items it touches.

    moto deep-copies every table a transaction names, once per item of the request, to put
    the copy back when the transaction is cancelled: each transaction costs a copy of whole
    tables with their stream records (seconds of CPU, and a burst of garbage, once a table
    holds tens of thousands of items). It also puts back a table object that stream readers
    do not hold: their iterators go on with the old shard, which has the cancelled write's
    record and never gets another one. Here
    moto's copy is the table itself (so its own rollback puts back what is there), and the
    items the request names, and the length of the tables' streams, are put back instead.
    """
    import moto.dynamodb.models as dynamodb_models
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    real_deepcopy = copy.deepcopy

    def deepcopy(value: Any, memo: Any = None) -> Any:
        if _in_transaction and isinstance(value, Table):
            return value
        return real_deepcopy(value, memo)

    # moto's models module uses `copy.deepcopy` by attribute: it gets a copy module whose
    # deepcopy leaves tables alone during a transaction and is the real one otherwise.
    dynamodb_models.copy = SimpleNamespace(  # type: ignore[attr-defined,assignment]
        **{name: getattr(copy, name) for name in ("copy", "Error")}, deepcopy=deepcopy
    )
    transact = DynamoDBBackend.transact_write_items

    @functools.wraps(transact)
    def with_undo(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        global _in_transaction  # noqa: PLW0603 - guarded by the DynamoDB lock
        undo = list(_undo_entries(self, transact_items))
        _in_transaction = True
        try:
            transact(self, transact_items)
        except BaseException:
            for restore in reversed(undo):
                restore()
            raise
        finally:
            _in_transaction = False

    DynamoDBBackend.transact_write_items = with_undo  # type: ignore[method-assign]


def _undo_entries(
    backend: Any, transact_items: list[dict[str, Any]]
) -> Iterator[Callable[[], None]]:
    """For each item the request names, a function that puts it back as it is now; and for
    each table with a stream, one that drops the records written after now."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    streams: dict[int, Any] = {}
    for entry in transact_items:
        try:
            (kind, op), *_ = entry.items()
            table = backend.tables[op["TableName"]]
            key = op["Item"] if kind == "Put" else op["Key"]
            hash_value = DynamoType(key[table.hash_key_attr])
            range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
        except (AttributeError, KeyError, TypeError, ValueError):
            continue  # moto refuses the request itself, before writing anything
        yield _item_restorer(table, hash_value, range_value)
        if table.stream_shard is not None:
            streams.setdefault(id(table), table.stream_shard)
    for shard in streams.values():
        yield _stream_restorer(shard)


def _item_restorer(table: Any, hash_value: Any, range_value: Any) -> Callable[[], None]:
    kept = copy.deepcopy(table.get_item(hash_value, range_value))

    def restore() -> None:
        if range_value is None:
            if kept is None:
                table.items.pop(hash_value, None)
            else:
                table.items[hash_value] = kept
        elif kept is None:
            table.items[hash_value].pop(range_value, None)
        else:
            table.items[hash_value][range_value] = kept

    return restore


def _stream_restorer(shard: Any) -> Callable[[], None]:
    length = len(shard.items)

    def restore() -> None:
        del shard.items[length:]  # a cancelled transaction writes no stream record

    return restore


# --------------------------------------------------------------------------- stream bounds


def _trim_streams(tables: Iterable[Any], kept: int) -> None:
    """Drop each shard's records beyond the newest ``kept``, and those older than 24 hours.

    moto numbers a shard's records from ``starting_sequence_number`` by their position in
    its list, so that number moves up by what is dropped: the records kept keep their
    sequence numbers, and TRIM_HORIZON starts at the oldest kept, as on DynamoDB.
    """
    cutoff = datetime.now(UTC).replace(tzinfo=None) - _STREAM_RETENTION
    for table in list(tables):
        shard = table.stream_shard
        if shard is None or not shard.items:
            continue
        drop = max(0, len(shard.items) - kept)
        while drop < len(shard.items) and _record_time(shard.items[drop]) < cutoff:
            drop += 1
        if drop:
            with _streams_lock:  # a GetRecords must not see the list and its numbering differ
                del shard.items[:drop]
                shard.starting_sequence_number += drop


def _record_time(record: Any) -> datetime:
    created: datetime = record.record["dynamodb"]["ApproximateCreationDateTime"]
    return created


# ------------------------------------------------------------------------------------- TTL


def _sweep_expired_items(backend: Any, interval_s: float) -> None:
    """Delete the items whose TTL attribute (epoch seconds) has passed, in every table with
    TTL enabled, at most once per ``interval_s``; as DynamoDB does, each deletion writes a
    REMOVE stream record naming the DynamoDB service as its writer."""
    now = time.time()
    if now - backend.__dict__.get(_LAST_SWEEP_ATTRIBUTE, 0.0) < interval_s:
        return
    backend.__dict__[_LAST_SWEEP_ATTRIBUTE] = now
    for table in list(backend.tables.values()):
        if table.ttl.get("TimeToLiveStatus") != "ENABLED":
            continue
        attribute = table.ttl.get("AttributeName")
        for item in list(_items(table)):
            if _expired(item.attrs.get(attribute), now):
                table.delete_item(item.hash_key, item.range_key)
                if table.stream_shard is not None and table.stream_shard.items:
                    table.stream_shard.items[-1].record["userIdentity"] = dict(_TTL_IDENTITY)


def _items(table: Any) -> Iterator[Any]:
    for value in table.items.values():
        if table.range_key_attr is None:
            yield value
        else:
            yield from value.values()


def _expired(value: Any, now: float) -> bool:
    """DynamoDB's TTL rule: a Number of epoch seconds in the past; any other value (or a
    missing one) never expires."""
    if value is None or value.type != "N":
        return False
    with contextlib.suppress(ValueError):
        return float(value.value) < now
    return False


# ------------------------------------------------------------------------- DynamoDB Streams

#: AWS expires a shard iterator 15 minutes after handing it out.
_SHARD_ITERATOR_TTL_S = 900.0
_streams_lock = threading.Lock()


def _patch_streams() -> None:
    """Make moto's DynamoDB Streams forget shard iterators after 15 minutes, as AWS does, and
    read on from the oldest record kept when an iterator points before it.

    moto keeps every iterator it hands out, and each GetRecords hands out one: a stream
    poller (four reads a second) would grow the process by tens of MB an hour. An expired or
    unknown iterator gets AWS's ExpiredIteratorException rather than moto's server error.

    A reader behind the records trimmed by the bound above would get moto's assertion error
    (a server error) for ever; DynamoDB answers TrimmedDataAccessException there, and a
    Lambda event source mapping moves on to the oldest record. Here the read moves on to
    the oldest record itself, with a warning: the local stack keeps working, and the lost
    records are named in the log.
    """
    from moto.core.exceptions import JsonRESTError
    from moto.dynamodbstreams.models import DynamoDBStreamsBackend

    get_shard_iterator = DynamoDBStreamsBackend.get_shard_iterator
    get_records = DynamoDBStreamsBackend.get_records
    born: dict[str, float] = {}  # iterator ARN -> when it was handed out, oldest first

    def forget_expired(backend: DynamoDBStreamsBackend) -> None:
        deadline = time.monotonic() - _SHARD_ITERATOR_TTL_S
        while born and next(iter(born.values())) < deadline:
            arn = next(iter(born))
            del born[arn]
            backend.shard_iterators.pop(arn, None)

    @functools.wraps(get_shard_iterator)
    def expiring_iterator(self: DynamoDBStreamsBackend, *args: Any, **kwargs: Any) -> Any:
        with _streams_lock:
            forget_expired(self)
            iterator = get_shard_iterator(self, *args, **kwargs)
            born[iterator.arn] = time.monotonic()
            return iterator

    @functools.wraps(get_records)
    def expiring_records(self: DynamoDBStreamsBackend, iterator_arn: str, limit: int) -> Any:
        with _streams_lock:
            forget_expired(self)
            iterator = self.shard_iterators.get(iterator_arn)
            if iterator is None:
                raise JsonRESTError(
                    "ExpiredIteratorException", "The shard iterator has expired or is unknown"
                )
            horizon = iterator.stream_shard.starting_sequence_number
            if iterator.sequence_number < horizon:
                logger.warning(
                    "stream of %s: records %d to %d were trimmed before this reader read"
                    " them; it reads on from %d",
                    iterator.stream_shard.table.name,
                    iterator.sequence_number,
                    horizon - 1,
                    horizon,
                )
                iterator.sequence_number = horizon
            result = get_records(self, iterator_arn, limit)
            born[result["NextShardIterator"]] = time.monotonic()
            return result

    DynamoDBStreamsBackend.get_shard_iterator = expiring_iterator  # type: ignore[method-assign]
    DynamoDBStreamsBackend.get_records = expiring_records  # type: ignore[method-assign]
