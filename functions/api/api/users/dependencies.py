"""The Users service of this execution environment, built on first use.

The service and what it stands on (repository, store, cache) are imported by the first
request that needs them, not at cold start: a request to another route never does.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from api.settings import get_api_settings

if TYPE_CHECKING:
    from api.users.service import UsersService

__all__ = ["get_users_service", "users_service_cache_clear"]


@functools.cache
def get_users_service() -> UsersService:
    from api.users.repository import UsersRepository
    from api.users.service import UsersService
    from lambdaloop.breaker import CircuitBreaker
    from lambdaloop.cache import Cache
    from lambdaloop.store import Table

    settings = get_api_settings()
    cache = Cache(
        "users",
        version=1,
        ttl_s=settings.cache_ttl_s,
        enabled=settings.cache_enabled,
        breaker=CircuitBreaker(
            "redis (users cache)",
            failure_threshold=settings.breaker_failures,
            reset_timeout_s=settings.breaker_reset_s,
        ),
    )
    return UsersService(UsersRepository(Table(settings.users_table)), cache)


def users_service_cache_clear() -> None:
    """Forget the service (tests that change the environment)."""
    get_users_service.cache_clear()
