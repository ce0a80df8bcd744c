"""Lambda entry point of the API function (Handler: api.handler.handler).

Module scope is the cold start: it reads and checks the settings (a bad environment fails
here, naming the variable) and builds the app; no client is created until a request needs it.
"""

from __future__ import annotations

from lambdaloop.runtime import pause_gc_for_init

# First: the imports below are most of init, and what they build is never garbage.
pause_gc_for_init()

from api.app import create_app  # noqa: E402
from api.settings import get_api_settings  # noqa: E402
from lambdaloop.asgi import asgi_handler  # noqa: E402
from lambdaloop.observability import get_logger, route_logs  # noqa: E402
from lambdaloop.settings import get_runtime_settings  # noqa: E402

__all__ = ["handler"]

get_runtime_settings()
get_api_settings()
route_logs("api")

handler = get_logger().inject_lambda_context(clear_state=True)(asgi_handler(create_app()))
