"""``sum_of_squares``: ``sum(i * i for i in range(n))``, in closed form.

Params ``{"n": int}`` with ``0 <= n <= 10**18``; work ``{"start": a, "stop": b}``; a
partial is the sum over ``a <= i < b`` (an exact Python int: JSON carries any size). Each
chunk costs O(1), so the bound only keeps numbers (and the result, ~54 digits) small.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lambdaloop.compute.kinds.base import Kind, Work, check_keys, int_param, split_range

__all__ = ["KIND", "MAX_N", "run", "squares_below", "validate"]

MAX_N = 10**18


def validate(params: Mapping[str, Any]) -> Work:
    n = int_param(check_keys(params, ("n",)), "n", low=0, high=MAX_N)
    return {"start": 0, "stop": n}


def squares_below(m: int) -> int:
    """``sum(i * i for i in range(m))`` = (m - 1) m (2m - 1) / 6, exactly (one of m - 1, m is
    even and one of m - 1, m, 2m - 1 is a multiple of 3)."""
    return (m - 1) * m * (2 * m - 1) // 6 if m > 0 else 0


def run(work: Work) -> int:
    start, stop = work["start"], work["stop"]
    return squares_below(stop) - squares_below(start) if stop > start else 0


def _add(a: int, b: int) -> int:
    return a + b


def _one_chunk(work: Work) -> int:
    return 1


KIND = Kind(
    name="sum_of_squares",
    validate=validate,
    split=split_range,
    run=run,
    reduce=_add,
    default_chunks=_one_chunk,
)
