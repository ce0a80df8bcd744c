"""A circuit breaker: stop calling a failing dependency for a cool-down, then probe it.

    closed --(failure_threshold consecutive failures)--> open
    open --(reset_timeout_s passed; one caller is let through)--> half-open
    half-open --(that call succeeds)--> closed, --(it fails)--> open again

Per execution environment (it lives in the process), so one environment's view of an outage
costs each environment at most ``failure_threshold`` slow calls per cool-down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker"]

logger = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 3,
        reset_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def failures(self) -> int:
        """Consecutive failures so far (0 after a success)."""
        return self._failures

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at >= self.reset_timeout_s:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """May a call go through now? In half-open, only one probe at a time does."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    def release(self) -> None:
        """The call let through ended without a verdict (cancelled, or a bug raised): let
        the next caller probe instead, or the circuit would never close again."""
        self._probing = False

    def record_success(self) -> None:
        if self._opened_at is not None:
            logger.info("%s is answering again: circuit closed", self.name)
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> bool:
        """Count a failure; return True when it opens (or re-opens) the circuit."""
        self._failures += 1
        if self._probing or (self._opened_at is None and self._failures >= self.failure_threshold):
            self._opened_at = self._clock()
            self._probing = False
            logger.warning(
                "%s failed %d time(s) in a row: circuit open, calls skipped for %.1f s",
                self.name,
                self._failures,
                self.reset_timeout_s,
            )
            return True
        return False
