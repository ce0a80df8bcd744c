"""The Users routes.

They are added to the app's own router by :func:`install` rather than through an APIRouter
and ``include_router``, which would build every route twice at cold start (~20 ms here).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic_core import to_json

from api.contract import links, problems
from api.identity import UsersRead, UsersWrite
from api.users.dependencies import get_users_service
from api.users.models import (
    MAX_BATCH,
    BatchCreate,
    BatchCreated,
    BatchUsers,
    User,
    UserFields,
    UserId,
    UserPatch,
)

__all__ = ["install"]

PathId = Annotated[int, Path(ge=1, le=2**53 - 1, description="The user's id")]


def _json(data: Any) -> Response:
    """The hot read paths answer with what the service built from stored, validated users,
    skipping FastAPI's validate-then-serialize pass (response_model still documents it)."""
    return Response(to_json(data), media_type="application/json")


async def get_users(
    tenant: UsersRead,
    user_ids: Annotated[list[UserId], Query(min_length=1, max_length=MAX_BATCH)],
) -> Response:
    users, missing = await get_users_service().get_many(tenant, user_ids)
    return _json({"users": users, "missing": missing})


async def create_users(tenant: UsersWrite, body: BatchCreate) -> dict[str, Any]:
    return {"users": await get_users_service().create_many(tenant, body.users)}


async def create_user(tenant: UsersWrite, body: UserFields, response: Response) -> dict[str, Any]:
    user = await get_users_service().create(tenant, body)
    response.headers["Location"] = f"/users/{user['id']}"
    return user


async def get_user(tenant: UsersRead, user_id: PathId) -> Response:
    return _json(await get_users_service().get(tenant, user_id))


async def replace_user(
    tenant: UsersWrite, user_id: PathId, body: UserFields, response: Response
) -> dict[str, Any]:
    user, created = await get_users_service().replace(tenant, user_id, body)
    if created:
        response.status_code = 201
        response.headers["Location"] = f"/users/{user_id}"
    return user


async def patch_user(tenant: UsersWrite, user_id: PathId, body: UserPatch) -> dict[str, Any]:
    return await get_users_service().patch(tenant, user_id, body)


async def delete_user(tenant: UsersWrite, user_id: PathId) -> Response:
    await get_users_service().delete(tenant, user_id)
    return Response(status_code=204)


def install(router: APIRouter) -> None:
    """Add the Users routes to ``router`` (the app's). ``/users/batch`` comes before
    ``/users/{user_id}``, so the parameterised route can never shadow it."""
    add = functools.partial(router.add_api_route, tags=["users"])
    add("/users/batch", get_users, methods=["GET"], response_model=BatchUsers)
    add(
        "/users/batch",
        create_users,
        methods=["POST"],
        status_code=201,
        response_model=BatchCreated,
        responses={
            201: {"links": links("$response.body#/users/0/id", *_ONE_USER)},
            **problems(409),
        },
    )
    add(
        "/users",
        create_user,
        methods=["POST"],
        status_code=201,
        response_model=User,
        responses={
            201: {
                "links": links("$response.body#/id", *_ONE_USER, *_USER_NOTIFICATIONS),
                "headers": _LOCATION,
            },
            **problems(409),
        },
    )
    add("/users/{user_id}", get_user, methods=["GET"], response_model=User, responses=problems(404))
    add(
        "/users/{user_id}",
        replace_user,
        methods=["PUT"],
        response_model=User,
        responses={
            200: {"links": links("$request.path.user_id", *_ONE_USER)},
            201: {
                "model": User,
                "description": "Created",
                "links": links("$request.path.user_id", *_ONE_USER),
                "headers": _LOCATION,
            },
            **problems(409),
        },
    )
    add(
        "/users/{user_id}",
        patch_user,
        methods=["PATCH"],
        response_model=User,
        responses={
            200: {"links": links("$response.body#/id", *_ONE_USER)},
            **problems(404, 409),
        },
    )
    add(
        "/users/{user_id}",
        delete_user,
        methods=["DELETE"],
        status_code=204,
        response_class=Response,
        responses={
            204: {"links": links("$request.path.user_id", "get_user")},
            **problems(404, 409),
        },
    )


#: The operations on one user, and on its notifications (operation ids: the functions').
_ONE_USER = ("get_user", "replace_user", "patch_user", "delete_user")
_USER_NOTIFICATIONS = ("notify", "inbox")
_LOCATION = {"Location": {"description": "Where the new user is.", "schema": {"type": "string"}}}
