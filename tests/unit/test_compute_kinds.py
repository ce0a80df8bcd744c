"""The compute job kinds: known results, splitting, reducing, params checking."""

from __future__ import annotations

import itertools
import json
import pickle
import random
from typing import Any

import pytest

from lambdaloop.compute.kinds import (
    KINDS,
    Kind,
    ParamsError,
    UnknownKind,
    get_kind,
    plan,
    reduce_partials,
    run_local,
)
from lambdaloop.compute.kinds import prime_count as prime_count_module
from lambdaloop.compute.kinds.base import Work, split_range
from lambdaloop.compute.kinds.prime_count import count_primes
from support import sha256_chain_reference

SMALL_PARAMS: dict[str, dict[str, Any]] = {
    "sum_of_squares": {"n": 12_345},
    "prime_count": {"n": 54_321},
    "sha256_chain": {"seed": "lambdaloop", "chains": 13, "rounds": 50},
}


def _primes_below(limit: int) -> list[int]:
    """A plain sieve: the reference for the segmented one."""
    flags = [True] * limit
    flags[:2] = [False, False][:limit]
    for p in range(2, limit):
        if p * p >= limit:
            break
        if flags[p]:
            for multiple in range(p * p, limit, p):
                flags[multiple] = False
    return [p for p in range(limit) if flags[p]]


def _random_work(rng: random.Random, name: str) -> Work:
    if name == "sha256_chain":
        return {
            "seed": "s",
            "rounds": rng.randint(1, 5),
            "start": 3,
            "stop": 3 + rng.randint(3, 30),
        }
    start = rng.randint(0, 10**6)
    return {"start": start, "stop": start + rng.randint(3, 5_000)}


# --- the registry ---------------------------------------------------------------------------


def test_the_registry_names_each_kind_by_its_own_name() -> None:
    assert sorted(KINDS) == ["prime_count", "sha256_chain", "sum_of_squares"]
    for name, kind in KINDS.items():
        assert kind.name == name
        assert get_kind(name) is kind


def test_the_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        KINDS["other"] = KINDS["prime_count"]  # type: ignore[index]


@pytest.mark.parametrize("name", ["nope", "", "Prime_Count", 3, None])
def test_an_unknown_kind_is_refused_with_the_known_ones_listed(name: object) -> None:
    with pytest.raises(UnknownKind) as caught:
        get_kind(name)

    assert caught.value.field == "kind"
    assert isinstance(caught.value, ParamsError)
    assert "prime_count, sha256_chain, sum_of_squares" in str(caught.value)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_kind_and_its_functions_pickle_by_reference(name: str) -> None:
    kind = KINDS[name]

    assert pickle.loads(pickle.dumps(kind)) == kind
    assert pickle.loads(pickle.dumps(kind.run)) is kind.run


# --- sum_of_squares -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 1_000])
def test_sum_of_squares_matches_the_loop(n: int) -> None:
    kind, work, _ = plan("sum_of_squares", {"n": n})

    assert run_local(kind, work) == sum(i * i for i in range(n))


def test_sum_of_squares_matches_the_loop_on_random_ranges() -> None:
    rng = random.Random(7)
    kind = KINDS["sum_of_squares"]
    for _ in range(200):
        start = rng.randint(0, 3_000)
        stop = start + rng.randint(-5, 3_000)
        assert kind.run({"start": start, "stop": stop}) == sum(i * i for i in range(start, stop))


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (10**6 + 1, 333_333_833_333_500_000),
        (10**9 + 1, 333_333_333_833_333_333_500_000_000),
    ],
)
def test_sum_of_squares_known_big_values(n: int, expected: int) -> None:
    kind, work, chunks = plan("sum_of_squares", {"n": n}, 1000)

    assert run_local(kind, work) == expected
    assert reduce_partials(kind, (kind.run(chunk) for chunk in chunks)) == expected


def test_sum_of_squares_at_the_bound_is_exact() -> None:
    n = 10**18
    kind, work, chunks = plan("sum_of_squares", {"n": n}, 997)

    total = reduce_partials(kind, (kind.run(chunk) for chunk in chunks))

    assert total == run_local(kind, work)
    assert total * 6 == (n - 1) * n * (2 * n - 1)


# --- prime_count ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, 0),
        (1, 0),
        (2, 1),
        (3, 2),
        (4, 2),
        (10, 4),
        (100, 25),
        (1_000, 168),
        (10**4, 1229),
        (10**5, 9592),
        (10**6, 78498),
    ],
)
def test_prime_count_known_values(n: int, expected: int) -> None:
    kind, work, _ = plan("prime_count", {"n": n})

    assert run_local(kind, work) == expected


@pytest.mark.parametrize("chunks", [1, 7, 16])
def test_prime_count_of_ten_million_over_chunks(chunks: int) -> None:
    kind, _, parts = plan("prime_count", {"n": 10**7}, chunks)

    assert len(parts) == chunks
    assert reduce_partials(kind, (kind.run(part) for part in parts)) == 664_579


def test_prime_count_matches_a_plain_sieve_on_random_ranges() -> None:
    primes = _primes_below(20_000)
    rng = random.Random(11)
    for _ in range(300):
        lo = rng.randint(0, 20_000)
        hi = rng.randint(lo - 3, 20_000)
        assert count_primes(lo, hi) == sum(1 for p in primes if lo <= p < hi), (lo, hi)


def test_prime_count_across_many_small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny segments put prime squares and segment edges everywhere.
    monkeypatch.setattr(prime_count_module, "_SEGMENT", 5)
    primes = _primes_below(3_000)
    rng = random.Random(5)
    for _ in range(200):
        lo = rng.randint(0, 3_000)
        hi = rng.randint(lo, 3_000)
        assert count_primes(lo, hi) == sum(1 for p in primes if lo <= p < hi), (lo, hi)


def test_prime_count_splits_add_up_far_from_zero() -> None:
    rng = random.Random(3)
    kind = KINDS["prime_count"]
    for _ in range(5):
        lo = rng.randint(10**9, 10**10)
        work = {"start": lo, "stop": lo + rng.randint(1, 200_000)}
        whole = kind.run(work)
        parts = kind.split(work, rng.randint(2, 40))
        assert sum(kind.run(part) for part in parts) == whole


def test_prime_squares_are_not_counted() -> None:
    for p in (2, 3, 5, 101, 9973):
        assert count_primes(p * p, p * p + 1) == 0
        assert count_primes(p, p + 1) == 1


# --- sha256_chain ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "chains", "rounds"), [("a", 1, 1), ("lambdaloop", 5, 3), ("é ☃", 17, 20)]
)
def test_sha256_chain_matches_hashlib(seed: str, chains: int, rounds: int) -> None:
    params = {"seed": seed, "chains": chains, "rounds": rounds}
    kind, work, parts = plan("sha256_chain", params, 4)
    expected = sha256_chain_reference(seed, chains, rounds)

    assert run_local(kind, work) == expected
    assert kind.finish(reduce_partials(kind, (kind.run(p) for p in parts))) == expected


def test_sha256_chain_never_splits_a_chain() -> None:
    _, _, parts = plan("sha256_chain", {"seed": "x", "chains": 3, "rounds": 1}, 50)

    assert [(p["start"], p["stop"]) for p in parts] == [(0, 1), (1, 2), (2, 3)]
    assert all(p["seed"] == "x" and p["rounds"] == 1 for p in parts)


def test_sha256_chain_result_is_in_chain_order_whatever_the_fold_order() -> None:
    kind, work, parts = plan("sha256_chain", {"seed": "o", "chains": 12, "rounds": 2}, 12)
    partials = [kind.run(p) for p in parts]

    assert kind.finish(reduce_partials(kind, reversed(partials))) == run_local(kind, work)


# --- splitting and reducing, every kind -----------------------------------------------------


@pytest.mark.parametrize(
    ("start", "stop", "n"), [(0, 10, 3), (5, 6, 4), (0, 100, 100), (7, 1_007, 13), (0, 3, 1)]
)
def test_split_range_tiles_evenly(start: int, stop: int, n: int) -> None:
    parts = split_range({"start": start, "stop": stop, "extra": "kept"}, n)
    sizes = [p["stop"] - p["start"] for p in parts]

    assert len(parts) == min(n, stop - start)
    assert parts[0]["start"] == start
    assert parts[-1]["stop"] == stop
    assert all(a["stop"] == b["start"] for a, b in itertools.pairwise(parts))
    assert min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1
    assert all(p["extra"] == "kept" for p in parts)


def test_an_empty_work_is_one_chunk() -> None:
    assert split_range({"start": 4, "stop": 4}, 10) == [{"start": 4, "stop": 4}]
    kind, _, parts = plan("sum_of_squares", {"n": 0}, 10)
    assert parts == [{"start": 0, "stop": 0}]
    assert kind.run(parts[0]) == 0


@pytest.mark.parametrize("n", [0, -1])
def test_split_range_needs_a_part(n: int) -> None:
    with pytest.raises(ValueError, match="cannot split"):
        split_range({"start": 0, "stop": 10}, n)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_chunk_split_again_reduces_to_the_same_result(name: str) -> None:
    kind, work, chunks = plan(name, SMALL_PARAMS[name], 5)
    partials = []
    for index, chunk in enumerate(chunks):
        if index == 2:  # as a consumer's process pool would
            partials.append(reduce_partials(kind, map(kind.run, kind.split(chunk, 3))))
        else:
            partials.append(kind.run(chunk))

    assert len(chunks) == 5
    assert kind.finish(reduce_partials(kind, partials)) == run_local(kind, work)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_reduce_is_associative(name: str) -> None:
    kind = KINDS[name]
    rng = random.Random(name)
    for _ in range(20):
        a, b, c = (kind.run(part) for part in kind.split(_random_work(rng, name), 3))
        left = kind.reduce(kind.reduce(a, b), c)
        right = kind.reduce(a, kind.reduce(b, c))
        assert left == right
        assert kind.finish(left) == kind.finish(right)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_partials_survive_a_json_round_trip(name: str) -> None:
    kind, work, chunks = plan(name, SMALL_PARAMS[name], 4)
    stored = [json.loads(json.dumps(kind.run(chunk))) for chunk in chunks]

    assert kind.finish(reduce_partials(kind, stored)) == run_local(kind, work)
    assert json.loads(json.dumps(run_local(kind, work))) == run_local(kind, work)
    assert json.loads(json.dumps(work)) == work


def test_reducing_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no partials"):
        reduce_partials(KINDS["sum_of_squares"], [])


# --- chunk counts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("sum_of_squares", {"n": 10**18}, 1),
        ("prime_count", {"n": 10}, 1),
        ("prime_count", {"n": 10**10}, 101),
        ("sha256_chain", {"seed": "s", "chains": 10, "rounds": 10**6}, 10),
        ("sha256_chain", {"seed": "s", "chains": 1000, "rounds": 1}, 1),
        ("sha256_chain", {"seed": "s", "chains": 3, "rounds": 10**7}, 3),
    ],
)
def test_default_chunk_counts(name: str, params: dict[str, Any], expected: int) -> None:
    _, _, chunks = plan(name, params)

    assert len(chunks) == expected


@pytest.mark.parametrize("name", sorted(KINDS))
def test_the_most_chunks_allowed(name: str) -> None:
    kind = KINDS[name]
    params = {**SMALL_PARAMS[name], "n": 10**6} if "n" in SMALL_PARAMS[name] else None
    params = params or {"seed": "s", "chains": kind.max_chunks, "rounds": 1}

    _, _, chunks = plan(name, params, kind.max_chunks)

    assert len(chunks) == kind.max_chunks


# --- params checking ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "chunks", "field"),
    [
        ("nope", {"n": 1}, None, "kind"),
        ("prime_count", [1], None, "params"),
        ("prime_count", {}, None, "params.n"),
        ("prime_count", {"n": 10**10 + 1}, None, "params.n"),
        ("prime_count", {"n": -1}, None, "params.n"),
        ("prime_count", {"n": True}, None, "params.n"),
        ("prime_count", {"n": 10.0}, None, "params.n"),
        ("prime_count", {"n": "10"}, None, "params.n"),
        ("prime_count", {"n": None}, None, "params.n"),
        ("prime_count", {"n": 10, "m": 1}, None, "params.m"),
        ("prime_count", {"n": 10}, 0, "chunks"),
        ("prime_count", {"n": 10}, 1001, "chunks"),
        ("prime_count", {"n": 10}, True, "chunks"),
        ("prime_count", {"n": 10}, 2.0, "chunks"),
        ("prime_count", {"n": 10}, "2", "chunks"),
        ("sum_of_squares", {"n": 10**18 + 1}, None, "params.n"),
        ("sum_of_squares", {"n": -5}, None, "params.n"),
        ("sum_of_squares", {"n": False}, None, "params.n"),
        ("sum_of_squares", {"count": 3}, None, "params.count"),
        ("sha256_chain", {"chains": 1, "rounds": 1}, None, "params.seed"),
        ("sha256_chain", {"seed": "", "chains": 1, "rounds": 1}, None, "params.seed"),
        ("sha256_chain", {"seed": "x" * 257, "chains": 1, "rounds": 1}, None, "params.seed"),
        ("sha256_chain", {"seed": 5, "chains": 1, "rounds": 1}, None, "params.seed"),
        ("sha256_chain", {"seed": "\ud800", "chains": 1, "rounds": 1}, None, "params.seed"),
        ("sha256_chain", {"seed": "s", "chains": 0, "rounds": 1}, None, "params.chains"),
        ("sha256_chain", {"seed": "s", "chains": 1001, "rounds": 1}, None, "params.chains"),
        ("sha256_chain", {"seed": "s", "chains": 1, "rounds": 0}, None, "params.rounds"),
        ("sha256_chain", {"seed": "s", "chains": 1, "rounds": 10**7 + 1}, None, "params.rounds"),
        ("sha256_chain", {"seed": "s", "chains": 11, "rounds": 10**7}, None, "params.rounds"),
        ("sha256_chain", {"seed": "s", "chains": 1, "rounds": 1, "salt": 1}, None, "params.salt"),
    ],
)
def test_bad_requests_name_the_field(
    kind: object, params: object, chunks: object, field: str
) -> None:
    with pytest.raises(ParamsError) as caught:
        plan(kind, params, chunks)

    assert caught.value.field == field
    assert caught.value.message
    assert str(caught.value).startswith(f"{field}: ")


def test_the_limits_themselves_are_accepted() -> None:
    plan("prime_count", {"n": 10**10})
    plan("sum_of_squares", {"n": 10**18}, 1000)
    plan("sha256_chain", {"seed": "x" * 256, "chains": 10, "rounds": 10**7}, 1)
    plan("sha256_chain", {"seed": "s", "chains": 1000, "rounds": 10**5})


def test_a_params_error_is_a_value_error_of_the_layer() -> None:
    from lambdaloop.errors import LambdaloopError

    error = ParamsError("params.n", "is required")

    assert isinstance(error, ValueError)
    assert isinstance(error, LambdaloopError)
    assert str(error) == "params.n: is required"


def test_kind_is_frozen() -> None:
    kind: Kind = KINDS["prime_count"]

    with pytest.raises(AttributeError):
        kind.max_chunks = 5  # type: ignore[misc]
