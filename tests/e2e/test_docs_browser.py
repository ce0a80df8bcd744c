"""``/docs`` in a real headless browser (Debian's Chromium driven by Playwright), against
``lambdaloop dev``: it renders offline, authorizes with ``lambdaloop token``, and "Try it
out" reaches the API through the local gateway.

Playwright's own browser builds are never downloaded: the test launches the system's Chromium
and is skipped where there is none (.ci/run installs it).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from api import docs
from dev_server import START_TIMEOUT_S, DevServer, running_dev, template_copy, token

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
UI_TIMEOUT_MS = 120_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (.ci/run installs Debian's)"
)


def create_user(dev: DevServer, bearer: str, name: str, email: str) -> int:
    request = urllib.request.Request(
        f"{dev.url}/users",
        data=json.dumps({"name": name, "email": email}).encode(),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=START_TIMEOUT_S) as response:
        assert response.status == 201
        return int(json.loads(response.read())["id"])


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    # A template copy of its own: its state folder, signing key included, is the copy's.
    with running_dev(template_copy(tmp_path_factory.mktemp("docs"))) as server:
        yield server


@pytest.mark.parametrize("name", ["swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"])
def test_the_gateway_serves_each_asset_without_a_token_byte_for_byte(
    dev: DevServer, name: str
) -> None:
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


def test_docs_work_offline_and_try_it_out_gets_a_user_with_a_token(dev: DevServer) -> None:
    from playwright.sync_api import Route, expect, sync_playwright

    # Given a user created through the API, and a token for its tenant
    bearer = token("alice", template=dev.template)
    user_id = create_user(dev, bearer, "Ada", "ada@example.com")

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
