"""The local API Gateway's JWT authorizer: the real aiohttp gateway on loopback, routes read
from a template with the HttpApi ``Auth`` contract, and a function that counts invocations.

Every refused token must be refused before the function runs (401 or 403, API Gateway's own
answers); an accepted one reaches the function with its claims where API Gateway puts them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwt
from multidict import CIMultiDict

from lambdaloop_local.apigw import HttpRoute, http_api_routes, make_app
from lambdaloop_local.auth import (
    KEY_FILE_NAME,
    LOCAL_AUDIENCE,
    LOCAL_ISSUER,
    JwtAuthorizer,
    RouteAuth,
    SigningKey,
    template_scopes,
)
from lambdaloop_local.template import Template, TemplateError, load_template

KEY = SigningKey.generate()
OTHER_KEY = SigningKey.generate()
READ = "lambdaloop/users.read"
WRITE = "lambdaloop/users.write"

#: The HttpApi ``Auth`` contract of template.yaml, in a template of its own: the issuer and
#: audience are intrinsics the emulator does not resolve (it verifies with its local issuer).
CONTRACT: dict[str, Any] = {
    "Resources": {
        "HttpApi": {
            "Type": "AWS::Serverless::HttpApi",
            "Properties": {
                "Auth": {
                    "DefaultAuthorizer": "JwtAuthorizer",
                    "Authorizers": {
                        "JwtAuthorizer": {
                            "IdentitySource": "$request.header.Authorization",
                            "JwtConfiguration": {
                                "issuer": {"Fn::If": ["CreateUserPool", "a", "b"]},
                                "audience": {"Fn::If": ["CreateUserPool", ["c"], ["d"]]},
                            },
                        }
                    },
                }
            },
        },
        "ApiFunction": {
            "Type": "AWS::Serverless::Function",
            "Properties": {
                "CodeUri": "functions/api/",
                "Handler": "api.handler.handler",
                "Runtime": "python3.13",
                "Events": {
                    "Root": {
                        "Type": "HttpApi",
                        "Properties": {
                            "ApiId": {"Ref": "HttpApi"},
                            "Path": "/",
                            "Method": "GET",
                            "Auth": {"Authorizer": "NONE"},
                        },
                    },
                    "GetUser": {
                        "Type": "HttpApi",
                        "Properties": {
                            "ApiId": {"Ref": "HttpApi"},
                            "Path": "/users/{user_id}",
                            "Method": "GET",
                            "Auth": {"AuthorizationScopes": [READ]},
                        },
                    },
                    "PutUser": {
                        "Type": "HttpApi",
                        "Properties": {
                            "ApiId": {"Ref": "HttpApi"},
                            "Path": "/users/{user_id}",
                            "Method": "PUT",
                            "Auth": {"Authorizer": "JwtAuthorizer", "AuthorizationScopes": [WRITE]},
                        },
                    },
                    # No Auth: the API's default authorizer, no scopes.
                    "Proxy": {
                        "Type": "HttpApi",
                        "Properties": {
                            "ApiId": {"Ref": "HttpApi"},
                            "Path": "/{proxy+}",
                            "Method": "ANY",
                        },
                    },
                },
            },
        },
    }
}


def _template(body: Mapping[str, Any]) -> Template:
    return Template(path=Path(__file__).resolve().parents[2] / "template.yaml", body=dict(body))


ROUTES = http_api_routes(_template(CONTRACT))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims for alice with both user scopes; a change to None drops the claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": LOCAL_ISSUER,
        "sub": "alice",
        "aud": LOCAL_AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "scope": f"{READ} {WRITE}",
    }
    for name, value in changes.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def sign(payload: Mapping[str, Any], key: SigningKey = KEY, kid: str | None = None) -> str:
    return jwt.encode({"alg": "RS256", "kid": kid or key.kid}, dict(payload), key.key)


def unsigned(payload: Mapping[str, Any]) -> str:
    """``alg: none``: a token with no signature at all."""
    header = {"alg": "none", "typ": "JWT", "kid": KEY.kid}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}."


def hs256_with_public_key(payload: Mapping[str, Any]) -> str:
    """The algorithm-confusion attack: HS256 keyed with the issuer's public key (PEM)."""
    header = {"alg": "HS256", "typ": "JWT", "kid": KEY.kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    secret = KEY.key.as_pem(private=False)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


class Gateway:
    """The real gateway app on 127.0.0.1 in front of a function that records its events."""

    def __init__(self, routes: list[HttpRoute] = ROUTES) -> None:
        self.routes = routes
        self.events: list[dict[str, Any]] = []

    async def _invoke(self, function: str, event: dict[str, Any]) -> Any:
        self.events.append(event)
        return {"statusCode": 200, "body": json.dumps({"function": function})}

    def request(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Mapping[str, str], Any]:
        async def scenario() -> tuple[int, Mapping[str, str], Any]:
            app = make_app(self.routes, self._invoke, JwtAuthorizer(KEY))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.request(
                        method, f"http://127.0.0.1:{port}{path}", headers=dict(headers or {})
                    ) as response,
                ):
                    return (
                        response.status,
                        CIMultiDict(response.headers),
                        await response.json(content_type=None),
                    )
            finally:
                await runner.cleanup()

        return asyncio.run(scenario())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


REFUSED: list[tuple[str, Callable[[], dict[str, str]], int, str]] = [
    ("no token", dict, 401, "Bearer"),
    ("empty bearer", lambda: {"Authorization": "Bearer "}, 401, "Bearer"),
    ("malformed", lambda: bearer("not.a-jwt"), 401, "not a valid JWT"),
    ("not base64", lambda: bearer("@@@.###.$$$"), 401, "not a valid JWT"),
    (
        "wrong signature (another RSA key, our kid)",
        lambda: bearer(sign(claims(), key=OTHER_KEY, kid=KEY.kid)),
        401,
        "signature is invalid",
    ),
    ("another issuer's key and kid", lambda: bearer(sign(claims(), OTHER_KEY)), 401, "kid"),
    ("alg none", lambda: bearer(unsigned(claims())), 401, "not signed with RS256"),
    (
        "HS256 keyed with the public key",
        lambda: bearer(hs256_with_public_key(claims())),
        401,
        "not signed with RS256",
    ),
    ("expired", lambda: bearer(sign(claims(exp=int(time.time()) - 60))), 401, "has expired"),
    ("no exp", lambda: bearer(sign(claims(exp=None))), 401, "no exp"),
    (
        "not yet valid (nbf)",
        lambda: bearer(sign(claims(nbf=int(time.time()) + 3600))),
        401,
        "not valid yet",
    ),
    (
        "issued in the future (iat)",
        lambda: bearer(sign(claims(iat=int(time.time()) + 3600))),
        401,
        "issued in the future",
    ),
    (
        "wrong issuer",
        lambda: bearer(sign(claims(iss="https://cognito-idp.example.com/pool"))),
        401,
        "valid issuer",
    ),
    (
        "wrong audience",
        lambda: bearer(sign(claims(aud="another-api"))),
        401,
        'error="invalid_token" error_description="the token does not have a valid audience"',
    ),
    (
        "aud wins over a right client_id",
        lambda: bearer(sign(claims(aud="another-api", client_id=LOCAL_AUDIENCE))),
        401,
        "valid audience",
    ),
    ("no aud and no client_id", lambda: bearer(sign(claims(aud=None))), 401, "valid audience"),
    (
        "missing scope",
        lambda: bearer(sign(claims(scope="lambdaloop/jobs.read lambdaloop/users.readonly"))),
        403,
        "",
    ),
    ("no scope claim at all", lambda: bearer(sign(claims(scope=None))), 403, ""),
]


@pytest.mark.parametrize(
    ("headers", "status", "challenge"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_refused_tokens_never_reach_the_function(
    headers: Callable[[], dict[str, str]], status: int, challenge: str
) -> None:
    gateway = Gateway()

    answer, response_headers, body = gateway.request("GET", "/users/1", headers())

    assert (answer, body) == (
        (401, {"message": "Unauthorized"}) if status == 401 else (403, {"message": "Forbidden"})
    )
    assert gateway.events == []
    if status == 401:
        assert challenge in response_headers["www-authenticate"]
    else:
        assert "www-authenticate" not in response_headers


ACCEPTED: list[tuple[str, str, str, Callable[[], dict[str, str]]]] = [
    ("public route, no token", "GET", "/", dict),
    ("public route, a bad token is not looked at", "GET", "/", lambda: bearer("junk")),
    ("the route's scope", "GET", "/users/1", lambda: bearer(sign(claims()))),
    ("no Bearer prefix", "GET", "/users/1", lambda: {"Authorization": sign(claims())}),
    ("lower-case bearer", "GET", "/users/1", lambda: {"authorization": f"bearer {sign(claims())}"}),
    ("one of several scopes", "PUT", "/users/1", lambda: bearer(sign(claims(scope=WRITE)))),
    (
        "scp instead of scope",
        "GET",
        "/users/1",
        lambda: bearer(sign(claims(scope=None, scp=[READ]))),
    ),
    (
        "client_id when there is no aud",
        "GET",
        "/users/1",
        lambda: bearer(sign(claims(aud=None, client_id=LOCAL_AUDIENCE))),
    ),
    ("aud as a list", "GET", "/users/1", lambda: bearer(sign(claims(aud=["x", LOCAL_AUDIENCE])))),
    (
        "default authorizer, no scopes",
        "POST",
        "/anything",
        lambda: bearer(sign(claims(scope=None))),
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_accepted_requests_reach_the_function_once(
    method: str, path: str, headers: Callable[[], dict[str, str]]
) -> None:
    gateway = Gateway()

    status, _, body = gateway.request(method, path, headers())

    assert (status, body) == (200, {"function": "ApiFunction"})
    assert len(gateway.events) == 1


def test_the_claims_arrive_as_api_gateway_renders_them() -> None:
    # Given a token with claims of every JSON type
    gateway = Gateway()
    payload = claims(
        sub="alice",
        groups=["admin", "ops"],
        email_verified=True,
        tenant={"tier": "gold"},
        nickname=None,
        scope=f"{READ} lambdaloop/jobs.read",
    )

    # When it calls a route that asks for a scope, and one that asks for none
    status, _, _ = gateway.request("GET", "/users/7", bearer(sign(payload)))
    proxy_status, _, _ = gateway.request("GET", "/users/7/other", bearer(sign(payload)))

    # Then every claim is a string (arrays Go-style, null claims left out), and jwt.scopes is
    # the token's whole list on the scoped route and null on the other
    assert (status, proxy_status) == (200, 200)
    [scoped, unscoped] = [event["requestContext"]["authorizer"] for event in gateway.events]
    assert scoped == {
        "jwt": {
            "claims": {
                "iss": LOCAL_ISSUER,
                "sub": "alice",
                "aud": LOCAL_AUDIENCE,
                "iat": str(payload["iat"]),
                "nbf": str(payload["nbf"]),
                "exp": str(payload["exp"]),
                "scope": f"{READ} lambdaloop/jobs.read",
                "groups": "[admin ops]",
                "email_verified": "true",
                "tenant": '{"tier":"gold"}',
            },
            "scopes": [READ, "lambdaloop/jobs.read"],
        }
    }
    assert unscoped["jwt"]["claims"] == scoped["jwt"]["claims"]
    assert unscoped["jwt"]["scopes"] is None
    assert gateway.events[0]["routeKey"] == "GET /users/{user_id}"
    assert gateway.events[0]["pathParameters"] == {"user_id": "7"}


def test_a_public_route_gets_no_authorizer_even_with_a_valid_token() -> None:
    gateway = Gateway()

    gateway.request("GET", "/", bearer(sign(claims())))

    assert "authorizer" not in gateway.events[0]["requestContext"]


def test_a_token_minted_by_the_key_is_accepted() -> None:
    gateway = Gateway()
    token = KEY.mint("bob", [READ], ttl_s=60)

    status, _, _ = gateway.request("GET", "/users/1", bearer(token))

    assert status == 200
    jwt_context = gateway.events[0]["requestContext"]["authorizer"]["jwt"]
    assert jwt_context["claims"]["sub"] == "bob"
    assert int(jwt_context["claims"]["exp"]) - int(jwt_context["claims"]["iat"]) == 60
    assert jwt_context["scopes"] == [READ]


def test_routes_with_an_authorizer_need_a_jwt_authorizer() -> None:
    async def never(function: str, event: dict[str, Any]) -> Any:
        raise AssertionError("not invoked")

    with pytest.raises(ValueError, match="GET /users/"):
        make_app(ROUTES, never)


def test_the_templates_authorizers_resolve_like_sams() -> None:
    routes = {route.route_key: route.auth for route in ROUTES}

    assert routes == {
        "GET /": None,
        "GET /users/{user_id}": RouteAuth("JwtAuthorizer", scopes=(READ,)),
        "PUT /users/{user_id}": RouteAuth("JwtAuthorizer", scopes=(WRITE,)),
        "ANY /{proxy+}": RouteAuth("JwtAuthorizer"),
    }
    assert template_scopes(_template(CONTRACT)) == [READ, WRITE]


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"Authorizer": "Nope"}, "not among"),
        ({"Authorizer": "AWS_IAM"}, "not among"),
        ({"Authorizer": "LambdaAuth"}, "only JWT authorizers"),
    ],
)
def test_authorizers_the_emulator_cannot_check_fail_loudly(
    auth: dict[str, Any], message: str
) -> None:
    body = json.loads(json.dumps(CONTRACT))
    api_auth = body["Resources"]["HttpApi"]["Properties"]["Auth"]
    api_auth["Authorizers"]["LambdaAuth"] = {"FunctionArn": "arn:aws:lambda:...:function:f"}
    body["Resources"]["ApiFunction"]["Properties"]["Events"]["Root"]["Properties"]["Auth"] = auth

    with pytest.raises(TemplateError, match=message):
        http_api_routes(_template(body))


def test_template_yaml_guards_every_route_but_the_public_ones() -> None:
    # The real template through the real gateway: public routes answer without a token, and
    # the rest (the proxy too) refuse an anonymous caller without invoking anything.
    routes = http_api_routes(load_template())
    public = {route.route_key for route in routes if route.auth is None}
    gateway = Gateway(routes)

    statuses = [gateway.request("GET", path)[0] for path in ("/health", "/users/1", "/nope")]

    assert public >= {"GET /", "GET /health"}
    assert "ANY /{proxy+}" not in public
    assert statuses == [200, 401, 401]
    assert len(gateway.events) == 1


# ------------------------------------------------------------------------------ the key file


def test_the_key_is_made_once_private_and_reused(tmp_path: Path) -> None:
    state = tmp_path / ".lambdaloop"

    first = SigningKey.load_or_create(state)
    again = SigningKey.load_or_create(state)

    assert first.kid == again.kid
    assert (state / KEY_FILE_NAME).stat().st_mode & 0o777 == 0o600
    token = first.mint("alice", [READ])
    assert JwtAuthorizer(again).verify(token)["sub"] == "alice"


def test_concurrent_creations_agree_on_one_key(tmp_path: Path) -> None:
    # Given processes that all find no key and make one at the same moment
    state = tmp_path / ".lambdaloop"
    start = threading.Barrier(8)
    kids: list[str] = []

    def make() -> None:
        start.wait()
        kids.append(SigningKey.load_or_create(state).kid)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then every one of them uses the first key written, and no temporary file is left
    assert len(kids) == 8
    assert len(set(kids)) == 1
    assert os.listdir(state) == [KEY_FILE_NAME]


def test_a_damaged_key_file_is_named_not_replaced(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE_NAME).write_text("not a key")

    with pytest.raises(TemplateError, match=KEY_FILE_NAME):
        SigningKey.load_or_create(tmp_path)

    assert (tmp_path / KEY_FILE_NAME).read_text() == "not a key"
