"""Fetch many URLs concurrently, safely, and report each one as data as soon as it is done.

A function that fetches what users name (link previews, feed polling, webhook checks) needs
more than ``session.get`` in a ``gather``:

- **A bound that is really the bound.** aiohttp's connector allows 100 connections by
  default, which silently caps a larger fan-out (200 concurrent requests took 2.45x the
  ideal time). The sessions built here have a connector limit of :data:`MAX_CONCURRENCY`;
  the job's ``concurrency`` and ``per_host`` semaphores are what bound the work.
- **Bounded memory.** At most ``concurrency`` tasks exist at a time, whatever the number
  of URLs, and a body is streamed and hashed, never buffered: past ``max_body_bytes`` the
  response is closed (the rest is not read) and the result says ``too_large``.
- **No server-side request forgery.** Each URL and each redirect hop is checked against the
  :class:`~lambdaloop.ssrf.Policy` (scheme, port, credentials, IP literals), and the
  session's connector refuses non-public addresses at connect time (DNS included).
  Redirects are followed by hand for that reason, up to ``max_redirects``.
- **Retries that help.** Connection errors, timeouts, 408, 429 and 5xx are retried up to
  ``max_attempts`` with capped exponential backoff and full jitter; a ``Retry-After`` is
  honoured, capped at ``backoff_cap_s``. No retry is slept past the invocation's deadline.
- **Results as they complete.** :meth:`Fetcher.stream` yields each :class:`FetchResult` as
  its URL finishes. Stopping early (``break`` inside ``contextlib.aclosing``, or
  ``aclose()``) cancels and awaits what is left: no task outlives the generator, since
  Lambda freezes the environment once the handler returns.

Every outcome is a :class:`FetchResult`; nothing raises for a URL's failure. ``error`` is
``None`` for a 2xx/3xx response, else a :class:`FetchError` with one of the codes in
:data:`ERROR_CODES`. A final 4xx/5xx (after the retries) has its ``status``, its body's size
and hash, *and* the error ``http_status``: a caller that wants only successes tests
``result.ok``; one that wants the 404 page still has its hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import random as _random
import re
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lambdaloop.backoff import Backoff
from lambdaloop.http_outcome import Verdict, classify
from lambdaloop.runtime import current_deadline
from lambdaloop.ssrf import SESSION_CONNECTIONS, Blocked, Policy, guarded_session

if TYPE_CHECKING:
    import aiohttp
    import yarl

__all__ = [
    "ERROR_CODES",
    "MAX_CONCURRENCY",
    "FetchError",
    "FetchOptions",
    "FetchResult",
    "Fetcher",
]

#: The largest ``concurrency`` a job may ask for: the guarded sessions' connection limit.
MAX_CONCURRENCY = SESSION_CONNECTIONS
#: What :attr:`FetchError.code` can be.
ERROR_CODES = frozenset(
    {
        "invalid_url",  # not an absolute http(s) URL
        "blocked",  # refused by the SSRF policy (the URL, a redirect hop, or the address)
        "timeout",  # no connection within connect_timeout_s, or not done in total_timeout_s
        "connection",  # refused, reset, DNS failure, broken response...
        "too_large",  # the body passed max_body_bytes (it was not read further)
        "too_many_redirects",  # more than max_redirects hops
        "http_status",  # the final response (after retries) was 4xx or 5xx
    }
)
_AUTHORITY_END = re.compile(r"[/?#]")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_MESSAGE_MAX = 200
_Bytes = bytes  # FetchResult.bytes (the size) shadows the type inside that class


@dataclass(frozen=True, slots=True)
class FetchError:
    """Why a URL did not yield a successful response: a code from :data:`ERROR_CODES` and a
    short message (never a traceback)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The outcome of one URL."""

    url: str
    #: The URL of the last request made (after redirects); ``None`` if none was made.
    final_url: str | None
    #: The last response's status; ``None`` when there was none.
    status: int | None
    content_type: str | None
    #: Body bytes read (decoded), up to ``max_body_bytes`` + one chunk when ``too_large``.
    bytes: int
    #: Hex SHA-256 of the whole body; ``None`` unless it was read in full.
    sha256: str | None
    #: From the start of the first attempt to the end of the last, backoff included.
    elapsed_ms: float
    #: Requests attempted (redirect hops are not attempts); 0 when none was made.
    attempts: int
    error: FetchError | None = None
    #: The whole body, only with ``FetchOptions(keep_body=True)`` and when read in full.
    body: _Bytes | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The result as data, without its body."""
        data = asdict(self)
        del data["body"]
        return data


@dataclass(frozen=True)
class FetchOptions:
    """How one job fetches its URLs."""

    #: URLs in flight at once (1..:data:`MAX_CONCURRENCY`).
    concurrency: int = 10
    #: URLs in flight at once per host (``host:port`` of the URL given); ``None`` = concurrency.
    per_host: int | None = None
    connect_timeout_s: float = 3.0
    #: One attempt, redirect hops and body included.
    total_timeout_s: float = 10.0
    max_body_bytes: int = 10 * 1024 * 1024
    max_attempts: int = 3
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 5.0
    max_redirects: int = 5
    policy: Policy = field(default_factory=Policy)
    #: Keep each body read in full in :attr:`FetchResult.body` (memory: up to
    #: ``concurrency`` x ``max_body_bytes`` at once), for a caller that stores them.
    keep_body: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}, not {self.concurrency}")
        if self.per_host is not None and self.per_host < 1:
            raise ValueError(f"per_host must be at least 1, not {self.per_host}")
        if self.max_attempts < 1 or self.max_redirects < 0 or self.max_body_bytes < 0:
            raise ValueError("max_attempts must be >= 1, max_redirects and max_body_bytes >= 0")
        if min(self.connect_timeout_s, self.total_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        Backoff(self.backoff_base_s, self.backoff_cap_s)  # its checks


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One attempt: the result's fields, and whether another attempt may help."""

    final_url: str | None
    status: int | None = None
    content_type: str | None = None
    size: int = 0
    sha256: str | None = None
    error: FetchError | None = None
    body: bytes | None = None
    retry: bool = False
    retry_after_s: float | None = None


class Fetcher:
    """Fetches URLs with GET. Built with no argument it uses :func:`guarded_session` (one
    per environment and policy); a ``session`` or ``session_factory`` may be given instead
    (it then also decides what the connector allows: the policy still checks each URL).

    ``sleep``, ``random`` and ``clock`` are there for tests (backoff without waiting).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        session_factory: Callable[[Policy], aiohttp.ClientSession] = guarded_session,
        sleep: Callable[[float], Any] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._session_factory = session_factory
        self._sleep = sleep
        self._random = random
        self._clock = clock

    def _session_for(self, policy: Policy) -> aiohttp.ClientSession:
        return self._session if self._session is not None else self._session_factory(policy)

    async def fetch_one(self, url: str, options: FetchOptions | None = None) -> FetchResult:
        """Fetch one URL (retries and redirects included); never raises for its failure."""
        options = options or FetchOptions()
        return await self._fetch(self._session_for(options.policy), url, options)

    async def stream(
        self, urls: Iterable[str], options: FetchOptions | None = None
    ) -> AsyncGenerator[FetchResult, None]:
        """Yield a result per URL, in the order they complete.

        Use it inside ``contextlib.aclosing`` when the loop may stop early: closing the
        generator cancels the fetches still running and waits for them to unwind.
        """
        options = options or FetchOptions()
        session = self._session_for(options.policy)
        per_host_limit = options.per_host or options.concurrency
        hosts: dict[str, asyncio.Semaphore] = {}

        async def bounded(url: str) -> FetchResult:
            key = _host_key(url)
            gate = hosts.get(key)
            if gate is None:
                gate = hosts[key] = asyncio.Semaphore(per_host_limit)
            async with gate:
                return await self._fetch(session, url, options)

        # Each task reports itself done on a queue: one asyncio.wait per result would add
        # and remove a callback on every pending task each time (O(N x C) in all).
        loop = asyncio.get_running_loop()
        finished: asyncio.Queue[asyncio.Task[FetchResult]] = asyncio.Queue()
        pending: set[asyncio.Task[FetchResult]] = set()
        remaining = iter(urls)

        def fill() -> None:
            # At most `concurrency` tasks: 1,000 URLs never make 1,000 tasks at once.
            while len(pending) < options.concurrency:
                url = next(remaining, None)
                if url is None:
                    return
                task = loop.create_task(bounded(url))
                task.add_done_callback(finished.put_nowait)
                pending.add(task)

        try:
            fill()
            while pending:
                task = await finished.get()
                pending.discard(task)
                fill()  # before yielding: the next URL starts while the consumer works
                yield task.result()
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _fetch(
        self, session: aiohttp.ClientSession, url: str, options: FetchOptions
    ) -> FetchResult:
        started = self._clock()

        def result(outcome: _Outcome, attempts: int) -> FetchResult:
            return FetchResult(
                url=url,
                final_url=outcome.final_url,
                status=outcome.status,
                content_type=outcome.content_type,
                bytes=outcome.size,
                sha256=outcome.sha256,
                elapsed_ms=(self._clock() - started) * 1000,
                attempts=attempts,
                error=outcome.error,
                body=outcome.body,
            )

        parsed, problem = _check(url, options.policy)
        if parsed is None or problem is not None:
            return result(_Outcome(None, error=problem), 0)
        attempts = 0
        while True:
            attempts += 1
            outcome = await self._attempt(session, parsed, options)
            if not outcome.retry or attempts >= options.max_attempts:
                return result(outcome, attempts)
            delay = self._delay(attempts, outcome.retry_after_s, options)
            if delay >= current_deadline().remaining():
                return result(outcome, attempts)
            await self._sleep(delay)

    def _delay(self, attempt: int, retry_after_s: float | None, options: FetchOptions) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, options.backoff_cap_s)
        backoff = Backoff(options.backoff_base_s, options.backoff_cap_s, random=self._random)
        return backoff.delay(attempt - 1)

    async def _attempt(
        self, session: aiohttp.ClientSession, url: yarl.URL, options: FetchOptions
    ) -> _Outcome:
        import aiohttp
        import yarl

        current = url
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=options.connect_timeout_s)
        try:
            async with asyncio.timeout(options.total_timeout_s):
                for _hop in range(options.max_redirects + 1):
                    async with session.get(
                        current, allow_redirects=False, timeout=timeout
                    ) as response:
                        location = response.headers.get("Location")
                        if response.status not in _REDIRECTS or location is None:
                            return await _read(response, str(current), options)
                    # 303 means GET, and every request here is a GET already.
                    current = current.join(yarl.URL(location))
                    _, problem = _check(current, options.policy)
                    if problem is not None:
                        return _Outcome(str(current), error=problem)
                message = f"more than {options.max_redirects} redirect(s)"
                return _Outcome(str(current), error=FetchError("too_many_redirects", message))
        except Exception as exc:
            return _failure(exc, str(current))


def _check(url: str | yarl.URL, policy: Policy) -> tuple[yarl.URL | None, FetchError | None]:
    """The URL parsed, and why it may not be requested (before any I/O), if it may not."""
    import yarl

    try:
        parsed = url if isinstance(url, yarl.URL) else yarl.URL(url)
        parsed.port  # noqa: B018 - an invalid port raises here
    except (TypeError, ValueError) as exc:
        return None, FetchError("invalid_url", _short(exc))
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None, FetchError("invalid_url", f"not an absolute http(s) URL: {str(url)[:100]}")
    reason = policy.url_problem(parsed)
    return parsed, None if reason is None else FetchError("blocked", _short(reason))


def _host_key(url: str) -> str:
    """The ``host[:port]`` of a URL, cheaply (only a semaphore's key: never a security check)."""
    authority = _AUTHORITY_END.split(url.partition("://")[2], maxsplit=1)[0]
    return authority.rpartition("@")[2].lower()


async def _read(
    response: aiohttp.ClientResponse, final_url: str, options: FetchOptions
) -> _Outcome:
    """Stream the body into a hash (and a buffer, to keep it), stopping past
    ``max_body_bytes``."""
    digest = hashlib.sha256()
    kept: list[bytes] | None = [] if options.keep_body else None
    size = 0
    status = response.status
    content_type = response.headers.get("Content-Type")
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > options.max_body_bytes:
            response.close()  # drop the connection rather than read the rest
            message = f"body larger than {options.max_body_bytes} bytes"
            return _Outcome(
                final_url, status, content_type, size, error=FetchError("too_large", message)
            )
        digest.update(chunk)
        if kept is not None:
            kept.append(chunk)
    verdict = classify(status, response.headers)
    error = None if status < 400 else FetchError("http_status", f"HTTP {status}")
    return _Outcome(
        final_url,
        status,
        content_type,
        size,
        digest.hexdigest(),
        error,
        None if kept is None else b"".join(kept),
        retry=verdict.verdict is Verdict.RETRY,
        retry_after_s=verdict.retry_after_s,
    )


def _failure(exc: BaseException, final_url: str) -> _Outcome:
    """An exception of one attempt as an outcome (and whether to retry it)."""
    import aiohttp

    blocked = _find_blocked(exc)
    if blocked is not None:
        return _Outcome(final_url, error=FetchError("blocked", _short(blocked.reason)))
    if isinstance(exc, TimeoutError):
        return _Outcome(
            final_url, error=FetchError("timeout", _short(exc) or "timed out"), retry=True
        )
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return _Outcome(final_url, error=FetchError("invalid_url", _short(exc)))
    if isinstance(exc, aiohttp.ClientError | OSError):
        message = f"{type(exc).__name__}: {_short(exc)}"
        return _Outcome(final_url, error=FetchError("connection", message), retry=True)
    raise exc  # a bug, not a URL's failure


def _find_blocked(exc: BaseException) -> Blocked | None:
    seen: BaseException | None = exc
    for _ in range(5):  # aiohttp may wrap what the connector raised
        if seen is None:
            return None
        if isinstance(seen, Blocked):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _short(exc_or_text: object) -> str:
    return str(exc_or_text)[:_MESSAGE_MAX]
