"""The servers the local stack runs: moto (AWS), Redis, and a silent TCP peer for failure tests.

One mechanism for ``lambdaloop dev`` and for the test suite's fixtures:

- :class:`MotoServer`: moto in server mode, in a child process of its own
  (:mod:`lambdaloop_local.moto_child`).
- :class:`RedisServer`: a real ``redis-server`` child process on a free port when the binary is
  on PATH, else an embedded ``fakeredis.TcpFakeServer`` served from a thread.
- :class:`SilentServer`: accepts TCP connections and never answers (a hung Redis or dependency).

Every class starts with ``start()`` (which returns only once the server answers), stops with an
idempotent ``stop()``, and is a context manager. Nothing outlives ``stop()``: no child process,
no thread, no listening socket. A child process is waited on by a thread, so one that dies is
reaped at once and a supervisor (:mod:`lambdaloop_local.supervisor`) can restart it; each is
also registered with :mod:`atexit` as a last resort, so an interrupted run leaves nothing
running.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from fakeredis import TcpFakeServer

from lambdaloop_local.moto_patches import Bounds

__all__ = [
    "ChildProcessServer",
    "MotoServer",
    "RedisServer",
    "ServiceError",
    "SilentServer",
    "free_port",
]

logger = logging.getLogger(__name__)

_START_TIMEOUT = 10.0  # seconds a server gets to answer after start()
_CHILD_START_TIMEOUT = 60.0  # seconds the moto child gets to import moto and serve
_STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for a child process
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


#: What a supervisor is told when a child process dies on its own: the server, its pid, and
#: its exit status (negative: the signal that ended it).
DeathCallback = Callable[["ChildProcessServer", int, int], None]


class ChildProcessServer(_Managed):
    """A server that runs as a child process, with a thread that waits on it.

    The thread reaps the process as soon as it exits, so a server that dies never lingers as a
    zombie. When it dies on its own (not through :meth:`stop`), the callback given to
    :meth:`supervise` is told, on that thread, and may call :meth:`revive` to start it again on
    the same port; without one, it stays down until :meth:`start`. Nothing outlives
    :meth:`stop`: it ends the process and joins every thread; :mod:`atexit` ends a process
    nobody stopped.
    """

    #: The process's name in log lines.
    process_name = "server"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._wanted = False  # between start() and stop() or kill()
        self._watchers: list[threading.Thread] = []
        self._on_death: DeathCallback | None = None
        self._atexit_registered = False

    @property
    def pid(self) -> int | None:
        """The process's pid while it runs; None when it does not."""
        with self._lock:
            proc = self._proc
        if proc is None or proc.returncode is not None:
            return None
        return proc.pid

    @property
    def address(self) -> str:
        """``HOST:PORT`` the server listens on (the same after a restart)."""
        raise NotImplementedError

    def supervise(self, on_death: DeathCallback | None) -> None:
        """Have ``on_death(server, pid, status)`` called when the process dies on its own."""
        with self._lock:
            self._on_death = on_death

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start the process and return it once it serves; raise ServiceError (with nothing
        left running) when it does not."""
        raise NotImplementedError

    def _launch(self) -> None:
        """Start the process (start()'s part once the port is settled)."""
        proc = self._spawn()
        with self._lock:
            self._wanted = True
            self._adopt(proc)
        if not self._atexit_registered:
            atexit.register(self._kill_at_exit)
            self._atexit_registered = True

    def _adopt(self, proc: subprocess.Popen[bytes]) -> None:
        """Make ``proc`` the server's process and start waiting on it (under the lock)."""
        self._proc = proc
        watcher = threading.Thread(
            target=self._watch,
            args=(proc,),
            name=f"{self.process_name}-{proc.pid}-watch",
            daemon=True,
        )
        self._watchers.append(watcher)
        watcher.start()

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        status = proc.wait()
        with self._lock:
            if self._proc is not proc:
                return  # stopped, killed or replaced on purpose
            self._proc = None
            on_death = self._on_death
        if proc.stdin is not None:
            proc.stdin.close()
        if on_death is None:
            logger.warning(
                "%s pid %d on %s exited (%s); it stays down until it is started again",
                self.process_name,
                proc.pid,
                self.address,
                describe_exit(status),
            )
            self._died_unsupervised()
            return
        on_death(self, proc.pid, status)

    def _died_unsupervised(self) -> None:
        """What the server does when its process died and nobody restarts it."""

    def revive(self) -> bool:
        """Start the process again after it died on its own, on the same port. False (and
        nothing started) when it was stopped meanwhile or already runs again."""
        with self._lock:
            if not self._wanted or self._proc is not None:
                return False
        proc = self._spawn()
        with self._lock:
            if self._wanted and self._proc is None:
                self._adopt(proc)
                return True
        _end(proc, self.process_name)  # stop() came first: it must not outlive it
        return False

    def stop(self) -> None:
        """End the process and join the threads that watched it. Idempotent."""
        with self._lock:
            self._wanted = False
            proc, self._proc = self._proc, None
            watchers, self._watchers = self._watchers, []
        try:
            if proc is not None:
                _end(proc, self.process_name)
        finally:
            for watcher in watchers:
                if watcher is not threading.current_thread():
                    watcher.join()
            self._stopped()
            if self._atexit_registered:
                atexit.unregister(self._kill_at_exit)
                self._atexit_registered = False

    def _stopped(self) -> None:
        """Release what the server holds besides its process (stop()'s last step)."""

    def _kill_at_exit(self) -> None:
        """Last resort at interpreter exit for a server nobody stopped."""
        with self._lock:
            self._wanted = False
            proc, self._proc = self._proc, None
        if proc is not None:
            logger.warning("%s pid %d was never stopped; killing it", self.process_name, proc.pid)
            proc.kill()
            proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
        self._stopped()


def describe_exit(status: int) -> str:
    """``killed by SIGKILL`` or ``exit status 1``, from a Popen return code."""
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


def _end(proc: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM, then SIGKILL after a grace period; always reaped, its stdin closed."""
    try:
        proc.send_signal(signal.SIGTERM)  # no-op if it has already exited
        try:
            proc.wait(timeout=_STOP_GRACE)
        except subprocess.TimeoutExpired:
            logger.warning("%s pid %d ignored SIGTERM; killing it", name, proc.pid)
            proc.kill()
    finally:
        proc.wait()  # always reap, even when interrupted above
        if proc.stdin is not None:
            proc.stdin.close()
    logger.info("%s pid %d stopped", name, proc.pid)


class MotoServer(ChildProcessServer):
    """moto in server mode, in a child process (``python -m lambdaloop_local.moto_child``)
    with the patches of :mod:`lambdaloop_local.moto_patches` and their memory ``bounds``.

    The listening socket is this process's: it is bound at start() (port 0 picks a free
    port), handed to each child, and closed at stop(), so the port stays the same and taken
    while moto restarts. Each MotoServer has its own state; :meth:`reset` clears it.
    """

    process_name = "moto"

    def __init__(self, host: str = "127.0.0.1", port: int = 5000, bounds: Bounds | None = None):
        super().__init__()
        self._host = host
        self._port = port  # 0 = pick a free port at start()
        self._bounds = bounds or Bounds()
        self._listener: socket.socket | None = None

    @property
    def endpoint_url(self) -> str:
        """``http://HOST:PORT`` of the running server (what boto3's ``endpoint_url`` takes)."""
        return f"http://{self.address}"

    @property
    def address(self) -> str:
        listener = self._listener
        if listener is None:
            msg = "MotoServer is not running; call start() first"
            raise ServiceError(msg)
        host, port = listener.getsockname()[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        """Start serving; return once the server answers. No-op when already running."""
        if self.pid is not None:
            return
        self._listen()
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise
        logger.info("moto server listening on %s (pid %s)", self.endpoint_url, self.pid)

    def _listen(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._port))
            listener.listen(128)
        except OSError as exc:
            listener.close()
            msg = (
                f"moto server: cannot listen on {self._host}:{self._port} ({exc.strerror});"
                " is the port taken?"
            )
            raise ServiceError(msg) from exc
        self._listener = listener
        self._port = listener.getsockname()[1]  # the same port on every restart

    def _spawn(self) -> subprocess.Popen[bytes]:
        listener = self._listener
        if listener is None:  # it died unsupervised, then start() was called
            self._listen()
            listener = self._listener
            assert listener is not None
        bounds = self._bounds
        argv = [
            sys.executable, "-m", "lambdaloop_local.moto_child",
            "--host", self._host,
            "--port", str(self._port),
            "--fd", str(listener.fileno()),
            "--watch-stdin",
            "--stream-records", str(bounds.stream_records),
            "--ttl-sweep-s", str(bounds.ttl_sweep_s),
            "--deleted-handles", str(bounds.deleted_handles),
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,  # its end of file tells the child this process is gone
            stdout=subprocess.PIPE,  # one line, "ready", once it serves
            pass_fds=(listener.fileno(),),
        )
        try:
            _wait_for_ready_line(proc, f"moto server on {self.address}")
        except BaseException:
            _end(proc, self.process_name)
            raise
        return proc

    def _died_unsupervised(self) -> None:
        # Nobody will serve the port: clients get "connection refused", as from a dead server,
        # rather than waiting in the backlog of a socket that is never accepted from.
        self._close_listener()

    def _stopped(self) -> None:
        self._close_listener()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def reset(self) -> None:
        """Clear all moto state (``POST /moto-api/reset``); for tests."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=_START_TIMEOUT) as response:
            response.read()


def _wait_for_ready_line(proc: subprocess.Popen[bytes], what: str) -> None:
    """Wait for the child's "ready" line on its stdout; raise ServiceError when it exits or
    stays silent for ``_CHILD_START_TIMEOUT``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout=_CHILD_START_TIMEOUT)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    if line.strip() == b"ready":
        return
    if ready:  # end of file: it exited
        msg = f"{what} exited before serving ({describe_exit(proc.wait())})"
    else:
        msg = f"{what} did not start within {_CHILD_START_TIMEOUT}s"
    raise ServiceError(msg)


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


class RedisServer(_RedisEndpoint, ChildProcessServer):
    """A real redis-server on a free port when the binary is on PATH, else an embedded fakeredis
    TCP server.

    Port 0 picks a free port at the first start(); restart() and a supervisor's revive() reuse
    it. Data does not survive a stop, kill or restart (no RDB, no AOF).
    """

    process_name = "redis-server"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        prefer_real: bool = True,
        binary: str | None = None,
    ) -> None:
        ChildProcessServer.__init__(self)
        self._host = host
        self._port = port
        self._binary: str | None = None
        if prefer_real:
            self._binary = binary or shutil.which("redis-server")
        self._version: str | None = None
        self._dir: Path | None = None  # the real redis-server's folder (its log)
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
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server; return once it answers PING. No-op when already running."""
        if self.pid is not None or self._fake is not None:
            return
        if self._binary is not None:
            if self._port == 0:
                self._port = free_port(self._host)
            try:
                self._launch()
            except BaseException:
                self.stop()
                raise
        else:
            self._start_fake()
        logger.info("Redis: %s on %s", self.kind, self.url)

    def stop(self) -> None:
        """Stop the server and remove its temporary directory. Idempotent."""
        try:
            self._stop_fake()
        finally:
            ChildProcessServer.stop(self)

    def kill(self) -> None:
        """SIGKILL the real redis-server (an outage, for tests). The port then refuses
        connections until restart(); a supervisor leaves it down. Raises
        :class:`ServiceError` for the fake."""
        if self._binary is None:
            msg = "kill() needs a real redis-server; this is fakeredis (embedded)"
            raise ServiceError(msg)
        with self._lock:
            self._wanted = False
            proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()  # reap it: no zombie, the pid is gone
        logger.info("redis-server pid %d killed", proc.pid)

    def restart(self) -> None:
        """Start again on the same port (after kill(), stop(), or while running)."""
        self.stop()
        self.start()

    # -- real redis-server -----------------------------------------------------------------------

    @staticmethod
    def _read_version(binary: str) -> str:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=True, timeout=10
        ).stdout
        match = re.search(r"\bv=(\S+)", out)
        return match.group(1) if match else out.strip()

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self._binary is not None
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="lambdaloop-redis-"))
        log_file = self._dir / "redis.log"
        argv = [
            self._binary,
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
        try:
            self._wait_for_real(proc, log_file)
        except BaseException:
            _end(proc, self.process_name)
            raise
        return proc

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

    def _stopped(self) -> None:
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
