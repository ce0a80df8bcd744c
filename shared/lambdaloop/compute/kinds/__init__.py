"""The registry of compute job kinds, and how a job's params become its chunks.

A job is a kind and its params. :func:`plan` checks both and splits the job's work into
chunks, one queue message each; a consumer runs a chunk with ``kind.run`` (or splits it
again with ``kind.split`` across a process pool and folds the parts with
:func:`reduce_partials`); the partials are folded into the job with ``kind.reduce``, and
``kind.finish`` of the last fold is the job's result. :func:`run_local` is the sequential
reference.

Adding a kind: a module defining ``KIND = Kind(...)`` (see :mod:`.base`) and one line in
``KINDS`` below.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from lambdaloop.compute.kinds import prime_count, sha256_chain, sum_of_squares
from lambdaloop.compute.kinds.base import Kind, ParamsError, Work

__all__ = [
    "KINDS",
    "Kind",
    "ParamsError",
    "UnknownKind",
    "Work",
    "get_kind",
    "plan",
    "reduce_partials",
    "run_local",
]

KINDS: Mapping[str, Kind] = MappingProxyType(
    {
        sum_of_squares.KIND.name: sum_of_squares.KIND,
        prime_count.KIND.name: prime_count.KIND,
        sha256_chain.KIND.name: sha256_chain.KIND,
    }
)
"""Every kind a job may have, by name (read-only)."""


class UnknownKind(ParamsError):
    """No kind has that name; the message lists the kinds there are."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__("kind", f"unknown kind {name!r} (known: {', '.join(sorted(KINDS))})")


def get_kind(name: object) -> Kind:
    """The kind called ``name``; UnknownKind (field ``kind``) if there is none."""
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise UnknownKind(name)
    return kind


def plan(kind_name: object, params: object, chunks: object = None) -> tuple[Kind, Work, list[Work]]:
    """Check a job request and split it: ``(kind, whole work, chunk works)``.

    ``chunks`` is the number the caller asks for (1..``kind.max_chunks``) or None for the
    kind's default; a job gets fewer chunks when its work is smaller than that (never an
    empty one, unless the whole work is empty: then it is the one chunk). Raises
    ParamsError naming the field at fault: ``kind``, ``params.<name>`` or ``chunks``.
    """
    kind = get_kind(kind_name)
    if not isinstance(params, Mapping):
        raise ParamsError("params", "must be an object")
    work = kind.validate(params)
    if chunks is None:
        count = min(max(1, kind.default_chunks(work)), kind.max_chunks)
    elif isinstance(chunks, bool) or not isinstance(chunks, int):
        raise ParamsError("chunks", f"must be an integer, not {type(chunks).__name__}")
    elif not 1 <= chunks <= kind.max_chunks:
        raise ParamsError("chunks", f"must be between 1 and {kind.max_chunks}, not {chunks}")
    else:
        count = chunks
    return kind, work, kind.split(work, count)


def reduce_partials(kind: Kind, partials: Iterable[Any]) -> Any:
    """The partials folded left to right with ``kind.reduce`` (at least one is needed)."""
    items = iter(partials)
    try:
        first = next(items)
    except StopIteration:
        raise ValueError("no partials to reduce") from None
    return functools.reduce(kind.reduce, items, first)


def run_local(kind: Kind, work: Work) -> Any:
    """The result of ``work`` computed here, unsplit: the reference for tests."""
    return kind.finish(kind.run(work))
