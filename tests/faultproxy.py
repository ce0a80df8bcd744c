"""A fault-injecting HTTP/1.1 proxy for the tests: it sits between an AWS client (botocore,
keep-alive connections) and an upstream server (moto in server mode) and, per request,
passes it on unchanged or breaks it in one of the ways a network breaks a call:

- :class:`Delay`: the request is forwarded; its answer is held back ``seconds``.
- :class:`CutAnswer`: the request is forwarded (the write happens), the answer is read and
  dropped, and the client connection is closed: the client never learns the outcome.
- :class:`Blackhole`: the request is forwarded (the write happens) and never answered; the
  client connection stays open until the client gives up or the proxy closes.
- :class:`Refuse`: the request is not forwarded (the write does not happen); the client
  connection is closed at once.

A fault matches an operation (the ``X-Amz-Target`` suffix, e.g. ``PutItem`` or
``SendMessageBatch``; the ``Action`` of a query-protocol form body; else ``METHOD /path``)
or ``"*"`` for every request, and acts on the first ``times`` matching requests (None:
every one). Requests no fault claims pass through byte for byte.

The proxy parses just enough HTTP to know where each request and each answer ends (request
line, headers, Content-Length body; status line, headers, Content-Length / chunked /
close-delimited body), so it acts per request on a keep-alive connection. Anything it cannot
parse (a chunked request body, a malformed message) fails loudly: the client gets a 501/400
and :meth:`FaultProxy.aclose` (or the exit of :func:`running_proxy`) raises
:class:`FaultProxyError`, so a test cannot pass on a request the proxy mangled.

Use it on the test's own loop (``await proxy.start()`` ... ``await proxy.aclose()``) or,
for synchronous tests and clients in other threads or processes, on a loop of its own in a
background thread: ``with running_proxy(upstream_url) as proxy: ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger("faultproxy")

#: Bound on starting and stopping the proxy's own loop (a loaded machine may be slow, but
#: neither should ever take long).
_THREAD_TIMEOUT_S = 30.0
#: Request/answer heads larger than this are not what the tests send: fail rather than buffer.
_LINE_LIMIT = 1 << 20
#: Bound on flushing a connection's last bytes when it closes.
_CLOSE_TIMEOUT_S = 5.0


class FaultProxyError(AssertionError):
    """The proxy met HTTP it does not handle (so what the client saw is not what it sent)."""


class _ProtocolError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------ faults


class Fault:
    """What to do to requests of ``operation`` (``"*"``: any), for the first ``times`` of
    them (None: every one).

    ``hits`` counts the requests it acted on; ``fired`` is set once it first acted, at the
    point its effect is in place (see each fault), so a test can wait for it with
    ``fault.fired.wait(timeout)`` from any thread or ``await fault.wait_fired()`` on a loop.
    """

    def __init__(self, operation: str, times: int | None = 1) -> None:
        if times is not None and times < 1:
            msg = f"times must be >= 1 or None (every request), not {times}"
            raise ValueError(msg)
        self.operation = operation
        self.times = times
        self.fired = threading.Event()
        self._claimed = 0  # requests reserved for this fault (under the proxy's lock)
        self._hits = 0
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def hits(self) -> int:
        with self._lock:
            return self._hits

    async def wait_fired(self) -> None:
        """Wait until the fault acted, without blocking the running loop (which need not be
        the proxy's); bound it with ``asyncio.timeout``."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waiter = (loop, event)
        with self._lock:
            if self.fired.is_set():
                return
            self._waiters.append(waiter)
        try:
            await event.wait()
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _matches(self, operation: str) -> bool:
        if self.operation not in ("*", operation):
            return False
        return self.times is None or self._claimed < self.times

    def _acted(self) -> None:
        with self._lock:
            self._hits += 1
            self.fired.set()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            # The waiter's loop may be another thread's (or closed, if its test ended).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.operation!r}, times={self.times}, hits={self.hits})"


class Delay(Fault):
    """Forward the request, then hold its answer ``seconds`` before passing it on. Fires
    when the hold starts (the upstream has answered)."""

    def __init__(self, operation: str, seconds: float, times: int | None = 1) -> None:
        super().__init__(operation, times)
        self.seconds = seconds


class CutAnswer(Fault):
    """Forward the request (the write happens), read the whole answer, then close the
    client connection without sending it. Fires once the connection is closed."""


class Blackhole(Fault):
    """Forward the request (the write happens) and never answer; the client connection
    stays open until the client closes it or the proxy stops. Fires once the upstream
    answered (the write is done)."""


class Refuse(Fault):
    """Do not forward the request (the write does not happen); close the client connection
    at once. Fires once the connection is closed."""


# ------------------------------------------------------------------------------ HTTP


@dataclass
class _Head:
    start_line: str
    headers: list[tuple[str, str]]
    raw: bytes

    def get(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of every ``name`` header, lowercased."""
        name = name.lower()
        return {
            token.strip().lower()
            for key, value in self.headers
            if key.lower() == name
            for token in value.split(",")
            if token.strip()
        }

    def content_length(self) -> int | None:
        values = {value.strip() for key, value in self.headers if key.lower() == "content-length"}
        if not values:
            return None
        if len(values) > 1 or not next(iter(values)).isdigit():
            raise _ProtocolError(400, f"bad Content-Length: {sorted(values)}")
        return int(next(iter(values)))


@dataclass
class _Request:
    head: _Head
    body: bytes
    operation: str

    @property
    def method(self) -> str:
        return self.head.start_line.split(" ", 1)[0]

    @property
    def wants_close(self) -> bool:
        version = self.head.start_line.rsplit(" ", 1)[-1]
        connection = self.head.tokens("connection")
        return "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)

    def to_bytes(self) -> bytes:
        return self.head.raw + self.body


@dataclass
class _Response:
    raw: bytes = b""
    must_close: bool = False
    status: int = 0
    interim: list[bytes] = field(default_factory=list)


async def _read_head(reader: asyncio.StreamReader, *, first: bool) -> _Head | None:
    """The start line and headers of a message, verbatim in ``raw``; None on a clean EOF
    before a message (only when ``first``: the peer closed an idle keep-alive connection)."""
    raw = bytearray()
    line = await reader.readline()
    # RFC 9112 2.2: a server ignores at least one empty line before a request line.
    while line in (b"\r\n", b"\n"):
        line = await reader.readline()
    if not line:
        if first:
            return None
        raise asyncio.IncompleteReadError(bytes(raw), None)
    raw += line
    start_line = line.decode("latin-1").rstrip("\r\n")
    headers: list[tuple[str, str]] = []
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(bytes(raw + line), None)
        raw += line
        if len(raw) > _LINE_LIMIT:
            raise _ProtocolError(431, "message head too large")
        if line in (b"\r\n", b"\n"):
            return _Head(start_line, headers, bytes(raw))
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise _ProtocolError(400, f"malformed header line: {line!r}")
        headers.append((name, value.strip()))


def _operation_of(head: _Head, body: bytes) -> str:
    target = head.get("x-amz-target")
    if target:
        return target.rsplit(".", 1)[-1]
    content_type = (head.get("content-type") or "").lower()
    if content_type.startswith("application/x-www-form-urlencoded"):
        action = parse_qs(body.decode("latin-1")).get("Action")
        if action:
            return action[0]
    method, _, rest = head.start_line.partition(" ")
    return f"{method} {rest.rsplit(' ', 1)[0]}"


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> _Request | None:
    head = await _read_head(reader, first=True)
    if head is None:
        return None
    parts = head.start_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _ProtocolError(400, f"not an HTTP/1.x request line: {head.start_line!r}")
    if head.get("transfer-encoding") is not None:
        # botocore sends Content-Length for every request the tests make; a chunked body
        # would need re-framing here, which nothing needs yet.
        raise _ProtocolError(501, "faultproxy: chunked request bodies are not supported")
    if "100-continue" in head.tokens("expect"):
        # The client waits for a 100 before sending its body, but the proxy reads the whole
        # request before forwarding it: answer the 100 itself, and strip the Expect so the
        # upstream does not send a second 100 the client would take for the answer.
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        head = _without_header(head, "expect")
    length = head.content_length() or 0
    body = await reader.readexactly(length)
    return _Request(head, body, _operation_of(head, body))


def _without_header(head: _Head, name: str) -> _Head:
    lines = head.raw.split(b"\n")
    kept = [line for line in lines if not line.lower().startswith(name.encode() + b":")]
    headers = [(key, value) for key, value in head.headers if key.lower() != name]
    return _Head(head.start_line, headers, b"\n".join(kept))


async def _read_response(reader: asyncio.StreamReader, request: _Request) -> _Response:
    response = _Response()
    while True:
        head = await _read_head(reader, first=False)
        assert head is not None  # first=False raises on EOF instead
        parts = head.start_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise _ProtocolError(502, f"not an HTTP/1.x status line: {head.start_line!r}")
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            response.interim.append(head.raw)  # interim answers have no body; the final follows
            continue
        break
    response.status = status
    body = bytearray()
    connection = head.tokens("connection")
    response.must_close = "close" in connection or (
        parts[0] == "HTTP/1.0" and "keep-alive" not in connection
    )
    if request.method == "HEAD" or status in (101, 204, 304):
        pass
    elif "chunked" in head.tokens("transfer-encoding"):
        body += await _read_chunked(reader)
    elif (length := head.content_length()) is not None:
        body += await reader.readexactly(length)
    else:
        # No length: the body runs to the end of the connection (RFC 9112 6.3).
        body += await reader.read()
        response.must_close = True
    response.raw = b"".join(response.interim) + head.raw + bytes(body)
    return response


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, verbatim (sizes, extensions and trailers included)."""
    raw = bytearray()
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(bytes(raw + line), None)
        raw += line
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _ProtocolError(502, f"bad chunk size line: {line!r}") from None
        if size == 0:
            break
        raw += await reader.readexactly(size + 2)  # the chunk and its CRLF
    while True:  # trailers, up to the empty line
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(bytes(raw + line), None)
        raw += line
        if line in (b"\r\n", b"\n"):
            return bytes(raw)


def _error_response(status: int, message: str) -> bytes:
    body = message.encode()
    return (
        f"HTTP/1.1 {status} faultproxy\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


# ------------------------------------------------------------------------------ proxy

F = TypeVar("F", bound=Fault)


class _Upstream:
    """The upstream connection of one client connection (opened on its first forwarded
    request, reopened after the upstream closed it)."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._closed: list[asyncio.StreamWriter] = []

    async def exchange(self, request: _Request) -> _Response:
        if self._reader is None or self._reader.at_eof():
            # Only an idle connection the upstream closed is replaced: a connection that
            # fails mid-request is passed on to the client as a failure, never retried
            # (a retry could repeat a write, which the tests must control).
            self.close()
            self._reader, self._writer = await asyncio.open_connection(
                self._host, self._port, limit=_LINE_LIMIT
            )
        assert self._writer is not None
        self._writer.write(request.to_bytes())
        await self._writer.drain()
        response = await _read_response(self._reader, request)
        if response.must_close:
            self.close()
        return response

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._closed.append(self._writer)
        self._reader = self._writer = None

    async def wait_closed(self) -> None:
        self.close()
        for writer in self._closed:
            await _wait_closed(writer)
        self._closed.clear()


class FaultProxy:
    """The proxy, on the loop that calls :meth:`start` (see :func:`running_proxy` for one
    on a thread of its own). ``add_fault``/``clear``/``seen``/``errors`` are thread-safe."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._seen: list[str] = []
        self._errors: list[str] = []
        self._server: asyncio.Server | None = None
        self._closing: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._port = 0

    @classmethod
    def for_url(cls, upstream_url: str) -> FaultProxy:
        """A proxy for ``http://HOST:PORT`` (e.g. moto's endpoint URL)."""
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            msg = f"need an http://HOST:PORT upstream, not {upstream_url!r}"
            raise ValueError(msg)
        return cls(parts.hostname, parts.port)

    async def start(self) -> None:
        """Listen on 127.0.0.1, on a free port."""
        self._closing = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_LINE_LIMIT)
        self._port = self._server.sockets[0].getsockname()[1]

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the proxy is not started")
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_fault(self, fault: F) -> F:
        """Add ``fault`` (after those already there: the first match wins); returns it."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Drop every fault (requests already claimed by one still get it)."""
        with self._lock:
            self._faults.clear()

    @property
    def seen(self) -> list[str]:
        """The operations of every request read from a client, in order (a copy), whether
        passed on or not."""
        with self._lock:
            return list(self._seen)

    @property
    def errors(self) -> list[str]:
        """What the proxy could not handle (see :class:`FaultProxyError`)."""
        with self._lock:
            return list(self._errors)

    async def aclose(self, *, check: bool = True) -> None:
        """Stop listening and close every connection (pending delays and blackholes end
        with the connection); then, when ``check``, raise :class:`FaultProxyError` if the
        proxy met HTTP it does not handle."""
        if self._closing is not None:
            self._closing.set()
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # a turn for the sockets of aborted transports to close
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        errors = self.errors
        if check and errors:
            raise FaultProxyError("faultproxy: " + "; ".join(errors))

    # ------------------------------------------------------------------ internals

    def _claim(self, operation: str) -> Fault | None:
        with self._lock:
            self._seen.append(operation)
            for fault in self._faults:
                if fault._matches(operation):
                    fault._claimed += 1
                    return fault
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing is None or self._closing.is_set():
            # Accepted just before aclose() stopped listening, too late for it to cancel.
            await _wait_closed(writer)
            return
        self._tasks.add(task)
        upstream = _Upstream(self.upstream_host, self.upstream_port)
        try:
            while await self._one_request(reader, writer, upstream):
                pass
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            # Either side going away mid-message is what the client (or upstream) chose, or
            # what a fault caused: the client sees the connection end, as it would without
            # the proxy.
            logger.debug("faultproxy: connection ended: %r", exc)
        except _ProtocolError as exc:
            with self._lock:
                self._errors.append(str(exc))
            await self._answer_and_linger(reader, writer, _error_response(exc.status, str(exc)))
        except asyncio.CancelledError:
            pass  # aclose(): the connection closes below
        except Exception as exc:  # a bug here must fail the test, not just drop a connection
            logger.exception("faultproxy: connection failed")
            with self._lock:
                self._errors.append(f"unexpected {exc!r}")
        finally:
            writer.close()
            await upstream.wait_closed()
            await _wait_closed(writer)
            self._tasks.discard(task)

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: _Upstream
    ) -> bool:
        """Serve one request; False when the client connection is to be closed."""
        request = await _read_request(reader, writer)
        if request is None:
            return False
        fault = self._claim(request.operation)
        if isinstance(fault, Refuse):
            writer.close()
            fault._acted()
            return False
        response = await upstream.exchange(request)
        if isinstance(fault, CutAnswer):
            writer.close()
            fault._acted()
            return False
        if isinstance(fault, Blackhole):
            fault._acted()
            await self._hold_until_closed(reader)
            return False
        if isinstance(fault, Delay):
            fault._acted()
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(fault.seconds):
                    await self._closing.wait()
            if self._closing.is_set():
                return False
        writer.write(response.raw)
        await writer.drain()
        return not (response.must_close or request.wants_close)

    async def _answer_and_linger(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes
    ) -> None:
        """Send ``answer`` and close, reading what the client still sends until it closes
        too: closing a socket with unread input resets the connection, and the reset can
        reach the client before the answer does (the rest of a chunked body, say)."""
        with contextlib.suppress(ConnectionError, TimeoutError):
            writer.write(answer)
            await writer.drain()
            writer.write_eof()
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._hold_until_closed(reader)

    async def _hold_until_closed(self, reader: asyncio.StreamReader) -> None:
        """Until the client closes the connection (what it reads meanwhile is dropped: it
        has no answer to wait for) or the proxy stops (which cancels this)."""
        while await reader.read(1 << 16):
            pass


async def _wait_closed(writer: asyncio.StreamWriter) -> None:
    """Until ``writer``'s socket is closed: a transport still open when the loop stops is
    reported as unclosed (a ResourceWarning, which the suite turns into an error)."""
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await writer.wait_closed()
    except (TimeoutError, asyncio.CancelledError):
        # Still flushing to a peer that does not read, or aclose() is not waiting for it:
        # drop what is left (the socket closes on the loop's next turn).
        writer.transport.abort()
    except ConnectionError:
        pass  # closed, if not gracefully


# ------------------------------------------------------------------------------ thread runner


class ProxyThread:
    """A :class:`FaultProxy` on an event loop of its own, in a daemon thread: for
    synchronous tests and for clients in other threads or processes."""

    def __init__(self, upstream_url: str) -> None:
        self.proxy = FaultProxy.for_url(upstream_url)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="faultproxy", daemon=True
        )

    def start(self) -> FaultProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop)
        try:
            future.result(_THREAD_TIMEOUT_S)
        except BaseException:
            self.stop(check=False)
            raise
        return self.proxy

    def stop(self, *, check: bool = True) -> None:
        """Close every connection and stop the thread; then, when ``check``, raise
        :class:`FaultProxyError` if the proxy met HTTP it does not handle."""
        try:
            if self._loop.is_running():
                future = asyncio.run_coroutine_threadsafe(
                    self.proxy.aclose(check=False), self._loop
                )
                future.result(_THREAD_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_THREAD_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()
        errors = self.proxy.errors
        if check and errors:
            raise FaultProxyError("faultproxy: " + "; ".join(errors))


@contextlib.contextmanager
def running_proxy(upstream_url: str) -> Iterator[FaultProxy]:
    """A started :class:`FaultProxy` in front of ``upstream_url``, on its own thread; on exit
    every connection is closed, and :class:`FaultProxyError` is raised if the proxy met
    HTTP it does not handle (unless the block already raised)."""
    runner = ProxyThread(upstream_url)
    proxy = runner.start()
    try:
        yield proxy
    except BaseException:
        runner.stop(check=False)
        raise
    runner.stop()
