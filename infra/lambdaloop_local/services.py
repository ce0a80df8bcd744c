"""The servers the local stack runs: moto (AWS), Redis, and a silent TCP peer for failure tests.

One mechanism for ``lambdaloop dev`` and for the test suite's fixtures:

- :class:`MotoServer`: moto in server mode, in this process (``moto.server.ThreadedMotoServer``).
- :class:`RedisServer`: a real ``redis-server`` child process on a free port when the binary is
  on PATH, else an embedded ``fakeredis.TcpFakeServer`` served from a thread.
- :class:`SilentServer`: accepts TCP connections and never answers (a hung Redis or dependency).

Every class starts with ``start()`` (which returns only once the server answers), stops with an
idempotent ``stop()``, and is a context manager. Nothing outlives ``stop()``: no child process,
no thread, no listening socket. A real ``redis-server`` is also registered with :mod:`atexit` as a
last resort, so an interrupted run leaves nothing running.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import http.client
import json
import logging
import re
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from fakeredis import TcpFakeServer
from moto.server import ThreadedMotoServer

__all__ = [
    "MotoServer",
    "RedisServer",
    "ServiceError",
    "SilentServer",
    "free_port",
]

logger = logging.getLogger(__name__)

_START_TIMEOUT = 10.0  # seconds a server gets to answer after start()
_STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for redis-server
_PROBE_TIMEOUT = 0.2  # one readiness probe (connect + request + reply)
_POLL_INTERVAL = 0.02  # pause between readiness probes
_FAKE_POLL_INTERVAL = 0.1  # how often the fakeredis accept loop checks for shutdown
_LOG_TAIL_LINES = 20


class ServiceError(RuntimeError):
    """A local service could not start, or was asked for something it cannot do."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is free when this returns; another process may take it before the caller binds it.
    Prefer binding port 0 directly where the server allows it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _ensure_port_free(host: str, port: int, what: str) -> None:
    """Raise :class:`ServiceError` when something already listens on ``host:port``.

    Uses SO_REUSEADDR like the servers do, so a port left in TIME_WAIT by a stopped server counts
    as free (the server will be able to bind it) and only a live listener counts as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            msg = f"{what}: cannot listen on {host}:{port} ({exc.strerror}); is the port taken?"
            raise ServiceError(msg) from exc


def _redis_answers(host: str, port: int) -> bool:
    """True when ``host:port`` answers ``PING``, sent as a RESP array (fakeredis ignores the
    inline form)."""
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class _Managed:
    """``with server:`` starts it and always stops it."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_dynamodb_lock = threading.Lock()

#: How long DynamoDB remembers a TransactWriteItems' ClientRequestToken after the request.
_CLIENT_TOKEN_TTL_S = 600.0
#: Where a moto DynamoDB backend keeps the tokens: an attribute of the backend object, so
#: moto's reset (which clears every backend's attributes) forgets them with the tables.
_CLIENT_TOKENS_ATTRIBUTE = "_lambdaloop_client_tokens"


@dataclass(frozen=True, slots=True)
class _CompletedTransaction:
    digest: str
    response: tuple[int, dict[str, Any], Any]
    completed_at: float


def _serialize_dynamodb_requests() -> None:
    """Make moto's DynamoDB requests take turns, as AWS applies each write atomically, and
    make TransactWriteItems honour ClientRequestToken, which moto ignores.

    moto's server answers every request on its own thread, and its DynamoDB backend has no
    lock: two conditional writes to one item can both pass their condition before either is
    applied (an optimistic update then loses a write that AWS would have refused). One lock
    around each DynamoDB request restores DynamoDB's behaviour; moto holds the GIL throughout
    anyway, so little is lost. Idempotent.
    """
    from moto.dynamodb.responses import DynamoHandler

    call_action = DynamoHandler.call_action
    if getattr(call_action, "_lambdaloop_serialized", False):
        return

    @functools.wraps(call_action)
    def serialized(self: DynamoHandler) -> Any:
        with _dynamodb_lock:
            if self._get_action() == "TransactWriteItems":
                return _transact_write_items(self, lambda: call_action(self))
            return call_action(self)

    serialized._lambdaloop_serialized = True  # type: ignore[attr-defined]
    DynamoHandler.call_action = serialized  # type: ignore[method-assign]


def _transact_write_items(handler: Any, call: Any) -> Any:
    """A TransactWriteItems as DynamoDB runs it: for 10 minutes after a request with a
    ClientRequestToken succeeds, the same request again succeeds without writing anything
    (even where its conditions would now fail), and the token with another request fails
    with IdempotentParameterMismatchException.

    Only a success is remembered. AWS documents the success case alone ("If the original
    TransactWriteItems call was successful, the subsequent TransactWriteItems calls with the
    same client token return successfully without making any changes"); a cancelled or
    rejected transaction wrote nothing, so a repeat is run as a new request, which is what
    the SDKs' retries of a failed call expect. Runs under the DynamoDB lock.
    """
    request = json.loads(handler.body or "{}") if isinstance(handler.body, str | bytes) else {}
    token = request.pop("ClientRequestToken", None)
    if not token:
        return call()
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    backend = handler.dynamodb_backend
    tokens: dict[str, _CompletedTransaction] = backend.__dict__.setdefault(
        _CLIENT_TOKENS_ATTRIBUTE, {}
    )
    now = time.monotonic()
    for old in [t for t, done in tokens.items() if now - done.completed_at > _CLIENT_TOKEN_TTL_S]:
        del tokens[old]
    done = tokens.get(token)
    if done is not None and done.digest != digest:
        return _idempotent_parameter_mismatch()
    if done is not None:
        status, headers, body = done.response
        return status, dict(headers), body
    status, headers, body = call()
    if status == 200:
        tokens[token] = _CompletedTransaction(
            digest, (status, dict(headers), body), time.monotonic()
        )
    return status, headers, body


def _idempotent_parameter_mismatch() -> tuple[int, dict[str, Any], str]:
    from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException

    error = DynamodbException(
        ERROR_TYPE_PREFIX + "IdempotentParameterMismatchException",
        "Request parameters do not match the request that first used this client token",
    )
    return 400, dict(error.get_headers()), error.get_body()


#: AWS expires a shard iterator 15 minutes after handing it out.
_SHARD_ITERATOR_TTL_S = 900.0
_streams_lock = threading.Lock()


def _expire_shard_iterators() -> None:
    """Make moto's DynamoDB Streams forget shard iterators after 15 minutes, as AWS does.

    moto keeps every iterator it hands out, and each GetRecords hands out one: a stream
    poller (four reads a second) would grow the process by tens of MB an hour. An expired or
    unknown iterator gets AWS's ExpiredIteratorException rather than moto's server error.
    Idempotent.
    """
    from moto.core.exceptions import JsonRESTError
    from moto.dynamodbstreams.models import DynamoDBStreamsBackend

    get_shard_iterator = DynamoDBStreamsBackend.get_shard_iterator
    get_records = DynamoDBStreamsBackend.get_records
    if getattr(get_records, "_lambdaloop_expiring", False):
        return
    born: dict[str, float] = {}  # iterator ARN -> when it was handed out, oldest first

    def forget_expired(backend: DynamoDBStreamsBackend) -> None:
        deadline = time.monotonic() - _SHARD_ITERATOR_TTL_S
        while born and next(iter(born.values())) < deadline:
            arn = next(iter(born))
            del born[arn]
            backend.shard_iterators.pop(arn, None)

    @functools.wraps(get_shard_iterator)
    def expiring_iterator(self: DynamoDBStreamsBackend, *args: Any, **kwargs: Any) -> Any:
        with _streams_lock:
            forget_expired(self)
            iterator = get_shard_iterator(self, *args, **kwargs)
            born[iterator.arn] = time.monotonic()
            return iterator

    @functools.wraps(get_records)
    def expiring_records(self: DynamoDBStreamsBackend, iterator_arn: str, limit: int) -> Any:
        with _streams_lock:
            forget_expired(self)
            if iterator_arn not in self.shard_iterators:
                raise JsonRESTError(
                    "ExpiredIteratorException", "The shard iterator has expired or is unknown"
                )
            result = get_records(self, iterator_arn, limit)
            born[result["NextShardIterator"]] = time.monotonic()
            return result

    expiring_records._lambdaloop_expiring = True  # type: ignore[attr-defined]
    DynamoDBStreamsBackend.get_shard_iterator = expiring_iterator  # type: ignore[method-assign]
    DynamoDBStreamsBackend.get_records = expiring_records  # type: ignore[method-assign]


_sqs_receive_lock = threading.Lock()


def _serialize_sqs_receives() -> None:
    """Make each of moto's SQS receives take its messages alone, as SQS hides a received message.

    moto checks that a message is visible and then marks it received without a lock, so two
    concurrent ReceiveMessage calls can both take the same message. SQS makes a received
    message invisible to every other receive for its visibility timeout. Each pass over the
    queue now runs under one lock; the long-poll wait runs outside it, so a waiting poller
    does not hold up the others. Idempotent.
    """
    from moto.sqs.models import SQSBackend

    receive = SQSBackend.receive_message
    if getattr(receive, "_lambdaloop_serialized", False):
        return

    @functools.wraps(receive)
    def serialized(
        self: SQSBackend,
        queue_name: str,
        count: int,
        wait_seconds_timeout: int,
        visibility_timeout: int,
        *rest: Any,
    ) -> Any:
        deadline = time.monotonic() + wait_seconds_timeout
        while True:
            with _sqs_receive_lock:
                taken = receive(self, queue_name, count, 0, visibility_timeout, *rest)
            left = deadline - time.monotonic()
            if taken or left <= 0:
                return taken
            self.get_queue(queue_name).wait_for_messages(min(1.0, left))  # type: ignore[arg-type]

    serialized._lambdaloop_serialized = True  # type: ignore[attr-defined]
    SQSBackend.receive_message = serialized  # type: ignore[method-assign,assignment]


class MotoServer(_Managed):
    """moto in server mode, in-process (moto.server.ThreadedMotoServer).

    moto keeps its backends in module globals, so every MotoServer in one process (and any
    ``mock_aws`` in it) shares the same state; :meth:`reset` clears all of it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 5000) -> None:
        self._host = host
        self._port = port  # 0 = pick a free port at start()
        self._server: ThreadedMotoServer | None = None
        self._bound: tuple[str, int] | None = None

    @property
    def endpoint_url(self) -> str:
        """``http://HOST:PORT`` of the running server (what boto3's ``endpoint_url`` takes)."""
        if self._bound is None:
            msg = "MotoServer is not running; call start() first"
            raise ServiceError(msg)
        host, port = self._bound
        return f"http://{host}:{port}"

    def start(self) -> None:
        """Start serving; return once the server answers HTTP. No-op when already running."""
        if self._server is not None:
            return
        if self._port != 0:
            # ThreadedMotoServer.start() waits without a bound for its thread to bind: when the
            # bind fails, the thread dies and start() never returns. Check first. (A process
            # taking the port between this check and the bind is the one case left uncovered.)
            _ensure_port_free(self._host, self._port, "moto server")
        _serialize_dynamodb_requests()
        _serialize_sqs_receives()
        _expire_shard_iterators()
        server = ThreadedMotoServer(ip_address=self._host, port=self._port, verbose=False)
        server.start()
        self._server = server
        try:
            host, port = server.get_host_and_port()
            self._bound = (host, port)
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        logger.info("moto server listening on %s", self.endpoint_url)

    def _wait_until_answering(self) -> None:
        assert self._bound is not None
        host, port = self._bound
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            conn = http.client.HTTPConnection(host, port, timeout=_PROBE_TIMEOUT)
            try:
                conn.request("HEAD", "/moto-api/")
                conn.getresponse().read()
            except OSError:
                if time.monotonic() >= deadline:
                    msg = f"moto server on {host}:{port} did not answer within {_START_TIMEOUT}s"
                    raise ServiceError(msg) from None
                time.sleep(_POLL_INTERVAL)
            else:
                return
            finally:
                conn.close()

    def stop(self) -> None:
        """Stop serving and free the port. Idempotent."""
        server, self._server = self._server, None
        self._bound = None
        if server is None:
            return
        # Shuts the werkzeug server down, which closes the listening socket, and joins its thread.
        server.stop()
        logger.info("moto server stopped")

    def reset(self) -> None:
        """Clear all moto state (``POST /moto-api/reset``); for tests."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=_START_TIMEOUT) as response:
            response.read()


class _RedisEndpoint(_Managed):
    """host/port/url of a server that clients reach as ``redis://HOST:PORT/0``."""

    _host: str
    _port: int  # 0 until start() picked one

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The port; with ``port=0`` it is known once start() has run."""
        if self._port == 0:
            msg = f"{type(self).__name__}(port=0) has no port until start()"
            raise ServiceError(msg)
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{self._host}:{self.port}/0"


class RedisServer(_RedisEndpoint):
    """A real redis-server on a free port when the binary is on PATH, else an embedded fakeredis
    TCP server.

    Port 0 picks a free port at the first start(); restart() reuses it. Data does not survive a
    stop, kill or restart (no RDB, no AOF).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        prefer_real: bool = True,
        binary: str | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._binary: str | None = None
        if prefer_real:
            self._binary = binary or shutil.which("redis-server")
        self._version: str | None = None
        # real redis-server
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._atexit_registered = False
        # embedded fakeredis
        self._fake: TcpFakeServer | None = None
        self._fake_thread: threading.Thread | None = None

    # -- properties ------------------------------------------------------------------------------

    @property
    def is_real(self) -> bool:
        """True for a real ``redis-server`` process, False for the embedded fakeredis."""
        return self._binary is not None

    @property
    def kind(self) -> str:
        """``"redis-server 7.0.15"`` or ``"fakeredis (embedded)"``: what start-up reports."""
        if self._binary is None:
            return "fakeredis (embedded)"
        if self._version is None:
            self._version = self._read_version(self._binary)
        return f"redis-server {self._version}"

    @property
    def pid(self) -> int | None:
        """The redis-server's pid while it runs; None when it does not, or for the fake."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server; return once it answers PING. No-op when already running."""
        if self._proc is not None or self._fake is not None:
            return
        if self._binary is not None:
            self._start_real(self._binary)
        else:
            self._start_fake()
        logger.info("Redis: %s on %s", self.kind, self.url)

    def stop(self) -> None:
        """Stop the server and remove its temporary directory. Idempotent."""
        try:
            self._stop_fake()
            self._stop_real()
        finally:
            self._remove_dir()
            if self._atexit_registered:
                atexit.unregister(self._kill_at_exit)
                self._atexit_registered = False

    def kill(self) -> None:
        """SIGKILL the real redis-server (an outage, for tests). The port then refuses
        connections until restart(). Raises :class:`ServiceError` for the fake."""
        if self._binary is None:
            msg = "kill() needs a real redis-server; this is fakeredis (embedded)"
            raise ServiceError(msg)
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()  # reap it: no zombie, the pid is gone
        logger.info("redis-server pid %d killed", proc.pid)

    def restart(self) -> None:
        """Start again on the same port (after kill(), stop(), or while running)."""
        self._stop_fake()
        self._stop_real()
        self.start()

    # -- real redis-server -----------------------------------------------------------------------

    @staticmethod
    def _read_version(binary: str) -> str:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
        match = re.search(r"\bv=(\S+)", out)
        return match.group(1) if match else out.strip()

    def _start_real(self, binary: str) -> None:
        if self._port == 0:
            self._port = free_port(self._host)
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="lambdaloop-redis-"))
        log_file = self._dir / "redis.log"
        argv = [
            binary,
            "--port", str(self._port),
            "--bind", self._host,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self._dir),
            "--logfile", str(log_file),
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._proc = proc
        if not self._atexit_registered:
            atexit.register(self._kill_at_exit)
            self._atexit_registered = True
        try:
            self._wait_for_real(proc, log_file)
        except BaseException:
            self._stop_real()
            raise

    def _wait_for_real(self, proc: subprocess.Popen[bytes], log_file: Path) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while not _redis_answers(self._host, self._port):
            if time.monotonic() >= deadline:
                msg = (
                    f"redis-server did not answer PING on {self._host}:{self._port} within "
                    f"{_START_TIMEOUT}s; log tail:\n{_tail(log_file)}"
                )
                raise ServiceError(msg)
            try:
                code = proc.wait(timeout=_POLL_INTERVAL)  # doubles as the pause between probes
            except subprocess.TimeoutExpired:
                continue
            msg = (
                f"redis-server exited with status {code} on {self._host}:{self._port}; "
                f"log tail:\n{_tail(log_file)}"
            )
            raise ServiceError(msg)

    def _stop_real(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.send_signal(signal.SIGTERM)  # no-op if it has already exited
            try:
                proc.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                logger.warning("redis-server pid %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
        finally:
            proc.wait()  # always reap, even when interrupted above
        logger.info("redis-server pid %d stopped", proc.pid)

    def _kill_at_exit(self) -> None:
        """Last resort at interpreter exit for a server nobody stopped."""
        if self._proc is not None:
            logger.warning("redis-server pid %d was never stopped; killing it", self._proc.pid)
            self.kill()
        self._remove_dir()

    def _remove_dir(self) -> None:
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    # -- embedded fakeredis ----------------------------------------------------------------------

    def _start_fake(self) -> None:
        try:
            server = TcpFakeServer((self._host, self._port))  # binds and listens here
        except OSError as exc:
            msg = f"fakeredis: cannot listen on {self._host}:{self._port} ({exc.strerror})"
            raise ServiceError(msg) from exc
        self._fake = server
        self._port = server.server_address[1]
        self._fake_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _FAKE_POLL_INTERVAL},
            name=f"fakeredis-{self._port}",
            daemon=True,
        )
        self._fake_thread.start()
        try:
            deadline = time.monotonic() + _START_TIMEOUT
            while not _redis_answers(self._host, self._port):
                if time.monotonic() >= deadline:
                    msg = f"fakeredis did not answer PING on {self._host}:{self._port}"
                    raise ServiceError(msg)
                time.sleep(_POLL_INTERVAL)
        except BaseException:
            self._stop_fake()
            raise

    def _stop_fake(self) -> None:
        server, self._fake = self._fake, None
        thread, self._fake_thread = self._fake_thread, None
        if server is None:
            return
        try:
            server.shutdown()  # ends serve_forever and tells connection handlers to finish
        finally:
            server.server_close()  # closes the socket and joins the handler threads
            if thread is not None:
                thread.join()
        logger.info("fakeredis on port %d stopped", self._port)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip() or "(empty log)"
    except OSError as exc:
        return f"(no log: {exc.strerror})"


class SilentServer(_RedisEndpoint):
    """A TCP server that accepts connections and never answers (a hung Redis / hung dependency),
    for tests and benchmarks.

    One thread accepts connections and keeps them open, unread, until stop().
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._accepted: list[socket.socket] = []
        self._accept_count = 0
        self._lock = threading.Lock()

    @property
    def connections(self) -> int:
        """How many connections it has accepted since it started: a client that stopped
        calling (a circuit breaker) stops adding to it."""
        with self._lock:
            return self._accept_count

    def start(self) -> None:
        """Listen and start accepting. No-op when already running."""
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._port))
            listener.listen()
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            msg = f"silent server: cannot listen on {self._host}:{self._port} ({exc.strerror})"
            raise ServiceError(msg) from exc
        self._wake_r, self._wake_w = socket.socketpair()
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._accept_loop,
            args=(listener, self._wake_r),
            name=f"silent-server-{self._port}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("silent server listening on %s:%d", self._host, self._port)

    def _accept_loop(self, listener: socket.socket, wake: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is wake:
                        return
                    with contextlib.suppress(BlockingIOError):
                        conn, _addr = listener.accept()
                        with self._lock:
                            self._accepted.append(conn)
                            self._accept_count += 1

    def stop(self) -> None:
        """Close every connection and the listener, and join the thread. Idempotent."""
        listener, self._listener = self._listener, None
        thread, self._thread = self._thread, None
        wake_r, self._wake_r = self._wake_r, None
        wake_w, self._wake_w = self._wake_w, None
        try:
            if wake_w is not None:
                wake_w.send(b"x")
            if thread is not None:
                thread.join()
        finally:
            with self._lock:
                accepted, self._accepted = self._accepted, []
            for sock in (*accepted, listener, wake_r, wake_w):
                if sock is not None:
                    sock.close()
