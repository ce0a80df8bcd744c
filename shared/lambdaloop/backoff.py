"""Capped exponential backoff with jitter: the one delay policy of every retry in the layer.

Retry ``n`` (counted from 0) waits a random share of ``min(cap_s, base_s * 2**n)``. Full
jitter (the whole ceiling random) spreads callers that failed together the most; a ``floor``
keeps that share of the ceiling fixed where a retry must not come at once (a message put back
on its queue waits at least half its backoff: equal jitter).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float
    cap_s: float
    #: The share of the ceiling always waited: 0 is full jitter, 0.5 equal jitter.
    floor: float = 0.0
    #: Uniform in [0, 1); tests pass a constant.
    random: Callable[[], float] = field(default=_random.random, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.base_s <= self.cap_s:
            raise ValueError("backoff delays must satisfy 0 <= base_s <= cap_s")
        if not 0 <= self.floor <= 1:
            raise ValueError("floor must be in [0, 1]")

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry ``retry``."""
        return min(self.cap_s, self.base_s * 2.0 ** min(max(retry, 0), 64))

    def delay(self, retry: int) -> float:
        """The wait before retry ``retry`` (from 0)."""
        ceiling = self.ceiling(retry)
        return ceiling * (self.floor + (1 - self.floor) * self.random())
