"""The Users routes. ``/users/batch`` is declared before ``/users/{user_id}`` so the
parameterised route can never shadow it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic_core import to_json

from api.users.dependencies import users_service
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
from api.users.service import UsersService

__all__ = ["router"]

router = APIRouter(prefix="/users", tags=["users"])

Service = Annotated[UsersService, Depends(users_service)]
PathId = Annotated[int, Path(ge=1, le=2**53 - 1, description="The user's id")]


def _json(data: Any) -> Response:
    """The hot read paths answer with what the service built from stored, validated users,
    skipping FastAPI's validate-then-serialize pass (response_model still documents it)."""
    return Response(to_json(data), media_type="application/json")


@router.get("/batch", response_model=BatchUsers)
async def get_users(
    service: Service,
    user_ids: Annotated[list[UserId], Query(min_length=1, max_length=MAX_BATCH)],
) -> Response:
    users, missing = await service.get_many(user_ids)
    return _json({"users": users, "missing": missing})


@router.post("/batch", status_code=201, response_model=BatchCreated)
async def create_users(service: Service, body: BatchCreate) -> dict[str, Any]:
    return {"users": await service.create_many(body.users)}


@router.post("", status_code=201, response_model=User)
async def create_user(service: Service, body: UserFields, response: Response) -> dict[str, Any]:
    user = await service.create(body)
    response.headers["Location"] = f"/users/{user['id']}"
    return user


@router.get("/{user_id}", response_model=User)
async def get_user(service: Service, user_id: PathId) -> Response:
    return _json(await service.get(user_id))


@router.put("/{user_id}", response_model=User, responses={201: {"model": User}})
async def replace_user(
    service: Service, user_id: PathId, body: UserFields, response: Response
) -> dict[str, Any]:
    user, created = await service.replace(user_id, body)
    if created:
        response.status_code = 201
        response.headers["Location"] = f"/users/{user_id}"
    return user


@router.patch("/{user_id}", response_model=User)
async def patch_user(service: Service, user_id: PathId, body: UserPatch) -> dict[str, Any]:
    return await service.patch(user_id, body)


@router.delete("/{user_id}", status_code=204, response_class=Response)
async def delete_user(service: Service, user_id: PathId) -> Response:
    await service.delete(user_id)
    return Response(status_code=204)
