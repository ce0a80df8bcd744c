"""``lambdaloop dev`` and ``lambdaloop token`` run as a user runs them, for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lambdaloop_local.services import free_port

ROOT = Path(__file__).parents[1]
CLI = [sys.executable, "-m", "lambdaloop_local.cli"]
#: Bounds on a start and a stop of `lambdaloop dev`, not expectations: a start takes seconds,
#: but on a machine whose cores are busy with other work it has taken over a minute.
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60


def token(*args: str, template: Path | None = None) -> str:
    """``lambdaloop token ...``: its one line of output."""
    options = ["--template", str(template)] if template else []
    result = subprocess.run(
        [*CLI, *options, "token", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=True,
    )
    assert result.stdout.count("\n") == 1, result.stdout
    return result.stdout.strip()


def template_copy(folder: Path) -> Path:
    """template.yaml in another folder (so its state folder is that folder's .lambdaloop)."""
    template = folder / "template.yaml"
    template.write_text(
        (ROOT / "template.yaml")
        .read_text()
        .replace("CodeUri: functions/", f"CodeUri: {ROOT}/functions/")
        .replace("ContentUri: shared/", f"ContentUri: {ROOT}/shared/")
    )
    return template


class DevServer:
    def __init__(self, port: int, template: Path | None = None, extra: Sequence[str] = ()) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.template = template
        options = ["--template", str(template)] if template else []
        dev = ["dev", "--port", str(port), "--aws-port", "0", "--concurrency", "1", *extra]
        self.process = subprocess.Popen(
            [*CLI, *options, *dev],
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

    def get(self, path: str, bearer: str | None = None) -> tuple[int, Any]:
        status, _, body = self.request(path, bearer)
        return status, body

    def request(self, path: str, bearer: str | None = None) -> tuple[int, Any, Any]:
        """GET ``path``: the status, headers and JSON body of the answer."""
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        url = f"{self.url}{path}"
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=30
            ) as r:
                return r.status, r.headers, json.loads(r.read())
        except urllib.error.HTTPError as error:
            return error.code, error.headers, json.loads(error.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGTERM, so that it stops what it started (SIGKILL would orphan redis-server).
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self.pump.join(STOP_TIMEOUT_S)  # it ends at EOF, now that the process is gone
        assert self.process.stdout is not None
        self.process.stdout.close()


@contextlib.contextmanager
def running_dev(template: Path | None = None) -> Iterator[DevServer]:
    server = DevServer(free_port(), template)
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.stop()
