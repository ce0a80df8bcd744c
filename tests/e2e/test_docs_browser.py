"""``/docs`` in a real headless browser (Debian's Chromium driven by Playwright), against
``lambdaloop dev``: it renders offline, authorizes with ``lambdaloop token``, and "Try it
out" reaches the API through the local gateway.

Playwright's own browser builds are never downloaded: the test launches the system's Chromium
and is skipped where there is none (.ci/run installs it).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from api import docs
from lambdaloop_local.services import free_port

ROOT = Path(__file__).parents[2]
CLI = [sys.executable, "-m", "lambdaloop_local.cli"]
CHROMIUM = Path("/usr/bin/chromium")
#: The machine's network refuses outside connections: no background traffic of the browser's.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Bounds on waiting (processes starting, the page loading), never timings under test.
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 30
UI_TIMEOUT_MS = 120_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (.ci/run installs Debian's)"
)


class Dev:
    """``lambdaloop dev`` on a template copy of its own (its state folder, signing key
    included, is the copy's), until stopped."""

    def __init__(self, template: Path) -> None:
        self.template = template
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        dev = ["dev", "--port", str(self.port), "--aws-port", "0", "--concurrency", "1"]
        self.process = subprocess.Popen(
            [*CLI, "--template", str(template), *dev],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_until_ready(self) -> None:
        seen = []
        while (line := self.lines.get(timeout=START_TIMEOUT_S)) is not None:
            seen.append(line)
            if "Press Ctrl-C" in line:
                return
        raise AssertionError(f"lambdaloop dev exited early: {seen}")

    def token(self, subject: str) -> str:
        """``lambdaloop token SUBJECT``, as a user gets one."""
        result = subprocess.run(
            [*CLI, "--template", str(self.template), "token", subject],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=True,
        )
        return result.stdout.strip()

    def create_user(self, bearer: str, name: str, email: str) -> int:
        request = urllib.request.Request(
            f"{self.url}/users",
            data=json.dumps({"name": name, "email": email}).encode(),
            headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=START_TIMEOUT_S) as response:
            assert response.status == 201
            return int(json.loads(response.read())["id"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: it stops what it started
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self.pump.join(STOP_TIMEOUT_S)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    template = tmp_path_factory.mktemp("docs") / "template.yaml"
    template.write_text(
        (ROOT / "template.yaml")
        .read_text()
        .replace("CodeUri: functions/", f"CodeUri: {ROOT}/functions/")
        .replace("ContentUri: shared/", f"ContentUri: {ROOT}/shared/")
    )
    server = Dev(template)
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"])
def test_the_gateway_serves_each_asset_without_a_token_byte_for_byte(dev: Dev, name: str) -> None:
    # The page's files pass through the gateway, the worker and Mangum (the icon as base64)
    packaged = (resources.files("fastapi_offline") / "static" / name).read_bytes()

    with urllib.request.urlopen(f"{dev.url}/docs/assets/{name}", timeout=START_TIMEOUT_S) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == docs.ASSETS[name]
        assert r.read() == packaged
        etag = r.headers["ETag"]
    again = urllib.request.Request(f"{dev.url}/docs/assets/{name}", headers={"If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as not_modified:  # urllib raises on a 304
        urllib.request.urlopen(again, timeout=START_TIMEOUT_S)
    with not_modified.value as answer:  # an HTTPError holds the connection until closed
        assert answer.code == 304


def test_docs_work_offline_and_try_it_out_gets_a_user_with_a_token(dev: Dev) -> None:
    from playwright.sync_api import Route, expect, sync_playwright

    # Given a user created through the API, and a token for its tenant
    bearer = dev.token("alice")
    user_id = dev.create_user(bearer, "Ada", "ada@example.com")

    outside: list[str] = []

    def local_only(route: Route) -> None:
        # Anything not for the local API is recorded and refused, as an offline network would.
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.route("**/*", local_only)
            failed: list[str] = []
            page.on("pageerror", lambda error: failed.append(str(error)))

            # When the docs are opened (goto returns once the page and its scripts are loaded)
            page.goto(f"{dev.url}/docs")

            # Then Swagger UI comes from the API alone, and renders the API's operations
            assert outside == []
            operation = page.locator(
                ".opblock-get", has=page.locator('[data-path="/users/{user_id}"]')
            )
            expect(operation).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(page.locator('[data-path="/jobs/{job_id}"]')).to_be_visible(
                timeout=UI_TIMEOUT_MS
            )
            assert failed == []

            # When the token is given to Authorize
            page.locator(".auth-wrapper .authorize").click()
            dialog = page.locator(".modal-ux")
            dialog.locator("input").fill(bearer)
            dialog.locator("button.authorize").click()
            expect(dialog.get_by_role("button", name="Remove authorization")).to_be_visible(
                timeout=UI_TIMEOUT_MS
            )
            dialog.get_by_role("button", name="Close").click()

            # And GET /users/{user_id} is tried out with the user's id
            operation.locator(".opblock-summary-control").click()
            operation.locator(".try-out__btn").click()
            operation.locator('tr[data-param-name="user_id"] input').fill(str(user_id))
            with page.expect_response(
                f"{dev.url}/users/{user_id}", timeout=UI_TIMEOUT_MS
            ) as answer:
                operation.locator(".execute").click()

            # Then the request carried the token, and the response panel shows the user
            assert answer.value.request.headers["authorization"] == f"Bearer {bearer}"
            live = operation.locator(".live-responses-table")
            expect(live.locator("tbody .response-col_status")).to_have_text(
                "200", timeout=UI_TIMEOUT_MS
            )
            expect(live.locator("tbody .response-col_description")).to_contain_text(
                "ada@example.com", timeout=UI_TIMEOUT_MS
            )
            assert outside == []
            assert failed == []
        finally:
            browser.close()
