"""The SSRF guard: which URLs and addresses are refused, and refusal at connect time, after
DNS (an injected resolver; no connection is ever made, so no server is needed)."""

from __future__ import annotations

import ipaddress
import pickle
import socket
from typing import Any, TypeVar

import aiohttp
import pytest
import yarl
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult

from lambdaloop.errors import LambdaloopError
from lambdaloop.ssrf import Blocked, Policy, _guarded_connector_class, guarded_connector
from support import run

#: How this Python spells ::ffff:127.0.0.1 (3.13 keeps the dotted quad, 3.11 does not).
MAPPED_LOOPBACK = str(ipaddress.ip_address("::ffff:127.0.0.1"))

T = TypeVar("T")
POLICY = Policy()


REFUSED_URLS = [
    # loopback, spelled every way inet_aton and URL parsers accept
    "http://127.0.0.1/",
    "http://127.0.0.1:80/",
    "http://127.1/",
    "http://127.0.1/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0177.0000.0000.0001/",
    "http://017700000001/",
    "http://0x7f.1/",
    "http://0x7f.0x0.0x0.0x1/",
    "http://0x7F000001/",
    "http://0x7f.0.1/",
    "http://127.0.0.1./",
    "http://127.0.0.1../",
    "http://127.000.000.001/",
    "HTTP://127.0.0.1/",
    "hTtPs://127.0.0.1/",
    "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/",  # fullwidth digits, NFKC-normalised by IDNA
    "http://127\u30020\u30020\u30021/",  # ideographic full stops
    "http://%31%32%37.0.0.1/",  # percent-encoded host
    "http://example.com@127.0.0.1/",  # userinfo: the host is 127.0.0.1
    "http://0/",
    "http://0.0.0.0/",
    # private, link-local, metadata, CGNAT and other special-purpose IPv4
    "http://10.0.0.1/",
    "http://012.0.0.1/",
    "http://167772161/",
    "http://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.1.1/",
    "http://0xc0.0xa8.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://2852039166/",  # 169.254.169.254
    "http://0xa9fea9fe/",
    "http://0251.0376.0251.0376/",
    "http://169.254.43518/",
    "http://100.64.0.1/",
    "http://100.127.255.254/",
    "http://192.0.0.8/",
    "http://192.0.2.1/",
    "http://198.18.0.1/",
    "http://198.19.255.255/",
    "http://198.51.100.7/",
    "http://203.0.113.9/",
    "http://224.0.0.1/",
    "http://239.255.255.250/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    # IPv6 literal forms
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:93.184.216.34]/",  # mapped forms are refused whatever they carry
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[::10.0.0.1]/",
    "http://[::ffff:0:10.0.0.1]/",  # IPv4-translated
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2002:a9fe:a9fe::1]/",  # 6to4 of 169.254.169.254
    "http://[2002:c0a8:101::]/",  # 6to4 of 192.168.1.1
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
    "http://[2001::7f00:1]/",
    "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[64:ff9b::10.0.0.1]/",
    "http://[64:ff9b:1::a00:1]/",  # NAT64 local-use prefix
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",  # zone id
    "http://[fe80::a9fe:a9fe%251]/",
    "http://[fec0::1]/",  # site-local
    "http://[fc00::1]/",  # unique local
    "http://[fd00:ec2::254]/",  # the IPv6 instance metadata endpoint
    "http://[ff02::1]/",
    "http://[ff0e::1]/",
    "http://[2001:db8::1]/",
    "http://[100::1]/",
    # schemes, ports, credentials, hosts
    "file:///etc/passwd",
    "gopher://127.0.0.1:70/_x",
    "ftp://example.com/",
    "dict://example.com:11211/",
    "ws://example.com/",
    "redis://example.com:6379/",
    "//example.com/",
    "/relative/path",
    "http:///no-host",
    "http://example.com:8080/",
    "http://example.com:6379/",
    "https://example.com:22/",
    "http://example.com:0/",
    "http://user:pass@example.com/",
    "http://user@example.com/",
    "http://example.0x1/",  # a numeric last label is an IPv4 address or nothing
    "http://1.2.3.4.5/",
    "http://256.1.1.1/",
    "http://1.2.3.0400/",
    "http://1.16777216/",
    "http://0x100000000/",
    "http://08.0.0.1/",  # not octal, not decimal
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_a_url_that_could_reach_a_non_public_address_is_refused_before_any_io(url: str) -> None:
    assert POLICY.url_problem(url) is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/",
        "https://93.184.216.34:443/x?y=1",
        "http://1572395042/",  # 93.184.216.34, spelled as one number: still public
        "http://[2606:2800:220:1:248:1893:25c8:1946]/",
        "http://[64:ff9b::5db8:d822]/",  # NAT64 of a public address (DNS64 in a VPC)
        "http://[2002:5db8:d822::1]/",  # 6to4 of a public address
        "https://example.com/",
        "HTTPS://EXAMPLE.COM/path",
        "http://example.com./",
        "http://localhost/",  # a name: judged at connect time, after DNS
        "http://internal.test/",
        "http://cafe.beef/",
        "https://bücher.example/",
    ],
)
def test_a_public_url_or_a_host_name_passes_the_url_check(url: str) -> None:
    assert POLICY.url_problem(url) is None
    assert POLICY.url_problem(yarl.URL(url)) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://0x7f.1/", "loopback address 127.0.0.1"),
        ("http://2852039166/", "link-local address 169.254.169.254"),
        ("http://100.64.0.1/", "shared (CGNAT) address 100.64.0.1"),
        (
            "http://[64:ff9b::a00:1]/",
            "NAT64 address 64:ff9b::a00:1 embeds private address 10.0.0.1",
        ),
        ("gopher://example.com/", "scheme 'gopher' is not allowed"),
        ("http://example.com:8080/", "port 8080 is not allowed"),
        ("http://a@example.com/", "credentials in the URL are not allowed"),
    ],
)
def test_the_reason_names_what_the_url_would_reach(url: str, reason: str) -> None:
    assert POLICY.url_problem(url) == reason


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.1.2.3",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "fe80::1%eth0",
        "[::1]",
        "fd00::1",
        "2130706433",  # an address is canonical or refused
        "0177.0.0.1",
        "127.1",
        "localhost",
        "",
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("fec0::1"),
    ],
)
def test_a_non_public_or_non_canonical_address_is_refused(
    address: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    assert POLICY.address_problem(address) is not None


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946", "[2a00:1450:4001::1]"],
)
def test_a_public_address_is_allowed(address: str) -> None:
    assert POLICY.address_problem(address) is None
    assert POLICY.address_problem(ipaddress.ip_address(address.strip("[]"))) is None


def test_local_mode_allows_loopback_and_nothing_else_private() -> None:
    # Given a local-mode policy
    local = Policy(allow_loopback=True)

    # Then loopback passes, but not its IPv6 disguises nor any other private range
    assert [local.address_problem(a) for a in ("127.0.0.1", "127.8.9.10", "::1")] == [None] * 3
    assert local.url_problem("http://127.1/") is None
    for other in ("::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1", "10.0.0.1", "0.0.0.0"):
        assert local.address_problem(other) is not None, other


def test_denied_networks_are_refused_even_when_public_or_loopback() -> None:
    # Given a policy denying a public block (say the Redis endpoint) and one loopback address
    policy = Policy(
        allow_loopback=True,
        denied_networks=(
            ipaddress.ip_network("93.184.216.0/24"),
            ipaddress.ip_network("127.0.0.2/32"),
        ),
    )

    # Then those are refused, in any form that embeds them
    for address in ("93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::", "127.0.0.2"):
        assert "denied network" in (policy.address_problem(address) or ""), address
    assert policy.address_problem("127.0.0.1") is None


def test_ports_are_the_policys() -> None:
    policy = Policy(ports=frozenset({8443}))

    assert policy.url_problem("https://example.com:8443/") is None
    assert policy.url_problem("https://example.com/") == "port 443 is not allowed"


def test_blocked_is_a_layer_error_with_the_url_and_reason_and_survives_pickling() -> None:
    error = Blocked("http://10.0.0.1/", "private address 10.0.0.1")

    copy = pickle.loads(pickle.dumps(error))

    assert isinstance(error, LambdaloopError)
    assert not isinstance(error, OSError | aiohttp.ClientError)
    assert (copy.url, copy.reason, str(copy)) == (error.url, error.reason, str(error))


class FakeResolver(AbstractResolver):
    """Resolves names from a table and counts the lookups."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        if host not in self.table:
            raise OSError(f"no such host {host}")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.table[host]
        ]

    async def close(self) -> None:
        pass


class NoNetwork:
    """A socket factory that records the addresses it is asked for and never connects."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    def __call__(self, addr_info: AddrInfoType) -> socket.socket:
        self.asked.append((str(addr_info[4][0]), int(addr_info[4][1])))
        raise OSError("the unit tests do not connect")


DNS = {
    "internal.test": ["10.0.0.5"],
    "metadata.test": ["169.254.169.254"],
    "mixed.test": ["93.184.216.34", "10.0.0.5"],
    "v6.test": ["fd00::5", "2606:2800:220:1:248:1893:25c8:1946"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "public.test": ["93.184.216.34"],
    "loopback.test": ["127.0.0.1"],
}


def fetch(url: str, policy: Policy = POLICY, **connector: Any) -> tuple[BaseException, NoNetwork]:
    """Requests ``url`` through a guarded connector; returns what it raised and the sockets
    the connector asked for."""
    sockets = NoNetwork()

    async def once() -> BaseException:
        kwargs = {"resolver": FakeResolver(DNS), "socket_factory": sockets, **connector}
        async with aiohttp.ClientSession(connector=guarded_connector(policy, **kwargs)) as s:
            try:
                await s.get(url, timeout=aiohttp.ClientTimeout(total=2))
            except Exception as exc:
                return exc
        raise AssertionError("the request succeeded without a network")

    return run(once()), sockets


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://internal.test/", "private address 10.0.0.5"),
        ("http://metadata.test/latest/meta-data/", "link-local address 169.254.169.254"),
        ("http://mixed.test/", "private address 10.0.0.5"),
        ("http://v6.test/", "unique local (private) address fd00::5"),
        ("http://mapped.test/", f"IPv4-mapped address {MAPPED_LOOPBACK}"),
        ("http://loopback.test/", "loopback address 127.0.0.1"),
        ("http://public.test:8080/", "port 8080 is not allowed"),
    ],
)
def test_a_name_resolving_to_a_refused_address_is_blocked_without_a_socket(
    url: str, reason: str
) -> None:
    # When a URL whose name resolves (through the injected resolver) to a refused address,
    # or to a refused one among others, is requested
    error, sockets = fetch(url)

    # Then the request raises Blocked itself, naming the URL, and no socket was made
    assert isinstance(error, Blocked)
    assert (error.url, error.reason) == (url, reason)
    assert sockets.asked == []


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5/", "http://169.254.169.254/", "http://[::1]:80/", "http://[fe80::1]/"]
)
def test_a_raw_ip_url_is_blocked_at_connect_time_although_the_resolver_is_not_asked(
    url: str,
) -> None:
    resolver = FakeResolver(DNS)

    error, sockets = fetch(url, resolver=resolver)

    assert isinstance(error, Blocked)
    assert (resolver.lookups, sockets.asked) == ([], [])


def test_legacy_numeric_hosts_never_reach_a_socket() -> None:
    # aiohttp refuses non-canonical IPv4 itself, and 0x... hosts go to the resolver, whose
    # answer (here: none) is checked; either way nothing is connected
    for url in ("http://2130706433/", "http://0x7f.1/", "http://127.1/"):
        error, sockets = fetch(url)
        assert not isinstance(error, AssertionError), url
        assert sockets.asked == [], url


def test_a_public_address_is_connected_to_with_the_callers_socket_factory() -> None:
    # When a name resolving to a public address is requested
    error, sockets = fetch("https://public.test/")

    # Then the connector asks for a socket to exactly that address (the fake refuses it)
    assert sockets.asked == [("93.184.216.34", 443)]
    assert isinstance(error, aiohttp.ClientConnectorError)
    assert not isinstance(error, Blocked)


def test_a_proxied_request_is_blocked_because_its_target_cannot_be_checked() -> None:
    sockets = NoNetwork()

    async def once() -> Blocked:
        connector = guarded_connector(POLICY, socket_factory=sockets)
        async with aiohttp.ClientSession(connector=connector) as session:
            with pytest.raises(Blocked) as caught:
                await session.get("http://public.test/", proxy="http://93.184.216.34:80")
            return caught.value

    error = run(once())

    assert error.reason == "a proxied connection cannot be checked"
    assert sockets.asked == []


@pytest.mark.parametrize("happy_eyeballs_delay", [None, 0.25])
def test_the_socket_check_alone_still_blocks_every_address_with_a_typed_error(
    monkeypatch: pytest.MonkeyPatch, happy_eyeballs_delay: float | None
) -> None:
    # Given a connector whose resolution step does not check (as if aiohttp stopped calling
    # the private _resolve_host): only the socket factory stands in the way
    connector_class = _guarded_connector_class()
    monkeypatch.setattr(connector_class, "_resolve_host", aiohttp.TCPConnector._resolve_host)
    sockets: list[object] = []

    def counting_socket(addr_info: AddrInfoType) -> socket.socket:
        sockets.append(addr_info)
        raise OSError("unreachable")

    # When names resolving to one or several refused addresses are requested, with and
    # without happy eyeballs
    for url in ("http://internal.test/", "http://v6.test/", "http://10.0.0.5/"):
        table = {**DNS, "v6.test": ["fd00::5", "fd00::6", "10.9.9.9"]}
        error, _ = fetch(
            url,
            resolver=FakeResolver(table),
            socket_factory=counting_socket,
            happy_eyeballs_delay=happy_eyeballs_delay,
        )

        # Then every attempt is refused before its socket exists, as Blocked
        assert isinstance(error, Blocked), (url, error)
        assert sockets == []


def test_the_socket_check_lets_a_public_address_through_when_resolution_is_not_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connector_class = _guarded_connector_class()
    monkeypatch.setattr(connector_class, "_resolve_host", aiohttp.TCPConnector._resolve_host)

    error, sockets = fetch("http://mixed.test/", happy_eyeballs_delay=None)

    # Then the private address is refused at the socket and the public one is tried; the
    # public one failing too (no network here), the request reports the refusal
    assert sockets.asked == [("93.184.216.34", 80)]
    assert isinstance(error, Blocked)
    assert error.reason == "private address 10.0.0.5"


def test_importing_the_guard_imports_no_aiohttp() -> None:
    import subprocess
    import sys

    code = "import sys, lambdaloop.ssrf; print('aiohttp' in sys.modules, 'yarl' in sys.modules)"
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()

    assert found == "False False"


def test_user_urls_are_public_on_80_and_443_but_local_mode_adds_loopback_on_any_port() -> None:
    deployed, local = Policy.for_user_urls(False), Policy.for_user_urls(True)

    assert deployed.url_problem("https://example.com/hook") is None
    assert deployed.url_problem("http://127.0.0.1:8099/hook") is not None
    assert deployed.url_problem("https://example.com:8443/hook") is not None
    assert local.url_problem("http://127.0.0.1:8099/hook") is None
    assert local.url_problem("https://example.com:8443/hook") is None
    assert local.url_problem("http://169.254.169.254/latest/meta-data") is not None
    assert local.url_problem("http://10.0.0.5:6379/") is not None
