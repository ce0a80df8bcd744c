"""The Notifications service of this execution environment, built on first use (and
imported then, as the Users service is)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from api.settings import get_api_settings
from api.users.dependencies import get_users_service

if TYPE_CHECKING:
    from api.notifications.service import NotificationsService

__all__ = [
    "get_notifications_service",
    "notifications_service_cache_clear",
]


@functools.cache
def get_notifications_service() -> NotificationsService:
    from api.notifications.repository import NotificationsRepository
    from api.notifications.service import NotificationsService
    from lambdaloop.store import Table

    settings = get_api_settings()
    return NotificationsService(
        NotificationsRepository(Table(settings.notifications_table, key_schema=("pk",))),
        get_users_service(),
        retention_s=settings.notification_retention_days * 86_400,
    )


def notifications_service_cache_clear() -> None:
    """Forget the service (tests that change the environment)."""
    get_notifications_service.cache_clear()
