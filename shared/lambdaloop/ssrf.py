"""A guard against server-side request forgery for outbound HTTP whose URL a caller chose.

Only public unicast addresses are reachable: loopback, private, link-local (the instance
metadata service included), shared, multicast, reserved and documentation ranges are refused,
as are IPv6 forms that smuggle an IPv4 address, zone ids, and any network a deployment adds
(its VPC, its Redis). :meth:`Policy.url_problem` is a cheap look at the URL before any I/O;
:func:`guarded_connector` is the authoritative check, on the address actually connected to
(DNS and redirects included). A refusal is raised as :class:`Blocked`, never wrapped in an
aiohttp error. Local mode may allow loopback (``Policy(allow_loopback=True)``); deployed
stacks never do. aiohttp is imported lazily.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lambdaloop.errors import LambdaloopError

if TYPE_CHECKING:
    import aiohttp
    import yarl
    from aiohappyeyeballs import AddrInfoType, SocketFactoryType
    from aiohttp.abc import ResolveResult
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace

__all__ = [
    "SESSION_CONNECTIONS",
    "Blocked",
    "Policy",
    "aclose_sessions",
    "guarded_connector",
    "guarded_session",
]

#: The connection limit of a :func:`guarded_session` (aiohttp's default, 100, would quietly
#: cap a larger fan-out below what its semaphores allow).
SESSION_CONNECTIONS = 200
# policy -> (the loop the session is bound to, the session): one per environment and policy.
_sessions: dict[Policy, tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession]] = {}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_net = ipaddress.ip_network

# IANA special-purpose ranges, first match wins. ``is_global`` is checked afterwards as well,
# but its tables change between Python releases (3.11.7 calls 192.0.0.8, 224.0.0.1 and
# fec0::1 global), so the ranges that matter are spelled out.
_IPV4_RANGES: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(cidr), label)
    for cidr, label in (
        ("0.0.0.0/8", "this-network"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
    )
)
_IPV6_RANGES: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(cidr), label)
    for cidr, label in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("::/96", "IPv4-compatible"),
        ("::ffff:0:0:0/96", "IPv4-translated"),
        ("64:ff9b:1::/48", "NAT64 local-use"),
        ("100::/64", "discard-only"),
        ("2001::/32", "Teredo"),
        ("2001::/23", "IETF protocol"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fc00::/7", "unique local (private)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
_GLOBAL_UNICAST = _net("2000::/3")
_IPV4_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_IPV6_LOOPBACK = ipaddress.IPv6Address("::1")
_SIX_TO_FOUR = _net("2002::/16")
_NAT64 = _net("64:ff9b::/96")

# The last label of a host that inet_aton or a WHATWG URL parser would read as a number.
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
_DEFAULT_PORTS = frozenset({80, 443})

# Reasons the socket factory refused an address, for the connection being made (a list
# shared with the happy-eyeballs tasks, which run in copies of the context).
_refusals: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "lambdaloop_ssrf_refusals", default=None
)


class Blocked(LambdaloopError):
    """An outbound request was refused because of where it would go.

    ``url`` is the URL refused (for a redirect, the hop's), ``reason`` a short text such as
    ``"private address 10.0.0.5"``.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"blocked {url}: {reason}")

    def __reduce__(self) -> tuple[type[Blocked], tuple[str, str]]:
        return type(self), (self.url, self.reason)


@dataclass(frozen=True, slots=True)
class Policy:
    """Where outbound requests may go.

    ``allow_loopback`` (local mode only) lets 127.0.0.0/8 and ::1 through; ``ports`` are the
    ports a URL and a connection may use (``None``: any, for local mode, where receivers
    listen on whatever port they got); ``denied_networks`` are refused on top of every
    non-public range (the VPC CIDR, the Redis endpoint...), even when loopback is allowed.
    """

    allow_loopback: bool = False
    ports: frozenset[int] | None = _DEFAULT_PORTS
    denied_networks: tuple[Network, ...] = ()

    @classmethod
    def for_user_urls(cls, local_mode: bool) -> Policy:
        """The policy for URLs users choose (webhooks, fetch jobs): public addresses on 80
        and 443; in local mode also loopback, on any port (local receivers and servers)."""
        return cls(allow_loopback=True, ports=None) if local_mode else cls()

    def address_problem(self, ip: str | Address) -> str | None:
        """Why connecting to ``ip`` is refused, or None if it is a public address.

        A string must be a canonical IPv4 or IPv6 address (brackets allowed); anything else,
        and any IPv6 address with a zone id, is refused.
        """
        if isinstance(ip, str):
            text = ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip
            try:
                address: Address = ipaddress.ip_address(text)
            except ValueError:
                return f"not a canonical IP address: {ip!r}"
        else:
            address = ip
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            return f"IPv6 address with a zone id {address}"
        embedded = _embedded_ipv4(address)
        for network in self.denied_networks:
            for candidate in (address, *embedded.values()):
                if candidate.version == network.version and candidate in network:
                    return f"address {address} is in denied network {network}"
        if isinstance(address, ipaddress.IPv6Address) and (
            address in _SIX_TO_FOUR or address in _NAT64
        ):
            kind, inner = next(iter(embedded.items()))
            problem = _range_problem(inner)
            return f"{kind} address {address} embeds {problem}" if problem else None
        problem = _range_problem(address)
        if problem and self.allow_loopback and _is_loopback(address):
            return None
        return problem

    def url_problem(self, url: str | yarl.URL) -> str | None:
        """Why requesting ``url`` is refused before any I/O, or None if it may be tried.

        A host name passes (what it resolves to is checked at connect time); a host that
        spells an IP address in any form is judged by that address.
        """
        import yarl

        try:
            parsed = url if isinstance(url, yarl.URL) else yarl.URL(url)
            port = parsed.port
        except (TypeError, ValueError) as exc:
            return f"invalid URL: {exc}"
        scheme = parsed.scheme.lower()
        if scheme not in {"http", "https"}:
            return f"scheme {scheme or '(none)'!r} is not allowed"
        host = parsed.raw_host
        if not host:
            return "URL has no host"
        if parsed.raw_user is not None or parsed.raw_password is not None:
            return "credentials in the URL are not allowed"
        if self.ports is not None and port not in self.ports:
            return f"port {port} is not allowed"
        return self._host_problem(host)

    def _host_problem(self, host: str) -> str | None:
        if ":" in host:  # an IPv6 literal; yarl keeps a zone id percent-encoded
            return self.address_problem(host.replace("%25", "%"))
        if "%" in host:
            return f"percent-encoded host {host!r}"
        name = host.rstrip(".")
        if not name:
            return f"malformed host {host!r}"
        if not _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
            return None  # a host name: checked after DNS, at connect time
        address = _legacy_ipv4(name)
        if address is None:
            return f"malformed numeric host {host!r}"
        return self.address_problem(address)

    def _connect_problem(self, host: str, port: int) -> str | None:
        """Why a connection to ``host`` (a resolved, numeric address) and ``port`` is refused."""
        if self.ports is not None and port not in self.ports:
            return f"port {port} is not allowed"
        return self.address_problem(host)


def _range_problem(address: Address) -> str | None:
    """The special-purpose range ``address`` is in, as a reason, or None if it is public."""
    ranges: tuple[tuple[Network, str], ...] = (
        _IPV4_RANGES if isinstance(address, ipaddress.IPv4Address) else _IPV6_RANGES
    )
    for network, label in ranges:
        if address in network:
            return f"{label} address {address}"
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST:
        return f"non-global-unicast address {address}"
    if not address.is_global or address.is_multicast:
        return f"non-public address {address}"
    return None


def _is_loopback(address: Address) -> bool:
    """127.0.0.0/8 or ::1 itself, not an IPv6 form of 127.x (``is_loopback`` varies by release)."""
    if isinstance(address, ipaddress.IPv4Address):
        return address in _IPV4_LOOPBACK
    return address == _IPV6_LOOPBACK


def _embedded_ipv4(address: Address) -> dict[str, ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, by the form that carries them."""
    if isinstance(address, ipaddress.IPv4Address):
        return {}
    found: dict[str, ipaddress.IPv4Address] = {}
    if address in _SIX_TO_FOUR:
        found["6to4"] = ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    elif address in _NAT64:
        found["NAT64"] = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    elif address.ipv4_mapped is not None:
        found["IPv4-mapped"] = address.ipv4_mapped
    elif address.teredo is not None:
        found["Teredo server"], found["Teredo client"] = address.teredo
    elif int(address) >> 32 == 0:
        found["IPv4-compatible"] = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return found


def _legacy_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """``text`` read the way inet_aton reads it (1 to 4 parts, each decimal, octal with a
    leading 0, or hex with 0x; the last part fills the remaining bytes), or None."""
    parts = text.split(".")
    if len(parts) > 4:
        return None
    values: list[int] = []
    for part in parts:
        value = _legacy_number(part)
        if value is None:
            return None
        values.append(value)
    *leading, last = values
    if any(value > 0xFF for value in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _legacy_number(part: str) -> int | None:
    if not part.isascii():
        return None
    lowered = part.lower()
    try:
        if lowered.startswith("0x"):
            return int(lowered[2:] or "0", 16)
        if len(lowered) > 1 and lowered.startswith("0"):
            return int(lowered, 8)
        return int(lowered, 10) if lowered.isdigit() else None
    except ValueError:
        return None


def guarded_connector(policy: Policy, **connector_kwargs: Any) -> aiohttp.TCPConnector:
    """An ``aiohttp.TCPConnector`` that refuses, with :class:`Blocked`, every connection to an
    address or port ``policy`` does not allow, checked after DNS on the address actually
    connected to, for every connection a session opens (redirect hops included).

    Two checks: every address the host resolved to (``_resolve_host``, a private method, also
    where IP-literal hosts are seen, since aiohttp does not resolve them), then the socket
    address of each connection attempt (the public ``socket_factory`` hook, once per happy
    eyeballs attempt). The second alone would hold if aiohttp stopped calling the first, but
    aiohappyeyeballs folds several failures into one ``OSError``, so refusals are recorded
    on the side and raised again as :class:`Blocked`. Proxies are refused: through one, the
    target is resolved out of reach.

    ``connector_kwargs`` go to ``TCPConnector`` (``resolver``, ``limit``, ``ssl``...); a
    ``socket_factory`` among them is still used, after the check.
    """
    inner_factory: SocketFactoryType | None = connector_kwargs.pop("socket_factory", None)

    def socket_factory(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        host, port = str(sockaddr[0]), int(sockaddr[1])
        problem = policy._connect_problem(host, port)
        if problem is None and len(sockaddr) == 4 and sockaddr[3]:
            problem = f"IPv6 address with a zone id {host}"
        if problem is not None:
            refusals = _refusals.get()
            if refusals is not None:
                refusals.append(problem)
            raise OSError(f"blocked: {problem}")
        if inner_factory is not None:
            return inner_factory(addr_info)
        return socket.socket(family=family, type=type_, proto=proto)

    connector_class = _guarded_connector_class()
    return connector_class(policy, socket_factory=socket_factory, **connector_kwargs)


@functools.cache
def _guarded_connector_class() -> Callable[..., aiohttp.TCPConnector]:
    import aiohttp

    class GuardedConnector(aiohttp.TCPConnector):
        def __init__(self, policy: Policy, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._ssrf_policy = policy

        async def _create_connection(
            self,
            req: ClientRequest,
            traces: list[Trace],
            timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
        ) -> ResponseHandler:
            url = str(req.url)
            if req.proxy is not None:
                raise Blocked(url, "a proxied connection cannot be checked")
            refusals: list[str] = []
            token = _refusals.set(refusals)
            try:
                return await super()._create_connection(req, traces, timeout)
            except Blocked as exc:
                raise Blocked(url, exc.reason) from None
            except Exception as exc:
                if refusals:
                    raise Blocked(url, refusals[0]) from exc
                raise
            finally:
                _refusals.reset(token)

        async def _resolve_host(
            self, host: str, port: int, traces: Sequence[Trace] | None = None
        ) -> list[ResolveResult]:
            results = await super()._resolve_host(host, port, traces=traces)
            for result in results:
                problem = self._ssrf_policy._connect_problem(result["host"], result["port"])
                if problem is not None:
                    raise Blocked(f"{host}:{port}", problem)
            return results

    return GuardedConnector


def guarded_session(policy: Policy) -> aiohttp.ClientSession:
    """The environment's session for ``policy``, on this loop: its connector refuses
    addresses the policy forbids and allows :data:`SESSION_CONNECTIONS` connections."""
    loop = asyncio.get_running_loop()
    cached = _sessions.get(policy)
    if cached is not None and cached[0] is loop and not cached[1].closed:
        return cached[1]
    import aiohttp

    connector = guarded_connector(
        policy, limit=SESSION_CONNECTIONS, limit_per_host=0, ttl_dns_cache=300
    )
    session = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None), raise_for_status=False
    )
    _sessions[policy] = (loop, session)
    return session


async def aclose_sessions() -> None:
    """Close the sessions built on this loop (for tests; Lambda never shuts down)."""
    loop = asyncio.get_running_loop()
    for policy, (owner, session) in list(_sessions.items()):
        if owner is loop:
            del _sessions[policy]
            await session.close()
