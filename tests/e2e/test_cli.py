"""The emulator's CLI end to end, as a user runs it: ``lambdaloop dev`` and ``invoke``."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from lambdaloop_local.services import free_port

ROOT = Path(__file__).parents[2]
CLI = [sys.executable, "-m", "lambdaloop_local.cli"]
#: Bounds on waiting for processes (not timings under test).
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 30


def _refuses(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


class DevServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [*CLI, "dev", "--port", str(port), "--aws-port", "0", "--concurrency", "1"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.banner: list[str] = []
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_until_ready(self) -> None:
        while True:
            line = self.lines.get(timeout=START_TIMEOUT_S)
            if line is None:
                raise AssertionError(f"lambdaloop dev exited early: {self.banner}")
            self.banner.append(line)
            if "Press Ctrl-C" in line:
                return

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@pytest.fixture
def dev() -> Iterator[DevServer]:
    server = DevServer(free_port())
    try:
        server.wait_until_ready()
        yield server
    finally:
        if server.process.poll() is None:
            # SIGTERM, so that it stops what it started (SIGKILL would orphan redis-server).
            server.process.terminate()
            try:
                server.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(STOP_TIMEOUT_S)
        server.pump.join(STOP_TIMEOUT_S)  # it ends at EOF, now that the process is gone
        assert server.process.stdout is not None
        server.process.stdout.close()


def test_dev_serves_the_api_and_stops_cleanly(dev: DevServer) -> None:
    # Given a running `lambdaloop dev`, which says where its services are
    state_file = ROOT / ".lambdaloop" / "dev.json"
    state = json.loads(state_file.read_text())
    assert state["pid"] == dev.process.pid
    redis_port = urlsplit(state["redis_url"]).port
    aws_port = urlsplit(state["aws_endpoint"]).port
    assert redis_port is not None
    assert aws_port is not None
    assert any(state["redis_url"] in line for line in dev.banner)

    # When a client asks for the health of the stack
    status, health = dev.get("/health")
    missing_status, problem = dev.get("/missing")

    # Then every dependency is up, and errors are problem+json
    assert status == 200
    assert health["checks"] == {"dynamodb": "ok", "redis": "ok", "queue": "ok"}
    assert (missing_status, problem["status"]) == (404, 404)

    # And SIGTERM stops everything it started
    dev.process.send_signal(signal.SIGTERM)
    assert dev.process.wait(STOP_TIMEOUT_S) == 0
    assert _refuses(dev.port)
    assert _refuses(redis_port)
    assert _refuses(aws_port)
    assert not state_file.exists()


def test_invoke_attaches_to_a_running_dev(dev: DevServer) -> None:
    event = ROOT / "infra" / "events" / "api-health.json"

    result = subprocess.run(
        [*CLI, "invoke", "ApiFunction", "-e", str(event)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=True,
    )

    response = json.loads(result.stdout)
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["checks"]["redis"] == "ok"
    assert "using the running lambdaloop dev" in result.stderr


def test_invoke_takes_sam_locals_env_vars_file(dev: DevServer, tmp_path: Path) -> None:
    event = ROOT / "infra" / "events" / "api-root.json"
    env_vars = tmp_path / "env.json"
    env_vars.write_text(json.dumps({"ApiFunction": {"POWERTOOLS_SERVICE_NAME": "renamed"}}))

    result = subprocess.run(
        [*CLI, "invoke", "ApiFunction", "-e", str(event), "--env-vars", str(env_vars)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=True,
    )

    assert json.loads(json.loads(result.stdout)["body"])["service"] == "renamed"


def test_invoke_without_dev_runs_its_own_stack(tmp_path: Path) -> None:
    env = {**os.environ}
    event = ROOT / "infra" / "events" / "api-not-found.json"
    template = tmp_path / "template.yaml"
    # A copy of the template elsewhere: no running dev can be found beside it.
    template.write_text(
        (ROOT / "template.yaml")
        .read_text()
        .replace("functions/api/", f"{ROOT}/functions/api/")
        .replace("ContentUri: shared/", f"ContentUri: {ROOT}/shared/")
    )

    result = subprocess.run(
        [*CLI, "--template", str(template), "invoke", "ApiFunction", "-e", str(event)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        env=env,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["statusCode"] == 404
    assert json.loads(response["body"])["title"] == "Not Found"


def test_invoke_of_an_unknown_function_fails_with_its_name() -> None:
    result = subprocess.run(
        [*CLI, "invoke", "NoSuchFunction"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )

    assert result.returncode != 0
    assert "NoSuchFunction" in result.stderr
