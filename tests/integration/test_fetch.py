"""The fetcher against a real loopback server: retries, redirects, limits, streaming, SSRF."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from lambdaloop.fetch import Fetcher, FetchOptions, FetchResult
from lambdaloop.runtime import invocation
from lambdaloop.ssrf import Policy, aclose_sessions
from support import LoopbackHttpServer, lambda_context, run

BODY = b"hello fetch\n" * 100
BODY_SHA = hashlib.sha256(BODY).hexdigest()


class Site:
    """The routes; per-key counters make "fail N times, then succeed" repeatable."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.active = 0
        self.max_active = 0
        self.abandoned = threading.Event()
        self.server = LoopbackHttpServer(self._routes)

    def _routes(self, router: web.UrlDispatcher) -> None:
        self.loop = asyncio.get_running_loop()  # the server's loop: built inside it
        self.gate = asyncio.Event()
        router.add_get("/ok", self.ok)
        router.add_get("/status/{code}", self.status)
        router.add_get("/flaky/{key}/{failures}", self.flaky)
        router.add_get("/limited/{key}/{retry_after}", self.limited)
        router.add_get("/redirect/{n}", self.redirect)
        router.add_get("/see-other", self.see_other)
        router.add_get("/bad-location", self.bad_location)
        router.add_get("/to/{port}", self.to_port)
        router.add_get("/endless", self.endless)
        router.add_get("/hang", self.hang)
        router.add_get("/gated", self.gated)
        router.add_get("/counted", self.counted)

    def open_gate(self) -> None:
        self.loop.call_soon_threadsafe(self.gate.set)

    def _hit(self, request: web.Request) -> None:
        self.hits[request.path] += 1

    async def ok(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(body=BODY, content_type="text/plain")

    async def status(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def flaky(self, request: web.Request) -> web.Response:
        self._hit(request)
        if self.hits[request.path] <= int(request.match_info["failures"]):
            return web.Response(status=503)
        return web.Response(body=BODY, content_type="text/plain")

    async def limited(self, request: web.Request) -> web.Response:
        self._hit(request)
        if self.hits[request.path] == 1:
            return web.Response(
                status=429, headers={"Retry-After": request.match_info["retry_after"]}
            )
        return web.Response(body=BODY, content_type="text/plain")

    async def redirect(self, request: web.Request) -> web.Response:
        self._hit(request)
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(body=BODY, content_type="text/plain")
        raise web.HTTPFound(f"{n - 1}")  # relative to /redirect/

    async def see_other(self, request: web.Request) -> web.Response:
        self._hit(request)
        raise web.HTTPSeeOther("/ok")

    async def bad_location(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(status=302, headers={"Location": "http://[not-an-address/"})

    async def to_port(self, request: web.Request) -> web.Response:
        self._hit(request)
        raise web.HTTPFound(f"http://127.0.0.1:{request.match_info['port']}/ok")

    async def endless(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while not self.server.closing.is_set():
                await response.write(b"x" * 65536)
        return response

    async def hang(self, request: web.Request) -> web.Response:
        self._hit(request)
        # Polls the connection (the server does not cancel handlers when a client leaves).
        while not self.server.closing.is_set():
            if request.transport is None or request.transport.is_closing():
                self.abandoned.set()
                break
            await asyncio.sleep(0.01)
        return web.Response(status=503)

    async def gated(self, request: web.Request) -> web.Response:
        self._hit(request)
        await self.gate.wait()
        return web.Response(text="late")

    async def counted(self, request: web.Request) -> web.Response:
        self._hit(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        await asyncio.sleep(0.005)
        self.active -= 1
        return web.Response(text="counted")

    def url(self, path: str) -> str:
        return f"{self.server.url}{path}"


@pytest.fixture
def site() -> Iterator[Site]:
    site = Site()
    with site.server:
        yield site
    run(aclose_sessions())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sleeps:
    """An injected sleep: records the backoff delays, waits for nothing."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def options(site: Site, *extra_ports: int, **kwargs: object) -> FetchOptions:
    policy = Policy(allow_loopback=True, ports=frozenset({site.server.port, *extra_ports}))
    return FetchOptions(policy=policy, **kwargs)  # type: ignore[arg-type]


def fetch(site: Site, path: str, sleeps: Sleeps | None = None, **kwargs: object) -> FetchResult:
    fetcher = Fetcher(sleep=sleeps or Sleeps(), random=lambda: 0.5)
    return run(fetcher.fetch_one(site.url(path), options(site, **kwargs)))


def test_a_body_is_hashed_and_every_field_reported(site: Site) -> None:
    result = fetch(site, "/ok")

    assert result.ok
    assert (result.url, result.final_url) == (site.url("/ok"), site.url("/ok"))
    assert result.status == 200
    assert result.content_type == "text/plain"
    assert (result.bytes, result.sha256) == (len(BODY), BODY_SHA)
    assert result.attempts == 1
    assert result.elapsed_ms > 0
    assert result.to_dict() == {
        "url": result.url,
        "final_url": result.final_url,
        "status": 200,
        "content_type": result.content_type,
        "bytes": len(BODY),
        "sha256": BODY_SHA,
        "elapsed_ms": result.elapsed_ms,
        "attempts": 1,
        "error": None,
    }


def test_the_body_is_kept_only_when_asked_and_never_in_the_data(site: Site) -> None:
    kept = fetch(site, "/ok", keep_body=True)
    dropped = fetch(site, "/ok")
    too_large = fetch(site, "/endless", max_body_bytes=100_000, keep_body=True)

    assert kept.body == BODY
    assert dropped.body is None
    assert too_large.body is None  # not read in full: nothing to keep
    assert "body" not in kept.to_dict()
    assert kept.to_dict() == dropped.to_dict() | {"elapsed_ms": kept.elapsed_ms}


def test_5xx_is_retried_with_capped_exponential_backoff_and_full_jitter(site: Site) -> None:
    sleeps = Sleeps()
    result = fetch(site, "/flaky/a/3", sleeps, max_attempts=5, backoff_base_s=0.2)

    assert result.ok
    assert (result.status, result.attempts, result.sha256) == (200, 4, BODY_SHA)
    assert sleeps.delays == pytest.approx([0.1, 0.2, 0.4])  # 0.5 x min(cap, base x 2^n)


def test_retries_stop_at_max_attempts_with_the_last_status(site: Site) -> None:
    sleeps = Sleeps()
    result = fetch(
        site, "/flaky/b/9", sleeps, max_attempts=3, backoff_base_s=0.1, backoff_cap_s=0.15
    )

    assert (result.status, result.attempts) == (503, 3)
    assert result.error is not None
    assert (result.error.code, result.error.message) == ("http_status", "HTTP 503")
    assert sleeps.delays == pytest.approx([0.05, 0.075])  # 0.5 x 0.1, then 0.5 x the 0.15 cap
    assert site.hits["/flaky/b/9"] == 3


def test_a_final_4xx_is_not_retried_and_keeps_its_body(site: Site) -> None:
    result = fetch(site, "/status/404")

    assert (result.status, result.attempts, result.bytes) == (404, 1, 4)
    assert result.sha256 == hashlib.sha256(b"nope").hexdigest()
    assert result.error is not None
    assert result.error.code == "http_status"


@pytest.mark.parametrize(("retry_after", "delay"), [("1", 1.0), ("30", 5.0)])
def test_429_honours_retry_after_capped(site: Site, retry_after: str, delay: float) -> None:
    sleeps = Sleeps()
    result = fetch(site, f"/limited/{retry_after}/{retry_after}", sleeps, backoff_cap_s=5.0)

    assert (result.status, result.attempts, result.error) == (200, 2, None)
    assert sleeps.delays == [delay]


def test_connection_errors_are_retried(site: Site) -> None:
    port = free_port()
    fetcher = Fetcher(sleep=Sleeps())
    opts = options(site, port, max_attempts=2)
    result = run(fetcher.fetch_one(f"http://127.0.0.1:{port}/ok", opts))

    assert (result.status, result.attempts, result.sha256) == (None, 2, None)
    assert result.error is not None
    assert result.error.code == "connection"
    assert "Traceback" not in result.error.message


def test_redirects_are_followed_relative_to_the_current_url(site: Site) -> None:
    result = fetch(site, "/redirect/3")

    assert result.ok
    assert (result.final_url, result.status, result.attempts) == (site.url("/redirect/0"), 200, 1)
    assert result.sha256 == BODY_SHA
    assert site.hits["/redirect/3"] == site.hits["/redirect/0"] == 1


def test_303_becomes_a_get_of_the_location(site: Site) -> None:
    result = fetch(site, "/see-other")

    assert (result.final_url, result.status, result.sha256) == (site.url("/ok"), 200, BODY_SHA)


def test_an_unparsable_location_is_an_invalid_url(site: Site) -> None:
    result = fetch(site, "/bad-location")

    assert result.error is not None
    assert (result.error.code, result.attempts) == ("invalid_url", 1)


def test_no_retry_is_slept_past_the_invocation_deadline(site: Site) -> None:
    sleeps = Sleeps()
    with invocation(lambda_context(timeout_s=5.0)):
        result = fetch(site, "/limited/late/30", sleeps, backoff_cap_s=60.0)

    assert (result.status, result.attempts, sleeps.delays) == (429, 1, [])
    assert result.error is not None
    assert result.error.code == "http_status"


def test_a_chain_longer_than_max_redirects_stops(site: Site) -> None:
    result = fetch(site, "/redirect/4", max_redirects=2)

    assert result.error is not None
    assert result.error.code == "too_many_redirects"
    assert result.final_url == site.url("/redirect/1")
    assert site.hits["/redirect/1"] == 0  # three requests: /4, /3, /2
    assert result.attempts == 1


def test_a_redirect_hop_is_checked_against_the_policy(site: Site) -> None:
    other = LoopbackHttpServer()
    with other:
        result = fetch(site, f"/to/{other.port}")  # a port the policy does not allow

    assert result.error is not None
    assert result.error.code == "blocked"
    assert result.final_url == f"http://127.0.0.1:{other.port}/ok"
    assert other.requests == 0


def test_a_body_past_the_limit_is_not_read_further(site: Site) -> None:
    result = fetch(site, "/endless", max_body_bytes=200_000)

    assert result.error is not None
    assert result.error.code == "too_large"
    assert result.status == 200
    assert 200_000 < result.bytes <= 200_000 + 65536
    assert result.sha256 is None
    assert result.attempts == 1


def test_a_request_that_never_answers_times_out(site: Site) -> None:
    result = fetch(site, "/hang", total_timeout_s=0.2, max_attempts=1)

    assert result.error is not None
    assert result.error.code == "timeout"
    assert (result.status, result.attempts) == (None, 1)
    assert site.abandoned.wait(5)


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "not a url", "http://", "/relative/only", "http://[::1"]
)
def test_invalid_urls_are_results(site: Site, url: str) -> None:
    result = run(Fetcher().fetch_one(url, options(site)))

    assert result.error is not None
    assert result.error.code == "invalid_url"
    assert (result.attempts, result.final_url, result.status) == (0, None, None)


def test_a_blocked_url_never_reaches_the_server(site: Site) -> None:
    policy = Policy(allow_loopback=False, ports=frozenset({site.server.port}))
    results = run(_collect(Fetcher(), [site.url("/ok")], FetchOptions(policy=policy)))

    assert len(results) == 1
    assert results[0].error is not None
    assert results[0].error.code == "blocked"
    assert results[0].attempts == 0
    assert sum(site.hits.values()) == 0


@pytest.mark.parametrize(
    "policy_kwargs",
    [
        {"allow_loopback": False},
        {"allow_loopback": True, "denied_networks": (ipaddress.ip_network("127.0.0.0/8"),)},
    ],
)
def test_a_name_resolving_to_a_refused_address_is_blocked_at_connect_time(
    site: Site, policy_kwargs: dict[str, Any]
) -> None:
    policy = Policy(ports=frozenset({site.server.port}), **policy_kwargs)
    url = f"http://localhost:{site.server.port}/ok"
    result = run(Fetcher(sleep=Sleeps()).fetch_one(url, FetchOptions(policy=policy)))

    assert result.error is not None
    assert result.error.code == "blocked"
    assert result.attempts == 1  # not retried
    assert sum(site.hits.values()) == 0


async def _collect(fetcher: Fetcher, urls: list[str], opts: FetchOptions) -> list[FetchResult]:
    return [result async for result in fetcher.stream(urls, opts)]


def test_results_stream_as_each_url_completes(site: Site) -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        urls = [site.url("/gated"), site.url("/ok")]
        async with contextlib.aclosing(Fetcher().stream(urls, options(site))) as results:
            async for result in results:
                seen.append(result.url)
                if result.url == site.url("/ok"):
                    site.open_gate()  # only now may the slow one finish
        return seen

    assert run(scenario()) == [site.url("/ok"), site.url("/gated")]


def test_stopping_early_cancels_the_rest_and_leaves_no_task(site: Site) -> None:
    async def scenario() -> FetchResult:
        urls = [site.url("/hang"), site.url("/ok"), site.url("/hang")]
        async with contextlib.aclosing(Fetcher().stream(urls, options(site))) as results:
            first = await anext(results)
        me = asyncio.current_task()
        assert {t for t in asyncio.all_tasks() if not t.done()} == {me}
        return first

    first = run(scenario())
    assert first.url == site.url("/ok")
    assert site.abandoned.wait(5)  # the hanging request's connection was dropped


def test_the_concurrency_bound_holds_for_many_urls(site: Site) -> None:
    urls = [site.url(f"/counted?i={i}") for i in range(60)]
    results = run(_collect(Fetcher(), urls, options(site, concurrency=7)))

    assert len(results) == 60
    assert all(r.ok for r in results)
    assert {r.url for r in results} == set(urls)
    assert 1 <= site.max_active <= 7


def test_the_per_host_bound_holds(site: Site) -> None:
    urls = [site.url(f"/counted?i={i}") for i in range(30)]
    run(_collect(Fetcher(), urls, options(site, concurrency=20, per_host=3)))

    assert 1 <= site.max_active <= 3


def test_the_session_is_reused_per_policy_and_closed_on_request(site: Site) -> None:
    from lambdaloop.ssrf import guarded_session

    async def scenario() -> None:
        opts = options(site)
        first = guarded_session(opts.policy)
        assert guarded_session(opts.policy) is first
        assert first.connector is not None
        assert first.connector.limit >= 200
        await aclose_sessions()
        assert first.closed

    run(scenario())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": 0},
        {"concurrency": 201},
        {"per_host": 0},
        {"max_attempts": 0},
        {"total_timeout_s": 0},
        {"backoff_cap_s": -1},
    ],
)
def test_options_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must"):
        FetchOptions(**kwargs)  # type: ignore[arg-type]
