"""``/docs`` through the API's Lambda handler: Swagger UI from the CDN when deployed, from the
packaged copy (``/docs/assets/...``) in local mode, and nothing else of the package."""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
from collections.abc import Callable
from importlib import resources
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.routing import Route

from api import docs
from api.app import create_app
from api.problems import install_problem_handlers
from lambdaloop.asgi import asgi_handler
from support import api_settings, http_event, lambda_context

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
PACKAGED = resources.files("fastapi_offline") / "static"
SETTINGS = api_settings()


def handler(*, local: bool) -> Handler:
    app = FastAPI(title="lambdaloop", docs_url=None, redoc_url=None)
    install_problem_handlers(app)
    docs.install(app, local=local)
    return asgi_handler(app)


def get(handler: Handler, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return handler(http_event("GET", path, headers=headers), lambda_context())


def payload(response: dict[str, Any]) -> bytes:
    body = response.get("body") or ""
    return base64.b64decode(body) if response["isBase64Encoded"] else body.encode()


def page_urls(response: dict[str, Any]) -> list[str]:
    """The URLs the page loads (script, stylesheet, icon) and gives Swagger UI (url)."""
    html = payload(response).decode()
    return re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)


def test_local_docs_load_swagger_ui_from_the_api_itself() -> None:
    response = get(handler(local=True), "/docs")

    assert response["statusCode"] == 200
    assert response["headers"]["content-type"].startswith("text/html")
    urls = page_urls(response)
    assert "/openapi.json" in urls
    loaded = {url.split("?")[0] for url in urls if url.startswith("/docs/assets/")}
    assert loaded == {f"/docs/assets/{name}" for name in docs.ASSETS}
    # Nothing from another host: the page must work offline.
    assert not [url for url in urls if "//" in url], urls
    assert "cdn" not in payload(response).decode()


def test_deployed_docs_load_swagger_ui_from_the_cdn_and_serve_no_assets() -> None:
    deployed = handler(local=False)

    page = get(deployed, "/docs")
    asset = get(deployed, "/docs/assets/swagger-ui-bundle.js")

    assert page["statusCode"] == 200
    assert any(url.startswith("https://cdn.") for url in page_urls(page))
    assert asset["statusCode"] == 404
    assert asset["headers"]["content-type"] == "application/problem+json"
    assert "local mode" in json.loads(payload(asset))["detail"]


@pytest.mark.parametrize("local", [True, False])
def test_the_oauth2_redirect_page_is_served_in_both_modes(local: bool) -> None:
    response = get(handler(local=local), "/docs/oauth2-redirect")

    assert response["statusCode"] == 200
    assert b"oauth2" in payload(response)


@pytest.mark.parametrize(
    ("name", "content_type", "base64_encoded"),
    [
        ("swagger-ui-bundle.js", "text/javascript; charset=utf-8", False),
        ("swagger-ui.css", "text/css; charset=utf-8", False),
        ("favicon.png", "image/png", True),
    ],
)
def test_each_asset_is_the_packaged_file_with_its_type_and_cache_headers(
    name: str, content_type: str, base64_encoded: bool
) -> None:
    response = get(handler(local=True), f"/docs/assets/{name}")

    assert response["statusCode"] == 200
    assert response["headers"]["content-type"] == content_type
    # Text passes through API Gateway as text; the icon as base64 (Mangum's text types).
    assert response["isBase64Encoded"] is base64_encoded
    assert payload(response) == (PACKAGED / name).read_bytes()
    assert response["headers"]["cache-control"] == "public, max-age=31536000, immutable"
    assert response["headers"]["x-content-type-options"] == "nosniff"
    assert re.fullmatch(r'"[0-9a-f]{20}"', response["headers"]["etag"])


def test_the_page_names_each_asset_by_its_content_hash() -> None:
    local = handler(local=True)
    urls = [url for url in page_urls(get(local, "/docs")) if url.startswith("/docs/assets/")]

    for url in urls:
        path, version = url.split("?v=")
        assert get(local, path)["headers"]["etag"] == f'"{version}"'


@pytest.mark.parametrize("tags", ['"{etag}"', 'W/"{etag}"', '"other", "{etag}"', "*"])
def test_a_known_etag_is_answered_304_without_a_body(tags: str) -> None:
    local = handler(local=True)
    etag = get(local, "/docs/assets/swagger-ui.css")["headers"]["etag"].strip('"')

    response = get(local, "/docs/assets/swagger-ui.css", {"if-none-match": tags.format(etag=etag)})

    assert response["statusCode"] == 304
    assert payload(response) == b""
    assert response["headers"]["etag"] == f'"{etag}"'


def test_another_etag_gets_the_file() -> None:
    response = get(handler(local=True), "/docs/assets/swagger-ui.css", {"if-none-match": '"stale"'})

    assert response["statusCode"] == 200
    assert payload(response) == (PACKAGED / "swagger-ui.css").read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/docs/assets/redoc.standalone.js",  # in the package's folder, but not served
        "/docs/assets/swagger-ui-bundle.js.map",
        "/docs/assets/__init__.py",
        "/docs/assets/..%2F__init__.py",
        "/docs/assets/%2E%2E%2Fcore.py",
        "/docs/assets/../core.py",
        "/docs/assets/..%2F..%2Fapi%2Fdocs.py",
        "/docs/assets/",
        "/docs/assets/SWAGGER-UI.CSS",
    ],
)
def test_anything_but_a_listed_asset_is_404_problem_json(path: str) -> None:
    response = get(handler(local=True), path)

    assert response["statusCode"] == 404
    assert response["headers"]["content-type"] == "application/problem+json"
    assert json.loads(payload(response))["status"] == 404


def test_every_listed_asset_is_in_the_installed_package() -> None:
    for name in docs.ASSETS:
        assert (PACKAGED / name).is_file(), name


def test_the_app_serves_the_docs_routes_once_each() -> None:
    app = create_app(SETTINGS)

    paths = [route.path for route in app.routes if isinstance(route, Route)]

    for path in ("/docs", "/docs/oauth2-redirect", "/docs/assets/{asset}"):
        assert paths.count(path) == 1, paths


def test_local_mode_without_the_package_falls_back_to_the_cdn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an environment without fastapi-offline (sam local runs the built layer)
    monkeypatch.setitem(sys.modules, "fastapi_offline", None)  # import finds nothing

    # (caplog's handler on the module's own logger: a handler imported earlier in the session
    # routes the "api" loggers to the function's logger, away from the root's)
    docs_logger = logging.getLogger(docs.__name__)
    docs_logger.addHandler(caplog.handler)
    try:
        local = handler(local=True)
    finally:
        docs_logger.removeHandler(caplog.handler)
    page = get(local, "/docs")

    assert any(url.startswith("https://cdn.") for url in page_urls(page))
    assert get(local, "/docs/assets/swagger-ui.css")["statusCode"] == 404
    assert "fastapi_offline is not installed" in caplog.text
