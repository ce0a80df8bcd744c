"""API Gateway's JWT authorizer, locally: a signing key, tokens, and their verification.

An HTTP API route with a JWT authorizer is checked by API Gateway before its function runs:

1. the token comes from the identity source (``$request.header.Authorization``), with or
   without a ``Bearer`` prefix; none at all is a 401;
2. it must be a JWS signed with RS256 (only RSA algorithms are accepted: ``none`` and HS256
   are refused) by the issuer's key that its ``kid`` names;
3. ``iss`` must be the authorizer's issuer; ``aud`` (or ``client_id`` when there is no
   ``aud``) one of its audiences; ``exp`` in the future, ``nbf`` and ``iat`` not;
4. when the route has ``AuthorizationScopes``, the token's ``scope`` (space-separated) or
   ``scp`` claim must hold at least one of them, else 403.

Refusals are API Gateway's own answers: 401 ``{"message":"Unauthorized"}`` with a
``www-authenticate`` header, 403 ``{"message":"Forbidden"}``. An accepted token's claims reach
the function as ``requestContext.authorizer.jwt`` (see ``render_claims`` for their shape).

Locally there is one issuer: a key pair kept in the stack's state folder (``.lambdaloop/``
beside the template), its issuer ``LOCAL_ISSUER`` and audience ``LOCAL_AUDIENCE``. Every JWT
authorizer of the template is verified against it: the template's own ``JwtConfiguration``
(a Cognito pool or the user's identity provider) is not resolved, as the emulator runs offline.
``lambdaloop token`` mints tokens with the same key.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import RSAKey
from joserfc.jwt import JWTClaimsRegistry

from lambdaloop_local.template import Template, TemplateError, merge_globals

__all__ = [
    "DEFAULT_TTL_S",
    "KEY_FILE_NAME",
    "LOCAL_AUDIENCE",
    "LOCAL_ISSUER",
    "Authorized",
    "InvalidTokenError",
    "JwtAuthorizer",
    "Refusal",
    "RouteAuth",
    "SigningKey",
    "render_claims",
    "route_auth",
    "template_scopes",
]

logger = logging.getLogger(__name__)

LOCAL_ISSUER = "https://lambdaloop.local"
LOCAL_AUDIENCE = "lambdaloop-local"
#: The private key (PEM, mode 0600) in the stack's state folder.
KEY_FILE_NAME = "jwt-signing-key.pem"
DEFAULT_TTL_S = 3600

#: The only algorithm family API Gateway's JWT authorizer accepts is RSA; the local key signs
#: with RS256.
_ALGORITHMS = ("RS256",)
_KEY_BITS = 2048
_DEFAULT_IDENTITY_SOURCE = "$request.header.Authorization"
_BEARER = "bearer "
#: What SAM calls a route that opts out of the API's default authorizer.
_NO_AUTHORIZER = "NONE"
#: The one ``error_description`` AWS documents (``http-api-troubleshooting-jwt``), in the
#: layout it documents: ``Bearer scope="" error="invalid_token" error_description="..."``.
#: The other descriptions below are the emulator's wording, in the same layout.
_INVALID_AUDIENCE = "the token does not have a valid audience"
_TIME_CLAIM_ERRORS = {
    "exp": "the token's exp is not a NumericDate",
    "nbf": "the token is not valid yet",
    "iat": "the token was issued in the future",
}


# ------------------------------------------------------------------------------ the template


@dataclass(frozen=True, slots=True)
class RouteAuth:
    """A route's JWT authorizer, as the template declares it."""

    authorizer: str
    #: Where the token is: ``$request.header.<name>`` or ``$request.querystring.<name>``.
    identity_source: str = _DEFAULT_IDENTITY_SOURCE
    #: ``AuthorizationScopes``: the token needs one of them; empty = any valid token.
    scopes: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.authorizer} [{' '.join(self.scopes)}]" if self.scopes else self.authorizer


def _api_properties(template: Template, api_id: Any) -> dict[str, Any]:
    """The HttpApi's properties with ``Globals.HttpApi`` applied (the implicit API, without
    an ``ApiId``, has only the globals)."""
    globals_: dict[str, Any] = (template.body.get("Globals") or {}).get("HttpApi") or {}
    if api_id is None:
        return dict(globals_)
    name = api_id.get("Ref") if isinstance(api_id, dict) else None
    resource = template.resources.get(name) if isinstance(name, str) else None
    if resource is None or resource.get("Type") != "AWS::Serverless::HttpApi":
        raise TemplateError(f"ApiId {api_id!r} is not a Ref to an AWS::Serverless::HttpApi")
    merged: dict[str, Any] = merge_globals(globals_, resource.get("Properties") or {})
    return merged


def route_auth(template: Template, event_properties: Mapping[str, Any]) -> RouteAuth | None:
    """The JWT authorizer of one ``HttpApi`` event, as SAM resolves it: the event's
    ``Auth.Authorizer``, else the API's ``DefaultAuthorizer``; ``NONE`` (or no authorizer at
    all) is a public route. The event's ``AuthorizationScopes`` win over the authorizer's."""
    api_auth: dict[str, Any] = (
        _api_properties(template, event_properties.get("ApiId")).get("Auth") or {}
    )
    event_auth: Mapping[str, Any] = event_properties.get("Auth") or {}
    name = event_auth.get("Authorizer", api_auth.get("DefaultAuthorizer"))
    if name is None or name == _NO_AUTHORIZER:
        return None
    spec = (api_auth.get("Authorizers") or {}).get(name)
    if not isinstance(spec, dict):
        raise TemplateError(f"authorizer {name!r} is not among the HttpApi's Auth.Authorizers")
    if "JwtConfiguration" not in spec:
        raise TemplateError(
            f"authorizer {name!r}: only JWT authorizers (JwtConfiguration) are emulated locally"
        )
    scopes = event_auth.get("AuthorizationScopes", spec.get("AuthorizationScopes") or [])
    if not (isinstance(scopes, list) and all(isinstance(s, str) for s in scopes)):
        raise TemplateError(f"authorizer {name!r}: AuthorizationScopes must be a list of strings")
    identity = spec.get("IdentitySource", _DEFAULT_IDENTITY_SOURCE)
    if not isinstance(identity, str) or not identity.startswith(
        ("$request.header.", "$request.querystring.")
    ):
        raise TemplateError(
            f"authorizer {name!r}: IdentitySource {identity!r} is not supported locally "
            "(a $request.header.* or $request.querystring.* is)"
        )
    return RouteAuth(authorizer=str(name), identity_source=identity, scopes=tuple(scopes))


def template_scopes(template: Template) -> list[str]:
    """Every scope some route of the template asks for (what ``lambdaloop token`` grants when
    it is given none)."""
    scopes: set[str] = set()
    for function in template.functions():
        for event in function.events.values():
            if event.get("Type") == "HttpApi":
                auth = route_auth(template, event.get("Properties") or {})
                scopes.update(auth.scopes if auth else ())
    return sorted(scopes)


# ------------------------------------------------------------------------------ the key


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The local issuer's RSA key (private for minting, public is enough to verify)."""

    key: RSAKey

    @property
    def kid(self) -> str:
        """The key's RFC 7638 thumbprint: what a token's ``kid`` header must name."""
        return self.key.thumbprint()

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(RSAKey.generate_key(_KEY_BITS, private=True))

    @classmethod
    def load_or_create(cls, folder: Path) -> SigningKey:
        """The key in ``folder`` (the stack's state folder), made there on first use.

        Creation is safe against a concurrent one (``lambdaloop dev`` and ``lambdaloop token``
        started together): each writes its own temporary file (mode 0600) and links it to the
        final name, which fails if the name exists, so the first key written is the key
        everybody reads, and a token minted before ``dev`` starts is accepted by it.
        """
        path = folder / KEY_FILE_NAME
        if not path.exists():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            pem = cls.generate().key.as_pem(private=True)
            descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".jwt-key-")  # 0600
            try:
                with os.fdopen(descriptor, "wb") as file:
                    file.write(pem)
                os.link(temporary, path)
                logger.info("made the local JWT signing key %s", path)
            except FileExistsError:
                pass  # another process made it first: use that one
            finally:
                os.unlink(temporary)
        try:
            key = RSAKey.import_key(path.read_bytes())
        except (JoseError, ValueError, TypeError):
            key = None
        if key is None or not key.is_private:
            raise TemplateError(f"{path} is not an RSA private key (delete it to make a new one)")
        return cls(key)

    def mint(
        self,
        subject: str,
        scopes: Sequence[str] = (),
        ttl_s: int = DEFAULT_TTL_S,
        *,
        now: int | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A bearer token for ``subject``, valid for ``ttl_s`` seconds from ``now``, shaped like
        an OAuth 2.0 access token (``scope`` space-separated, as Cognito writes it).
        ``claims`` are added over the defaults (tests use it to break one)."""
        issued = int(time.time()) if now is None else now
        payload: dict[str, Any] = {
            "iss": LOCAL_ISSUER,
            "sub": subject,
            "aud": LOCAL_AUDIENCE,
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl_s,
            "jti": uuid.uuid4().hex,
            "token_use": "access",
        }
        if scopes:
            payload["scope"] = " ".join(scopes)
        payload.update(claims or {})
        return jwt.encode({"alg": _ALGORITHMS[0], "kid": self.kid}, payload, self.key)


# ------------------------------------------------------------------------------ verification


@dataclass(frozen=True, slots=True)
class Refusal:
    """API Gateway's own answer to a request its authorizer refused."""

    status: int
    message: str
    #: Why, for the log (and the www-authenticate header of a 401).
    reason: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def body(self) -> str:
        return json.dumps({"message": self.message}, separators=(",", ":"))

    def as_result(self) -> dict[str, Any]:
        """The refusal in the shape of a payload-2.0 response (what ``invoke`` prints)."""
        return {
            "statusCode": self.status,
            "headers": {"content-type": "application/json", **self.headers},
            "body": self.body,
            "isBase64Encoded": False,
        }


def _unauthorized(description: str | None) -> Refusal:
    if description is None:  # no token at all: nothing to call invalid
        return Refusal(401, "Unauthorized", "no token", {"www-authenticate": "Bearer"})
    challenge = f'Bearer scope="" error="invalid_token" error_description="{description}"'
    return Refusal(401, "Unauthorized", description, {"www-authenticate": challenge})


_FORBIDDEN = Refusal(403, "Forbidden", "the token has none of the route's scopes")


@dataclass(frozen=True, slots=True)
class Authorized:
    """A verified token: what API Gateway puts in ``requestContext.authorizer``."""

    claims: dict[str, str]
    scopes: list[str] | None

    def context(self) -> dict[str, Any]:
        return {"jwt": {"claims": self.claims, "scopes": self.scopes}}


class InvalidTokenError(Exception):
    """A token the authorizer does not accept; the message is the error_description."""


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_render(item) for item in value if item is not None) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def render_claims(claims: Mapping[str, Any]) -> dict[str, str]:
    """Claims as API Gateway's payload 2.0 delivers them: every value a string. Numbers and
    booleans are stringified (``"exp": "1700000000"``, ``"true"``), an array is its items
    space-separated in brackets (``cognito:groups`` -> ``"[admin ops]"``, the way Go prints a
    slice: not JSON), a null claim is left out, an object is its JSON text. These are shapes
    measured on real HTTP APIs (floci-io/floci#2011, KensioSoftware/yulin's simulator)."""
    return {name: _render(value) for name, value in claims.items() if value is not None}


def _token_scopes(claims: Mapping[str, Any]) -> list[str] | None:
    """The token's scopes: ``scope`` (space-separated, or a list), else ``scp``; None when it
    carries neither."""
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str) and value.strip():
            return value.split()
        if isinstance(value, list) and value:
            return [str(item) for item in value]
    return None


def _identity(event: Mapping[str, Any], identity_source: str) -> str | None:
    """The identity source's value in a payload-2.0 event (headers matched without case, as
    an event file may spell them ``Authorization``)."""
    kind, _, name = identity_source.removeprefix("$request.").partition(".")
    source = event.get("headers" if kind == "header" else "queryStringParameters") or {}
    wanted = name.lower() if kind == "header" else name
    for key, value in source.items():
        if (str(key).lower() if kind == "header" else key) == wanted:
            return str(value)
    return None


def _bearer_token(value: str | None) -> str | None:
    """The token, with or without its ``Bearer`` prefix; None when there is none."""
    if value is None:
        return None
    token = value.strip()
    if token.lower().startswith(_BEARER):
        token = token[len(_BEARER) :].strip()
    return token or None


class JwtAuthorizer:
    """Verifies tokens as API Gateway's JWT authorizer does, against the local issuer."""

    def __init__(
        self,
        key: SigningKey,
        *,
        issuer: str = LOCAL_ISSUER,
        audiences: Collection[str] = (LOCAL_AUDIENCE,),
        now: Callable[[], int] | None = None,
    ) -> None:
        self._key = key
        self._issuer = issuer
        self._audiences = frozenset(audiences)
        self._now = now

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this authorizer accepts; ``InvalidTokenError`` otherwise."""
        try:
            # The key is the issuer's key that the token's kid names (API Gateway looks it up
            # in the issuer's JWKS): an unknown kid is refused before any signature check.
            if jws.extract_compact(token.encode()).headers().get("kid") != self._key.kid:
                raise InvalidTokenError("the token's kid is not a key of the issuer")
            claims = jwt.decode(token, self._key.key, algorithms=_ALGORITHMS).claims
        except UnsupportedAlgorithmError:
            raise InvalidTokenError("the token is not signed with RS256") from None
        except BadSignatureError:
            raise InvalidTokenError("the token's signature is invalid") from None
        except (JoseError, ValueError, TypeError):  # UnicodeError is a ValueError
            raise InvalidTokenError("the token is not a valid JWT") from None
        if claims.get("iss") != self._issuer:
            raise InvalidTokenError("the token does not have a valid issuer")
        if not self._audiences.intersection(_audiences_of(claims)):
            raise InvalidTokenError(_INVALID_AUDIENCE)
        try:
            JWTClaimsRegistry(now=self._now, exp={"essential": True}).validate(claims)
        except ExpiredTokenError:
            raise InvalidTokenError("the token has expired") from None
        except MissingClaimError:
            raise InvalidTokenError("the token has no exp") from None
        except ClaimError as exc:
            raise InvalidTokenError(
                _TIME_CLAIM_ERRORS.get(exc.claim, "the token is not valid")
            ) from None
        return claims

    def authorize(self, route: RouteAuth, event: Mapping[str, Any]) -> Authorized | Refusal:
        """The authorizer's decision on a payload-2.0 event for ``route``."""
        token = _bearer_token(_identity(event, route.identity_source))
        if token is None:
            return _unauthorized(None)
        try:
            claims = self.verify(token)
        except InvalidTokenError as exc:
            return _unauthorized(str(exc))
        scopes = _token_scopes(claims)
        if route.scopes and not set(route.scopes).intersection(scopes or ()):
            return _FORBIDDEN
        # API Gateway fills jwt.scopes only on routes that ask for scopes (with the token's
        # whole list), and leaves it null elsewhere, even for a token that has scopes.
        return Authorized(render_claims(claims), scopes if route.scopes else None)


def _audiences_of(claims: Mapping[str, Any]) -> Iterable[str]:
    """``aud`` (a string or a list), or ``client_id`` only when there is no ``aud`` (what
    Cognito access tokens carry)."""
    if "aud" in claims:
        audience = claims["aud"]
        if isinstance(audience, str):
            return (audience,)
        return [a for a in audience if isinstance(a, str)] if isinstance(audience, list) else ()
    client_id = claims.get("client_id")
    return (client_id,) if isinstance(client_id, str) else ()
