"""``/docs``: Swagger UI, from a CDN when deployed and from a packaged copy in local mode.

The emulator may run offline, so there the page loads Swagger UI 5 (which renders OpenAPI 3.1)
from the ``fastapi-offline`` package through the public ``GET /docs/assets/{asset}`` (a browser
sends no token for a script). The Lambda layer lacks the package: deployed (and under sam
local) the page uses the CDN, and the assets route answers 404.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse

from api.errors import NotFound

__all__ = ["ASSETS", "ASSETS_PATH", "DOCS_PATH", "OAUTH2_REDIRECT_PATH", "install"]

logger = logging.getLogger(__name__)

DOCS_PATH = "/docs"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
ASSETS_PATH = "/docs/assets"
#: The only files served, by name, and their types: a name is looked up, never joined to a
#: path, so nothing else of the package (or the disk) can be reached.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
_PACKAGE, _FOLDER = "fastapi_offline", "static"
#: Asset URLs carry their content's hash, so a browser may keep them for good: another
#: package version is another URL.
_CACHE_CONTROL = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str

    @property
    def version(self) -> str:
        return self.etag.strip('"')


@functools.cache
def _asset(name: str) -> _Asset:
    """The packaged file ``name`` (a key of ASSETS), read once per execution environment."""
    import hashlib  # local mode only: the deployed cold start needs neither
    from importlib import resources

    body = (resources.files(_PACKAGE) / _FOLDER / name).read_bytes()
    return _Asset(body, ASSETS[name], f'"{hashlib.sha256(body).hexdigest()[:20]}"')


def _asset_url(root_path: str, name: str) -> str:
    return f"{root_path}{ASSETS_PATH}/{name}?v={_asset(name).version}"


def install(app: FastAPI, *, local: bool | None = None) -> None:
    """Serve ``/docs``, its OAuth2 redirect page and (``local``) its assets on ``app``, built
    with ``docs_url=None``. ``local`` defaults to the runtime's local mode."""
    if local is None:
        from lambdaloop.settings import get_runtime_settings

        local = get_runtime_settings().local_mode
    if local and not _packaged():
        logger.warning("/docs loads Swagger UI from a CDN: %s is not installed", _PACKAGE)
        local = False
    openapi_url = app.openapi_url or "/openapi.json"

    async def swagger_ui(request: Request) -> HTMLResponse:
        root_path = str(request.scope.get("root_path", "")).rstrip("/")
        assets = (
            {
                "swagger_js_url": _asset_url(root_path, "swagger-ui-bundle.js"),
                "swagger_css_url": _asset_url(root_path, "swagger-ui.css"),
                "swagger_favicon_url": _asset_url(root_path, "favicon.png"),
            }
            if local
            else {}
        )
        return get_swagger_ui_html(
            openapi_url=root_path + openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root_path + OAUTH2_REDIRECT_PATH,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
            **assets,
        )

    async def oauth2_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def asset(request: Request) -> Response:
        name = request.path_params["asset"]
        if not local:
            raise NotFound("Swagger UI's files are served in local mode only; /docs uses a CDN")
        if name not in ASSETS:
            raise NotFound(f"No docs asset named {name!r}", assets=sorted(ASSETS))
        found = _asset(name)
        headers = {
            "Cache-Control": _CACHE_CONTROL,
            "ETag": found.etag,
            "X-Content-Type-Options": "nosniff",
        }
        if {found.etag, "*"} & _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)

    app.add_route(DOCS_PATH, swagger_ui, include_in_schema=False)
    app.add_route(OAUTH2_REDIRECT_PATH, oauth2_redirect, include_in_schema=False)
    app.add_route(ASSETS_PATH + "/{asset}", asset, include_in_schema=False)


def _packaged() -> bool:
    from importlib.util import find_spec

    return find_spec(_PACKAGE) is not None


def _etags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compare as strong: RFC 9110's
    weak comparison, which If-None-Match uses)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
