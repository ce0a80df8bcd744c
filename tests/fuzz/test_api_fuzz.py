"""Schemathesis against the API as users run it: ``make dev``'s stack, through the local API
Gateway and its JWT authorizer, over HTTP, with a token of every scope.

Schemathesis' own CLI runs every phase (examples, coverage, fuzzing, then the stateful phase
along the schema's links and the ones it infers), positive and negative data, every check.
Its engine runs a stateful scenario against a server whose state moves on, which
Hypothesis' own state machine cannot replay. A fixed seed, deterministic generation and a
bounded number of examples keep it to minutes and the same every run; nothing is written
into the repository (no example database; its working folder is the test's tmp_path).
Zero failures is the bar: what it finds is fixed in the app. Two rules no schema can state
are kept by tests/fuzz/hooks.py; how the checks are configured, and why, is in
tests/fuzz/schemathesis.toml.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fuzz.dev_gateway import DevGateway
from fuzz.fuzz_figures import FIGURES

REPO = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
#: Examples per operation and phase: sized so the run takes a few minutes on a 2-core
#: machine (it runs twice in `make test`: 3.11 and 3.13).
MAX_EXAMPLES = 12
SEED = 14
#: Upper bounds only, far above what a loaded machine needs: the schema's first fetch, one
#: request, the whole run.
SCHEMA_WAIT_S = 120
REQUEST_TIMEOUT_S = 120
RUN_TIMEOUT_S = 3600
#: The phases that must run and pass. Examples is skipped: the schema gives no examples.
PHASES = ("coverage", "fuzzing", "stateful")
_LINKS = re.compile(
    r"API Links:\s+(\d+) covered / \d+ selected / (\d+) total(?: \((\d+) inferred\))?"
)


@pytest.fixture(scope="module")
def fuzz_run(dev: DevGateway, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One schemathesis run over the whole API: its JSON report, and its output."""
    folder = tmp_path_factory.mktemp("schemathesis")
    report = folder / "report.json"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(CONFIG),
        "run",
        f"{dev.url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--mode",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--wait-for-schema",
        str(SCHEMA_WAIT_S),
        "--request-timeout",
        str(REQUEST_TIMEOUT_S),
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    python_path = [str(REPO / "tests"), str(REPO / "functions" / "api")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(python_path),
        "LAMBDALOOP_FUZZ_TOKEN": dev.token,
        "COLUMNS": "200",
    }
    done = subprocess.run(
        command,
        cwd=folder,  # where schemathesis keeps its own state (.hypothesis, .schemathesis)
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert report.exists(), f"no report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(report.read_text())
    result["output"] = done.stdout + done.stderr
    (folder / "output.txt").write_text(result["output"])
    _record_figures(result)
    return result


def _record_figures(result: dict[str, Any]) -> None:
    FIGURES.cases = result["test_cases"]["generated"]
    FIGURES.operations = result["operations"]["tested"]
    FIGURES.operation_total = result["operations"]["total"]
    FIGURES.failures = sum(group["count"] for group in result["failures"])
    FIGURES.seconds = result["running_time"]
    links = _LINKS.search(result["output"])
    if links:
        FIGURES.links_covered, FIGURES.link_total = int(links[1]), int(links[2])
        FIGURES.links_inferred = int(links[3] or 0)


def test_the_api_holds_its_contract_under_fuzzing(fuzz_run: dict[str, Any]) -> None:
    failures = [
        f"{group['code']} {group['title']} (x{group['count']}): {', '.join(group['operations'])}"
        for group in fuzz_run["failures"]
    ] + [f"error: {error['title']} (x{error['count']})" for error in fuzz_run["errors"]]

    assert not failures, "\n".join([*failures, "", fuzz_run["output"]])
    assert fuzz_run["exit_code"] == 0, fuzz_run["output"]


def test_every_operation_and_phase_ran(fuzz_run: dict[str, Any]) -> None:
    operations = fuzz_run["operations"]
    assert (
        operations["tested"]
        == operations["selected"]
        == operations["total"]
        == len(_app_operations())
    )
    statuses = {phase: fuzz_run["phases"][phase]["status"] for phase in PHASES}
    assert statuses == dict.fromkeys(PHASES, "success"), fuzz_run["output"]


def test_the_stateful_phase_follows_links(fuzz_run: dict[str, Any]) -> None:
    # From what a POST created to where it lives: the links the contract declares.
    assert FIGURES.link_total > 0, fuzz_run["output"]
    assert FIGURES.links_covered > 0, fuzz_run["output"]


def _app_operations() -> set[tuple[str, str]]:
    """Every operation the app serves and documents (path, method)."""
    from fastapi.routing import APIRoute

    from api.app import create_app
    from api.settings import ApiSettings

    settings = ApiSettings.from_env(
        {
            name: "http://sqs.local/queue" if name.endswith("_URL") else name.lower()
            for name in (
                "USERS_TABLE",
                "NOTIFICATIONS_TABLE",
                "NOTIFY_QUEUE_URL",
                "JOBS_TABLE",
                "IDEMPOTENCY_TABLE",
            )
        }
    )
    return {
        (route.path, method)
        for route in create_app(settings).routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods or ()
    }
