"""Lambda entry point of the API function (Handler: api.handler.handler).

Module scope is the cold start: it reads and checks the settings (a bad environment fails
here, naming the variable) and builds the app; no client is created until a request needs it.
"""

from __future__ import annotations

from api.app import create_app
from api.settings import get_api_settings
from lambdaloop.asgi import asgi_handler
from lambdaloop.observability import get_logger, route_logs
from lambdaloop.settings import get_runtime_settings

__all__ = ["handler"]

get_runtime_settings()
get_api_settings()
route_logs("api")

handler = get_logger().inject_lambda_context(clear_state=True)(asgi_handler(create_app()))
