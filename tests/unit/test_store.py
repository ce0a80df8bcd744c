"""The DynamoDB table adapter, on an in-memory fake of the low-level boto3 client."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from lambdaloop.backoff import Backoff
from lambdaloop.clients import aclose_clients
from lambdaloop.errors import (
    ConditionFailed,
    DependencyError,
    DependencyTimeout,
    DependencyUnavailable,
    TransactionConflict,
)
from lambdaloop.settings import reset_settings
from lambdaloop.store import BatchWriteResult, Table, TransactOp
from support import run

Raw = dict[str, Any]


def _identity(key: Raw) -> tuple[str, str]:
    return key["pk"]["S"], key["sk"]["S"]


class FakeDynamoDB:
    """Stands in for ``boto3.client("dynamodb")``: stores serialized items, records calls.

    For the first ``stingy_calls`` batch calls it processes only the first request of the
    call and hands the rest back as unprocessed, the way a throttled table does.
    """

    def __init__(
        self,
        *,
        stingy_calls: int = 0,
        error: Exception | None = None,
        reply: Raw | None = None,
        barrier: threading.Barrier | None = None,
    ) -> None:
        self.items: dict[tuple[str, str], Raw] = {}
        self.calls: list[tuple[str, Raw]] = []
        self.stingy_calls = stingy_calls
        self.error = error
        self.reply = reply or {}
        self.barrier = barrier
        self._lock = threading.Lock()
        self._batch_calls = 0

    def _record(self, operation: str, params: Raw) -> None:
        with self._lock:
            self.calls.append((operation, params))
        if self.error is not None:
            raise self.error

    def _split(self, requests: list[Raw]) -> tuple[list[Raw], list[Raw]]:
        with self._lock:
            self._batch_calls += 1
            stingy = self._batch_calls <= self.stingy_calls
        if self.barrier is not None:
            self.barrier.wait()
        return (requests[:1], requests[1:]) if stingy else (requests, [])

    def calls_to(self, operation: str) -> list[Raw]:
        return [params for name, params in self.calls if name == operation]

    def batch_get_item(self, **params: Any) -> Raw:
        self._record("batch_get_item", params)
        ((table, request),) = params["RequestItems"].items()
        done, left = self._split(request["Keys"])
        found = [self.items[_identity(k)] for k in done if _identity(k) in self.items]
        unprocessed = {table: {**request, "Keys": left}} if left else {}
        return {"Responses": {table: found}, "UnprocessedKeys": unprocessed}

    def batch_write_item(self, **params: Any) -> Raw:
        self._record("batch_write_item", params)
        ((table, requests),) = params["RequestItems"].items()
        done, left = self._split(requests)
        for request in done:
            if "PutRequest" in request:
                item = request["PutRequest"]["Item"]
                self.items[_identity(item)] = item
            else:
                self.items.pop(_identity(request["DeleteRequest"]["Key"]), None)
        return {"UnprocessedItems": {table: left} if left else {}}

    def get_item(self, **params: Any) -> Raw:
        self._record("get_item", params)
        return self.reply

    def put_item(self, **params: Any) -> Raw:
        self._record("put_item", params)
        return self.reply

    def update_item(self, **params: Any) -> Raw:
        self._record("update_item", params)
        return self.reply

    def delete_item(self, **params: Any) -> Raw:
        self._record("delete_item", params)
        return self.reply

    def transact_write_items(self, **params: Any) -> Raw:
        self._record("transact_write_items", params)
        return self.reply


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_table(client: FakeDynamoDB, sleep: RecordingSleep | None = None, **options: Any) -> Table:
    return Table("users", client=client, sleep=sleep or RecordingSleep(), **options)


def keys(count: int, prefix: str = "user") -> list[dict[str, Any]]:
    return [{"pk": f"{prefix}#{n}", "sk": "profile"} for n in range(count)]


def items(count: int) -> list[dict[str, Any]]:
    return [{**key, "n": n} for n, key in enumerate(keys(count))]


# ----------------------------------------------------------------------------- batch_get


def test_batch_get_asks_for_at_most_100_keys_per_call() -> None:
    client = FakeDynamoDB()
    wanted = keys(250)

    result = run(make_table(client).batch_get(wanted, consistent=True))

    calls = client.calls_to("batch_get_item")
    sizes = sorted(len(c["RequestItems"]["users"]["Keys"]) for c in calls)
    assert sizes == [50, 100, 100]
    asked = [k["pk"]["S"] for c in calls for k in c["RequestItems"]["users"]["Keys"]]
    assert sorted(asked) == sorted(k["pk"] for k in wanted)
    assert all(c["RequestItems"]["users"]["ConsistentRead"] is True for c in calls)
    assert (result.items, result.unprocessed) == ([], [])


def test_batch_get_runs_the_chunks_concurrently() -> None:
    # Each call waits at the barrier until all three chunks are in flight at once; run one
    # after the other, the first would break the barrier on its timeout instead.
    client = FakeDynamoDB(barrier=threading.Barrier(3, timeout=10))

    run(make_table(client).batch_get(keys(300)))

    assert len(client.calls_to("batch_get_item")) == 3


def test_batch_get_asks_for_each_key_once() -> None:
    client = FakeDynamoDB()
    client.items[("user#1", "profile")] = {"pk": {"S": "user#1"}, "sk": {"S": "profile"}}
    wanted = keys(3) + keys(3) + [{"sk": "profile", "pk": "user#1"}]

    result = run(make_table(client).batch_get(wanted))

    (call,) = client.calls_to("batch_get_item")
    assert [k["pk"]["S"] for k in call["RequestItems"]["users"]["Keys"]] == [
        "user#0",
        "user#1",
        "user#2",
    ]
    assert result.items == [{"pk": "user#1", "sk": "profile"}]


def test_batch_get_of_nothing_calls_nothing() -> None:
    client = FakeDynamoDB()

    result = run(make_table(client).batch_get([]))

    assert (result.items, result.unprocessed, client.calls) == ([], [], [])


def test_unprocessed_keys_are_retried_until_every_item_is_read() -> None:
    # Given a table that leaves all but one key unprocessed in its first three answers
    client = FakeDynamoDB(stingy_calls=3)
    client.items = {
        ("user#" + str(n), "profile"): {"pk": {"S": f"user#{n}"}, "sk": {"S": "profile"}}
        for n in range(5)
    }
    sleep = RecordingSleep()

    # When five keys are read
    result = run(make_table(client, sleep).batch_get(keys(5)))

    # Then the retries ask only for what is left, and everything arrives
    sizes = [len(c["RequestItems"]["users"]["Keys"]) for c in client.calls_to("batch_get_item")]
    assert sizes == [5, 4, 3, 2]
    assert sorted(i["pk"] for i in result.items) == [f"user#{n}" for n in range(5)]
    assert result.unprocessed == []
    assert len(sleep.delays) == 3


def test_keys_still_unprocessed_after_the_last_attempt_are_reported(
    layer_caplog: pytest.LogCaptureFixture,
) -> None:
    client = FakeDynamoDB(stingy_calls=1_000)
    sleep = RecordingSleep()

    with layer_caplog.at_level(logging.WARNING, logger="lambdaloop.store"):
        result = run(make_table(client, sleep, max_attempts=4).batch_get(keys(10)))

    assert len(client.calls_to("batch_get_item")) == 4
    assert len(sleep.delays) == 3
    assert result.unprocessed == keys(10)[4:]
    assert "6 of 10 key(s) still unprocessed after 4 attempts" in layer_caplog.text


# ----------------------------------------------------------------------------- backoff


def test_retry_delays_double_from_the_base_up_to_the_cap() -> None:
    # With random() at its top, every delay is the cap of its retry.
    client = FakeDynamoDB(stingy_calls=1_000)
    sleep = RecordingSleep()
    table = make_table(
        client, sleep, max_attempts=7, backoff=Backoff(0.05, 0.3, random=lambda: 1.0)
    )

    run(table.batch_write(puts=items(10)))

    assert sleep.delays == pytest.approx([0.05, 0.1, 0.2, 0.3, 0.3, 0.3])


def test_retry_delays_are_jittered_between_zero_and_the_cap() -> None:
    client = FakeDynamoDB(stingy_calls=1_000)
    sleep = RecordingSleep()
    table = make_table(client, sleep, max_attempts=8, backoff=Backoff(0.01, 0.1))

    run(table.batch_get(keys(20)))

    caps = [min(0.1, 0.01 * 2**n) for n in range(7)]
    assert len(sleep.delays) == 7
    assert all(0 <= delay <= cap for delay, cap in zip(sleep.delays, caps, strict=True))


def test_a_single_attempt_never_sleeps() -> None:
    client = FakeDynamoDB(stingy_calls=1_000)
    sleep = RecordingSleep()

    result = run(make_table(client, sleep, max_attempts=1).batch_get(keys(3)))

    assert (len(client.calls), sleep.delays, len(result.unprocessed)) == (1, [], 2)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"key_schema": ()}, "partition key"),
    ],
)
def test_nonsensical_options_are_refused(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make_table(FakeDynamoDB(), **options)


# ----------------------------------------------------------------------------- batch_write


def test_batch_write_sends_at_most_25_requests_per_call() -> None:
    client = FakeDynamoDB()

    result = run(make_table(client).batch_write(puts=items(60)))

    calls = client.calls_to("batch_write_item")
    assert sorted(len(c["RequestItems"]["users"]) for c in calls) == [10, 25, 25]
    assert len(client.items) == 60
    assert result == BatchWriteResult([], [])
    assert result.complete


def test_batch_write_mixes_puts_and_deletes() -> None:
    client = FakeDynamoDB()
    table = make_table(client)
    run(table.batch_write(puts=items(5)))

    result = run(table.batch_write(puts=[{"pk": "new", "sk": "profile"}], deletes=keys(2)))

    assert result.complete
    assert sorted(pk for pk, _ in client.items) == ["new", "user#2", "user#3", "user#4"]


def test_unprocessed_writes_are_retried_then_reported_as_puts_and_deletes() -> None:
    client = FakeDynamoDB(stingy_calls=1_000)
    sleep = RecordingSleep()

    result = run(
        make_table(client, sleep, max_attempts=3).batch_write(
            puts=items(3), deletes=keys(3, prefix="gone")
        )
    )

    assert len(client.calls_to("batch_write_item")) == 3
    assert len(sleep.delays) == 2
    assert result.unprocessed_puts == []
    assert result.unprocessed_deletes == keys(3, prefix="gone")
    assert not result.complete


@pytest.mark.parametrize(
    ("puts", "deletes"),
    [
        (items(2) + items(1), []),
        (items(2), keys(1)),
        ([{"pk": "no-sort-key"}], []),
    ],
)
def test_batch_write_refuses_duplicate_or_incomplete_keys(
    puts: list[dict[str, Any]], deletes: list[dict[str, Any]]
) -> None:
    client = FakeDynamoDB()

    with pytest.raises(ValueError, match="batch_write"):
        run(make_table(client).batch_write(puts=puts, deletes=deletes))

    assert client.calls == []


# ----------------------------------------------------------------------------- values


def test_numbers_come_back_as_int_when_whole_and_float_otherwise() -> None:
    client = FakeDynamoDB(
        reply={
            "Item": {
                "count": {"N": "3"},
                "big": {"N": "1E+2"},
                "whole": {"N": "2.0"},
                "ratio": {"N": "2.5"},
                "sizes": {"NS": ["1", "1.5"]},
                "nested": {"M": {"n": {"N": "7"}, "l": {"L": [{"N": "0.25"}, {"S": "x"}]}}},
                "blob": {"B": b"\x00\x01"},
                "flag": {"BOOL": True},
                "nothing": {"NULL": True},
            }
        }
    )

    item = run(make_table(client).get({"pk": "a", "sk": "b"}))

    assert item == {
        "count": 3,
        "big": 100,
        "whole": 2,
        "ratio": 2.5,
        "sizes": {1, 1.5},
        "nested": {"n": 7, "l": [0.25, "x"]},
        "blob": b"\x00\x01",
        "flag": True,
        "nothing": None,
    }
    assert [type(item[k]) for k in ("count", "big", "ratio", "blob")] == [int, int, float, bytes]


def test_floats_are_written_as_their_shortest_decimal() -> None:
    client = FakeDynamoDB()

    run(make_table(client).put({"pk": "a", "sk": "b", "f": 0.1, "l": [1.5], "m": {"x": 2.0}}))

    (call,) = client.calls_to("put_item")
    assert call["Item"]["f"] == {"N": "0.1"}
    assert call["Item"]["l"] == {"L": [{"N": "1.5"}]}
    assert call["Item"]["m"] == {"M": {"x": {"N": "2.0"}}}


def test_nan_cannot_be_written() -> None:
    with pytest.raises(ValueError, match="nan"):
        run(make_table(FakeDynamoDB()).put({"pk": "a", "sk": "b", "f": float("nan")}))


def test_get_of_a_missing_item_is_none() -> None:
    client = FakeDynamoDB()

    assert run(make_table(client).get({"pk": "a", "sk": "b"}, consistent=True)) is None
    assert client.calls_to("get_item")[0]["ConsistentRead"] is True


# ----------------------------------------------------------------------------- expressions


def test_update_sets_values_removes_nones_and_requires_the_item() -> None:
    client = FakeDynamoDB(reply={"Attributes": {"pk": {"S": "a"}, "count": {"N": "3"}}})

    updated = run(
        make_table(client).update(
            {"pk": "a", "sk": "b"}, {"name": "Ada", "status": None, "count": 3}
        )
    )

    (call,) = client.calls_to("update_item")
    assert call["UpdateExpression"] == "SET #f0 = :v0, #f1 = :v1 REMOVE #f2"
    assert call["ConditionExpression"] == "attribute_exists(#f3)"
    assert call["ExpressionAttributeNames"] == {
        "#f0": "name",
        "#f1": "count",
        "#f2": "status",
        "#f3": "pk",
    }
    assert call["ExpressionAttributeValues"] == {":v0": {"S": "Ada"}, ":v1": {"N": "3"}}
    assert call["ReturnValues"] == "ALL_NEW"
    assert updated == {"pk": "a", "count": 3}


def test_update_merges_the_callers_condition_and_skips_its_placeholders() -> None:
    client = FakeDynamoDB()

    run(
        make_table(client).update(
            {"pk": "a", "sk": "b"},
            {"status": None},
            must_exist=False,
            condition="#f0 = :v0",
            names={"#f0": "version"},
            values={":v0": 1},
        )
    )

    (call,) = client.calls_to("update_item")
    assert call["UpdateExpression"] == "REMOVE #f1"
    assert call["ConditionExpression"] == "#f0 = :v0"
    assert call["ExpressionAttributeNames"] == {"#f0": "version", "#f1": "status"}
    assert call["ExpressionAttributeValues"] == {":v0": {"N": "1"}}


def test_update_with_must_exist_and_a_condition_needs_both() -> None:
    client = FakeDynamoDB()

    run(
        make_table(client).update(
            {"pk": "a", "sk": "b"}, {"n": 1}, condition="n < :max", values={":max": 5}
        )
    )

    (call,) = client.calls_to("update_item")
    assert call["ConditionExpression"] == "(attribute_exists(#f1)) AND (n < :max)"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [({}, "at least one change"), ({"pk": "other"}, "pk"), ({"sk": None}, "sk")],
)
def test_update_refuses_no_changes_and_key_changes(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        run(make_table(FakeDynamoDB()).update({"pk": "a", "sk": "b"}, changes))


def test_create_puts_only_if_the_partition_key_is_new() -> None:
    client = FakeDynamoDB()

    run(make_table(client, key_schema=("id",)).create({"id": "a", "name": "Ada"}))

    (call,) = client.calls_to("put_item")
    assert call["ConditionExpression"] == "attribute_not_exists(#f0)"
    assert call["ExpressionAttributeNames"] == {"#f0": "id"}


def test_put_passes_a_condition_and_no_empty_maps() -> None:
    client = FakeDynamoDB()
    table = make_table(client)

    run(table.put({"pk": "a", "sk": "b"}))
    run(table.put({"pk": "a", "sk": "b"}, condition="v < :v", values={":v": 2}))

    plain, conditional = client.calls_to("put_item")
    assert set(plain) == {"TableName", "Item"}
    assert conditional["ConditionExpression"] == "v < :v"
    assert conditional["ExpressionAttributeValues"] == {":v": {"N": "2"}}


def test_delete_returns_the_old_item_and_can_require_it() -> None:
    client = FakeDynamoDB(reply={"Attributes": {"pk": {"S": "a"}, "n": {"N": "1"}}})
    table = make_table(client)

    old = run(table.delete({"pk": "a", "sk": "b"}, must_exist=True))
    client.reply = {}
    none = run(table.delete({"pk": "a", "sk": "b"}))

    first, second = client.calls_to("delete_item")
    assert (old, none) == ({"pk": "a", "n": 1}, None)
    assert first["ReturnValues"] == second["ReturnValues"] == "ALL_OLD"
    assert first["ConditionExpression"] == "attribute_exists(#f0)"
    assert "ConditionExpression" not in second


def test_increment_adds_atomically_and_returns_the_new_value() -> None:
    client = FakeDynamoDB(reply={"Attributes": {"hits": {"N": "42"}}})

    value = run(make_table(client).increment({"pk": "a", "sk": "b"}, "hits", by=2))

    (call,) = client.calls_to("update_item")
    assert call["UpdateExpression"] == "ADD #f0 :v0"
    assert call["ExpressionAttributeNames"] == {"#f0": "hits"}
    assert call["ExpressionAttributeValues"] == {":v0": {"N": "2"}}
    assert call["ReturnValues"] == "UPDATED_NEW"
    assert value == 42
    assert type(value) is int


# ----------------------------------------------------------------------------- transactions


def test_transact_write_builds_one_item_per_operation() -> None:
    client = FakeDynamoDB()
    operations = [
        TransactOp.put({"pk": "a", "sk": "1"}, condition="attribute_not_exists(pk)"),
        TransactOp.delete({"pk": "a", "sk": "2"}),
        TransactOp.condition_check(
            {"pk": "a", "sk": "3"}, "#s = :s", names={"#s": "state"}, values={":s": "open"}
        ),
        TransactOp.update({"pk": "a", "sk": "4"}, "SET n = n + :one", values={":one": 1}),
    ]

    run(make_table(client).transact_write(operations))

    (call,) = client.calls_to("transact_write_items")
    put, delete, check, update = call["TransactItems"]
    assert put == {
        "Put": {
            "TableName": "users",
            "Item": {"pk": {"S": "a"}, "sk": {"S": "1"}},
            "ConditionExpression": "attribute_not_exists(pk)",
        }
    }
    assert delete == {"Delete": {"TableName": "users", "Key": {"pk": {"S": "a"}, "sk": {"S": "2"}}}}
    assert check["ConditionCheck"]["ExpressionAttributeNames"] == {"#s": "state"}
    assert check["ConditionCheck"]["ExpressionAttributeValues"] == {":s": {"S": "open"}}
    assert update["Update"]["UpdateExpression"] == "SET n = n + :one"


@pytest.mark.parametrize("count", [0, 101])
def test_transact_write_takes_1_to_100_operations(count: int) -> None:
    operations = [TransactOp.delete({"pk": "a", "sk": str(n)}) for n in range(count)]

    with pytest.raises(ValueError, match="1 to 100"):
        run(make_table(FakeDynamoDB()).transact_write(operations))


def test_transact_ops_need_their_expression() -> None:
    with pytest.raises(ValueError, match="update expression"):
        TransactOp("Update", {"pk": "a"})
    with pytest.raises(ValueError, match="condition"):
        TransactOp("ConditionCheck", {"pk": "a"})


# ----------------------------------------------------------------------------- errors


def client_error(code: str, message: str = "boom", **extra: Any) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": message}, **extra}
    return ClientError(response, "PutItem")


ENDPOINT = {"endpoint_url": "https://dynamodb.eu-west-1.amazonaws.com"}


@pytest.mark.parametrize(
    ("error", "expected", "text"),
    [
        (client_error("ConditionalCheckFailedException"), ConditionFailed, "boom"),
        (
            client_error("ProvisionedThroughputExceededException"),
            DependencyUnavailable,
            "throttled",
        ),
        (client_error("ThrottlingException"), DependencyUnavailable, "throttled"),
        (client_error("RequestLimitExceeded"), DependencyUnavailable, "throttled"),
        (client_error("ResourceNotFoundException", "no table"), DependencyError, "no table"),
        (EndpointConnectionError(**ENDPOINT), DependencyUnavailable, "Could not connect"),
        (ConnectionClosedError(**ENDPOINT), DependencyUnavailable, "Connection was closed"),
        (ReadTimeoutError(**ENDPOINT), DependencyTimeout, "Read timeout"),
        (ConnectTimeoutError(**ENDPOINT), DependencyTimeout, "Connect timeout"),
        (NoCredentialsError(), DependencyError, "credentials"),
    ],
)
def test_sdk_errors_are_translated_at_the_edge(
    error: Exception, expected: type[Exception], text: str
) -> None:
    with pytest.raises(expected, match=text) as raised:
        run(make_table(FakeDynamoDB(error=error)).put({"pk": "a", "sk": "b"}))

    assert type(raised.value) is expected
    assert raised.value.__cause__ is error
    if isinstance(raised.value, DependencyError):
        assert raised.value.dependency == "dynamodb"


def test_a_cancelled_transaction_says_which_operation_failed() -> None:
    error = client_error(
        "TransactionCanceledException",
        "Transaction cancelled",
        CancellationReasons=[
            {"Code": "None"},
            {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"},
            {"Code": "None"},
        ],
    )
    operations = [TransactOp.delete({"pk": "a", "sk": str(n)}) for n in range(3)]

    with pytest.raises(TransactionConflict) as raised:
        run(make_table(FakeDynamoDB(error=error)).transact_write(operations))

    assert raised.value.reasons == ["None", "ConditionalCheckFailed", "None"]
    assert raised.value.failed == {1: "ConditionalCheckFailed"}
    assert isinstance(raised.value, ConditionFailed)


def test_a_cancelled_transaction_without_reasons_still_translates() -> None:
    error = client_error("TransactionCanceledException")
    operations = [TransactOp.delete({"pk": "a", "sk": "b"})]

    with pytest.raises(TransactionConflict) as raised:
        run(make_table(FakeDynamoDB(error=error)).transact_write(operations))

    assert raised.value.reasons == []


@pytest.mark.parametrize(
    "error", [ParamValidationError(report="bad parameter"), RuntimeError("a bug")]
)
def test_errors_in_the_request_itself_are_not_disguised(error: Exception) -> None:
    with pytest.raises(type(error)):
        run(make_table(FakeDynamoDB(error=error)).put({"pk": "a", "sk": "b"}))


def test_a_failing_chunk_fails_the_batch_after_the_others_finish() -> None:
    client = FakeDynamoDB(error=client_error("ThrottlingException"))

    with pytest.raises(DependencyUnavailable):
        run(make_table(client).batch_get(keys(250)))

    assert len(client.calls_to("batch_get_item")) == 3


# ----------------------------------------------------------------------------- the client


@pytest.fixture
def unreachable_dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("LAMBDALOOP_AWS_MAX_ATTEMPTS", "1")
    reset_settings()
    run(aclose_clients())
    yield
    run(aclose_clients())
    reset_settings()


@pytest.mark.usefixtures("unreachable_dynamodb")
def test_without_a_client_the_environments_client_is_built_on_first_use() -> None:
    table = Table("users")

    with pytest.raises(DependencyUnavailable, match="Could not connect"):
        run(table.get({"pk": "a", "sk": "b"}))


def test_importing_the_store_imports_no_sdk() -> None:
    code = (
        "import sys, lambdaloop.store;"
        "lambdaloop.store.Table('users');"
        "print(','.join(m for m in ('boto3', 'botocore') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()

    assert found == ""


def test_the_table_shows_its_name() -> None:
    assert repr(make_table(FakeDynamoDB())) == "Table('users')"
