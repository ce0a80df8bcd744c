"""The Notifications routes (added to the app's router, as the Users routes are)."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from api.contract import links, problems
from api.idempotency import new_record_id
from api.identity import NotificationsRead, NotificationsWrite
from api.middleware import correlation_id_var
from api.notifications.dependencies import get_notifications_service
from api.notifications.models import MAX_PAGE, Inbox, Notification, NotifyRequest, Queued
from api.users.routes import PathId

__all__ = ["install"]

NotificationId = Annotated[str, Path(min_length=1, max_length=64)]


async def notify(
    tenant: NotificationsWrite,
    user_id: PathId,
    body: NotifyRequest,
    response: Response,
) -> dict[str, Any]:
    notification_id = new_record_id()
    await get_notifications_service().notify(
        tenant, notification_id, user_id, body.message, correlation_id_var.get()
    )
    response.headers["Location"] = f"/notifications/{notification_id}"
    return {"notification_id": notification_id, "status": "queued"}


async def get_notification(
    tenant: NotificationsRead, notification_id: NotificationId
) -> dict[str, Any]:
    return await get_notifications_service().get(tenant, notification_id)


async def inbox(
    tenant: NotificationsRead,
    user_id: PathId,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    # A cursor is what the listing gave: URL-safe base64, unpadded (which keeps a URL with
    # one within API Gateway's 10240 bytes; one it did not give is a 400).
    cursor: Annotated[str | None, Query(max_length=2048, pattern=r"^[A-Za-z0-9_-]+$")] = None,
) -> dict[str, Any]:
    notifications, next_cursor = await get_notifications_service().inbox(
        tenant, user_id, limit, cursor
    )
    return {"notifications": notifications, "next_cursor": next_cursor}


def install(router: APIRouter) -> None:
    add = functools.partial(router.add_api_route, tags=["notifications"])
    add(
        "/users/{user_id}/notify",
        notify,
        methods=["POST"],
        status_code=202,
        response_model=Queued,
        responses={
            202: {
                "links": links(
                    "$response.body#/notification_id",
                    "get_notification",
                    parameter="notification_id",
                )
            },
            **problems(404),
        },
    )
    add(
        "/users/{user_id}/notifications",
        inbox,
        methods=["GET"],
        response_model=Inbox,
        responses=problems(400, 404),
    )
    add(
        "/notifications/{notification_id}",
        get_notification,
        methods=["GET"],
        response_model=Notification,
        responses=problems(404),
    )
