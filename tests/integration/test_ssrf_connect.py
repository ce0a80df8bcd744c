"""The SSRF guard against real loopback servers: refused before the server sees a request,
allowed in local mode, and checked again on every redirect hop."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import TypeVar

import aiohttp
import pytest
import yarl
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from lambdaloop.ssrf import Blocked, Policy, guarded_connector
from support import LoopbackHttpServer, run

#: How this Python spells ::ffff:127.0.0.1 (3.13 keeps the dotted quad, 3.11 does not).
MAPPED_LOOPBACK = str(ipaddress.ip_address("::ffff:127.0.0.1"))

T = TypeVar("T")
TIMEOUT = aiohttp.ClientTimeout(total=2)


class Site:
    """A loopback server: ``GET /hello`` (counted) and ``GET /to?url=...`` (a 302 there)."""

    def __init__(self) -> None:
        self.server = LoopbackHttpServer(self._routes)

    def _routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/hello", self._hello)
        router.add_get("/to", self._redirect)

    async def _hello(self, request: web.Request) -> web.Response:
        self.server.requests += 1
        return web.Response(text="hello")

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["url"])

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def requests(self) -> int:
        return self.server.requests

    def redirect(self, target: str) -> str:
        return str(yarl.URL(f"{self.server.url}/to").with_query(url=target))


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    front = Site()
    with front.server:
        yield front


@pytest.fixture(scope="module")
def other() -> Iterator[Site]:
    second = Site()
    with second.server:
        yield second


class AliasResolver(AbstractResolver):
    """Resolves ``*.test`` names from a table (a stand-in for a DNS record an attacker set)."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.table:
            raise OSError(f"no such host {host}")
        return [
            ResolveResult(
                hostname=host,
                host=self.table[host],
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


def get(url: str, policy: Policy, resolver: AbstractResolver | None = None) -> int | Blocked:
    """The status of ``GET url`` through a guarded connector, or the Blocked it raised."""

    async def once() -> int | Blocked:
        extra = {} if resolver is None else {"resolver": resolver}
        connector = guarded_connector(policy, **extra)
        async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
            try:
                async with session.get(url) as response:
                    await response.read()
                    return response.status
            except Blocked as exc:
                return exc

    return run(once())


def local(site: Site, *denied: str) -> Policy:
    """A local-mode policy allowing loopback on the site's port, denying ``denied``."""
    return Policy(
        allow_loopback=True,
        ports=frozenset({site.port}),
        denied_networks=tuple(ipaddress.ip_network(network) for network in denied),
    )


def test_a_deployed_policy_never_connects_to_a_loopback_server(site: Site) -> None:
    # Given the server's port is allowed, but loopback is not (as in every deployed stack)
    policy = Policy(ports=frozenset({site.port}))
    before = site.requests

    # When the server is requested, by address and by a name resolving to it
    by_address = get(f"{site.server.url}/hello", policy)
    by_name = get(
        f"http://front.test:{site.port}/hello", policy, AliasResolver({"front.test": "127.0.0.1"})
    )

    # Then both are refused as Blocked, and the server saw nothing
    assert isinstance(by_address, Blocked)
    assert by_address.reason == "loopback address 127.0.0.1"
    assert isinstance(by_name, Blocked)
    assert by_name.url == f"http://front.test:{site.port}/hello"
    assert site.requests == before


def test_local_mode_reaches_a_loopback_server_on_an_allowed_port(site: Site) -> None:
    before = site.requests

    status = get(f"{site.server.url}/hello", local(site))

    assert status == 200
    assert site.requests == before + 1


def test_a_redirect_to_an_allowed_address_is_followed(site: Site) -> None:
    # Given a redirect to a name that resolves to the same loopback server
    resolver = AliasResolver({"alias.test": "127.0.0.1"})
    before = site.requests

    status = get(site.redirect(f"http://alias.test:{site.port}/hello"), local(site), resolver)

    assert status == 200
    assert site.requests == before + 1


def test_a_redirect_to_a_port_outside_the_policy_is_blocked_at_the_hop(
    site: Site, other: Site
) -> None:
    # Given two live servers, only the first one's port allowed
    target = f"{other.server.url}/hello"
    before = other.requests

    # When the first redirects to the second
    result = get(site.redirect(target), local(site))

    # Then the hop is refused and the second server saw no request
    assert isinstance(result, Blocked)
    assert (result.url, result.reason) == (target, f"port {other.port} is not allowed")
    assert other.requests == before


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://internal.test:{port}/hello", "denied network 127.0.0.2/32"),
        ("http://127.0.0.2:{port}/hello", "denied network 127.0.0.2/32"),
        ("http://metadata.test:{port}/latest", "link-local address 169.254.169.254"),
        ("http://169.254.169.254:{port}/latest", "link-local address 169.254.169.254"),
        ("http://[::ffff:127.0.0.1]:{port}/hello", f"IPv4-mapped address {MAPPED_LOOPBACK}"),
        ("http://10.0.0.5:{port}/hello", "private address 10.0.0.5"),
    ],
)
def test_a_redirect_to_a_refused_address_is_blocked_at_the_hop(
    site: Site, target: str, reason: str
) -> None:
    # Given a local-mode policy that also denies 127.0.0.2 (say, where Redis listens), and
    # names an attacker points at refused addresses
    policy = local(site, "127.0.0.2/32")
    resolver = AliasResolver({"internal.test": "127.0.0.2", "metadata.test": "169.254.169.254"})
    hop = target.format(port=site.port)

    # When an allowed server redirects there
    result = get(site.redirect(hop), policy, resolver)

    # Then the hop is refused with Blocked naming it, before any connection is made
    assert isinstance(result, Blocked)
    assert result.url == str(yarl.URL(hop))
    assert reason in result.reason


def test_a_legacy_numeric_redirect_target_is_judged_by_the_address_it_resolves_to(
    site: Site,
) -> None:
    # Given the system resolver, which reads "0x7f.0.0.2" as 127.0.0.2 (glibc inet_aton)
    try:
        resolved = socket.getaddrinfo("0x7f.0.0.2", site.port, socket.AF_INET)[0][4][0]
    except OSError:
        pytest.skip("this resolver does not read hex IPv4 hosts")
    assert resolved == "127.0.0.2"
    policy = local(site, "127.0.0.2/32")

    # When a redirect goes to that spelling (aiohttp sends it to the resolver, not being a
    # canonical address)
    result = get(site.redirect(f"http://0x7f.0.0.2:{site.port}/hello"), policy)

    # Then the resolved address is checked and refused
    assert isinstance(result, Blocked)
    assert "denied network 127.0.0.2/32" in result.reason
