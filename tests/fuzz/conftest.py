"""The fuzzer's dev stack and its figures (printed after the run: cases, operations, links
covered, failures, throughput, and the stack's memory at start and end)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fuzz.dev_gateway import DevGateway, dev_gateway
from fuzz.fuzz_figures import FIGURES


@pytest.fixture(scope="session")
def dev() -> Iterator[DevGateway]:
    with dev_gateway() as gateway:
        FIGURES.memory.append(("start", *gateway.memory_kib()))
        yield gateway
        FIGURES.memory.append(("end", *gateway.memory_kib()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES.cases:
        return
    figures = FIGURES
    write = terminalreporter.write_line
    terminalreporter.section("API fuzz (schemathesis through the local gateway)")
    write(
        f"cases {figures.cases}, operations {figures.operations} of {figures.operation_total}, "
        f"links covered {figures.links_covered} of {figures.link_total} "
        f"({figures.links_inferred} of them inferred by schemathesis), "
        f"failures {figures.failures}"
    )
    if figures.seconds:
        write(f"time {figures.seconds:.1f} s, {figures.cases / figures.seconds:.1f} cases/s")
    for when, what, kib in figures.memory:
        shown = "unknown" if kib is None else f"{kib / 1024:.1f} MiB"
        write(f"memory at {when}: {what} VmRSS {shown}")
