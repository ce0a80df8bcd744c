"""ASGI apps (FastAPI) as Lambda handlers, via Mangum, on the environment's loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lambdaloop.runtime import get_loop, invocation

__all__ = ["TEXT_MIME_TYPES", "asgi_handler"]

#: Response types returned as text; anything else is base64-encoded by Mangum.
#: Mangum matches by substring, so "application/json" does not cover problem+json.
TEXT_MIME_TYPES = (
    "text/",
    "application/json",
    "application/problem+json",
    "application/javascript",
    "application/xml",
    "application/vnd.oai.openapi",
)


def asgi_handler(
    app: Any, *, api_gateway_base_path: str = "/"
) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """Wrap an ASGI app into a Lambda handler for API Gateway events.

    The lifespan is off: Mangum would otherwise run startup and shutdown on every
    invocation. Resources come from the lazy clients instead.
    """
    from mangum import Mangum

    # Mangum looks the loop up with asyncio.get_event_loop(): make ours the current one first.
    get_loop()
    adapter = Mangum(
        app,
        lifespan="off",
        api_gateway_base_path=api_gateway_base_path,
        text_mime_types=list(TEXT_MIME_TYPES),
    )

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        with invocation(context):
            return adapter(event, context)

    return handler
