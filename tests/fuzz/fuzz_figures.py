"""What the fuzz run did, for the summary the conftest prints."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["FIGURES", "FuzzFigures"]


@dataclass
class FuzzFigures:
    """What the fuzz run did: cases sent, operations and links they covered."""

    cases: int = 0
    operations: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)
    link_total: int = 0
    started: float = field(default_factory=time.perf_counter)
    memory: list[tuple[str, str, int | None]] = field(default_factory=list)

    def record(self, operation: str) -> None:
        self.cases += 1
        self.operations.add(operation)


FIGURES = FuzzFigures()
