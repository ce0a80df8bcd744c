"""Who is calling: the tenant API Gateway's JWT authorizer verified, and nothing else.

API Gateway checks the token (signature, issuer, audience, expiry) and the route's scopes,
then puts the claims in ``requestContext.authorizer.jwt.claims``; the caller is the ``sub``
claim. Headers and bodies are never read for identity: anyone can write them. A request that
reaches a tenant route without claims (a route left without its authorizer) is refused, not
served as somebody.

Each route names the scope its authorizer requires (template.yaml sets the same scopes as
``AuthorizationScopes``), so the OpenAPI schema documents them and ``/docs`` can authorize.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Request, Security
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from api.errors import Unauthorized
from lambdaloop.tenancy import claims_tenant

__all__ = [
    "GatewayJwt",
    "JobsRead",
    "JobsWrite",
    "NotificationsRead",
    "NotificationsWrite",
    "UsersRead",
    "UsersWrite",
    "caller",
]


class GatewayJwt(SecurityBase):
    """The bearer scheme as OpenAPI shows it; the caller as API Gateway verified it."""

    def __init__(self) -> None:
        self.model = HTTPBearerModel(
            bearerFormat="JWT",
            description="An access token from the stack's issuer (lambdaloop token SUBJECT "
            "locally); each operation lists the scopes it needs.",
        )
        self.scheme_name = "bearerAuth"

    async def __call__(self, request: Request) -> str:
        tenant = claims_tenant(request.scope.get("aws.event") or {})
        if tenant is None:
            raise Unauthorized("The request carries no verified caller")
        return tenant


caller = GatewayJwt()

UsersRead = Annotated[str, Security(caller, scopes=["lambdaloop/users.read"])]
UsersWrite = Annotated[str, Security(caller, scopes=["lambdaloop/users.write"])]
NotificationsRead = Annotated[str, Security(caller, scopes=["lambdaloop/notifications.read"])]
NotificationsWrite = Annotated[str, Security(caller, scopes=["lambdaloop/notifications.write"])]
JobsRead = Annotated[str, Security(caller, scopes=["lambdaloop/jobs.read"])]
JobsWrite = Annotated[str, Security(caller, scopes=["lambdaloop/jobs.write"])]
