"""The fuzzer's dev stack and its figures (printed after the run: cases, operations, links
covered, failures, throughput, and the stack's memory at start and end)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fuzz.dev_gateway import DevGateway, dev_gateway
from fuzz.fuzz_figures import FIGURES


@pytest.fixture(scope="session")
def dev() -> Iterator[DevGateway]:
    with dev_gateway() as gateway:
        FIGURES.started = time.perf_counter()
        FIGURES.memory.append(("start", *gateway.memory_kib()))
        yield gateway
        FIGURES.memory.append(("end", *gateway.memory_kib()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES.cases:
        return
    failed = [
        report
        for report in terminalreporter.stats.get("failed", [])
        if "tests/fuzz/" in report.nodeid
    ]
    known = [r for r in terminalreporter.stats.get("xfailed", []) if "tests/fuzz/" in r.nodeid]
    elapsed = time.perf_counter() - FIGURES.started
    write = terminalreporter.write_line
    terminalreporter.section("API fuzz (schemathesis through the local gateway)")
    write(
        f"cases {FIGURES.cases}, operations {len(FIGURES.operations)}, "
        f"links covered {len(FIGURES.links)} of {FIGURES.link_total}, "
        f"failures {len(failed)} (known, marked xfail: {len(known)})"
    )
    write(f"time {elapsed:.1f} s, {FIGURES.cases / elapsed:.1f} cases/s")
    for when, what, kib in FIGURES.memory:
        shown = "unknown" if kib is None else f"{kib / 1024:.1f} MiB"
        write(f"memory at {when}: {what} VmRSS {shown}")
