"""What a compute job kind is made of, and the helpers its module builds one from.

A job is a kind and its params. ``Kind.validate`` turns the params into a *work*: a small
JSON-able dict, for every kind here a half-open range ``{"start": a, "stop": b}`` plus
whatever the range needs. ``Kind.split`` cuts a work into sub-works of the same shape (so a
chunk can be cut again, across a local process pool), ``Kind.run`` computes one work's
partial result, ``Kind.reduce`` merges two partials (associative, so chunks may be folded
in any grouping) and ``Kind.finish`` turns the fully reduced partial into the job's result.

Partials are stored as JSON text between chunks, so they are JSON values whose round trip
(``json.loads(json.dumps(p))``) reduces to the same result. The functions are module-level,
so a worker process gets them by reference (pickle), never as code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from lambdaloop.errors import LambdaloopError

__all__ = [
    "Kind",
    "ParamsError",
    "Work",
    "check_keys",
    "identity",
    "int_param",
    "split_range",
    "str_param",
]

Work = dict[str, Any]
"""One unit of a job's work: JSON-able, the same shape for a whole job and for a chunk."""

_T = TypeVar("_T")


class ParamsError(LambdaloopError, ValueError):
    """A job's kind, params or chunk count is not acceptable; ``field`` names which.

    ``field`` is a dotted path into the request (``"kind"``, ``"chunks"``, ``"params.n"``),
    ``message`` says what is wrong with it, for the API's 422.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def identity(value: _T) -> _T:
    """The default ``finish``: the reduced partial is the result."""
    return value


@dataclass(frozen=True, kw_only=True)
class Kind:
    """A kind of compute job: how to check its params, split, run and reduce its work."""

    name: str
    validate: Callable[[Mapping[str, Any]], Work]
    """The params (a mapping from the request) -> the whole job's work; raises ParamsError."""
    split: Callable[[Work, int], list[Work]]
    """A work and n >= 1 -> 1..n sub-works that tile it (only an empty work gives an empty one)."""
    run: Callable[[Work], Any]
    """One work -> its partial result (a JSON value)."""
    reduce: Callable[[Any, Any], Any]
    """Two partials of adjacent or disjoint works -> their merge (associative)."""
    default_chunks: Callable[[Work], int]
    """How many chunks a job gets when the request does not say."""
    finish: Callable[[Any], Any] = identity
    """The reduced partial of the whole work -> the job's public result."""
    max_chunks: int = 1000
    """The most chunks (queue messages) a request may ask for."""


def split_range(work: Work, n: int) -> list[Work]:
    """Cut ``work["start"]:work["stop"]`` into ``min(n, size)`` adjacent, non-empty ranges.

    Sizes differ by at most one and the ranges tile the work exactly; the other keys are
    copied to every part. An empty work comes back whole (a job always has one chunk).
    """
    if n < 1:
        raise ValueError(f"cannot split into {n} parts")
    start, stop = work["start"], work["stop"]
    size = max(0, stop - start)
    parts = max(1, min(n, size))
    base, extra = divmod(size, parts)
    out: list[Work] = []
    lo = start
    for index in range(parts):
        hi = lo + base + (1 if index < extra else 0)
        out.append({**work, "start": lo, "stop": hi})
        lo = hi
    return out


def check_keys(params: object, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    """``params`` as a mapping with no key outside ``allowed``, else ParamsError."""
    if not isinstance(params, Mapping):
        raise ParamsError("params", "must be an object")
    for key in params:
        if key not in allowed:
            expected = ", ".join(allowed)
            raise ParamsError(f"params.{key}", f"unknown parameter (expected: {expected})")
    return params


def _required(params: Mapping[str, Any], name: str) -> Any:
    if name not in params:
        raise ParamsError(f"params.{name}", "is required")
    return params[name]


def int_param(params: Mapping[str, Any], name: str, *, low: int, high: int) -> int:
    """The integer ``params[name]``, required, in ``low..high`` (bool is not an integer)."""
    value = _required(params, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(f"params.{name}", f"must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise ParamsError(f"params.{name}", f"must be between {low} and {high}, not {value}")
    return value


def str_param(params: Mapping[str, Any], name: str, *, min_len: int, max_len: int) -> str:
    """The string ``params[name]``, required, ``min_len..max_len`` characters, valid UTF-8."""
    value = _required(params, name)
    if not isinstance(value, str):
        raise ParamsError(f"params.{name}", f"must be a string, not {type(value).__name__}")
    if not min_len <= len(value) <= max_len:
        raise ParamsError(
            f"params.{name}", f"must have {min_len} to {max_len} characters, not {len(value)}"
        )
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ParamsError(f"params.{name}", "must be valid Unicode (no lone surrogates)") from None
    return value
