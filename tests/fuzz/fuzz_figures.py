"""What the fuzz run did, for the summary the conftest prints."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FIGURES", "FuzzFigures"]


@dataclass
class FuzzFigures:
    """What the fuzz run did (from schemathesis' report and output) and the stack's memory."""

    cases: int = 0
    operations: int = 0
    operation_total: int = 0
    links_covered: int = 0
    link_total: int = 0
    links_inferred: int = 0
    failures: int = 0
    seconds: float = 0.0
    memory: list[tuple[str, str, int | None]] = field(default_factory=list)


FIGURES = FuzzFigures()
