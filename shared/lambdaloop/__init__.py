"""lambdaloop: the async core layer shared by every function of the bundle.

Importing the package is cheap and opens nothing; import the module you need:

- :mod:`lambdaloop.runtime`: the environment's event loop, invocation scopes, deadlines,
  task tracking, :func:`~lambdaloop.runtime.lambda_handler` for async handlers
- :mod:`lambdaloop.asgi`: ASGI apps (FastAPI) as Lambda handlers via Mangum
- :mod:`lambdaloop.settings`: typed settings from the environment, read once
- :mod:`lambdaloop.clients`: lazily built boto3, Redis and aiohttp clients
- :mod:`lambdaloop.health`: dependency probes with short timeouts
- :mod:`lambdaloop.observability`: JSON log lines (Powertools' shape) and Powertools metrics;
  tracer when enabled
- :mod:`lambdaloop.snapstart`: what an environment restored by SnapStart must not reuse
- :mod:`lambdaloop.errors`: the exception hierarchy
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
