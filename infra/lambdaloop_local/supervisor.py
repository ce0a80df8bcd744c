"""Restarts the local stack's servers when their process dies, as a managed service recovers.

A :class:`~lambdaloop_local.services.ChildProcessServer` (moto, redis-server) tells its
supervisor, from the thread that waited on it, that its process died on its own (a crash, an
OOM kill, ``kill -9``; not a :meth:`stop` or a test's deliberate ``kill()``). The supervisor
logs it, starts the server again on the same port, runs what must be redone afterwards
(moto's state is lost with its process: the stack makes the template's resources again) and
counts the restart. A server that keeps dying (``_MAX_RESTARTS`` within ``_WINDOW_S``) is left
down with an error: restarting it again would only hide the fault.

No polling: each process is waited on by a thread blocked in ``waitpid``; callers that need
to know a restart happened wait on :meth:`Supervisor.wait_for_restarts` (a condition).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable

from lambdaloop_local.services import ChildProcessServer, ServiceError, describe_exit

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)

#: A server that dies this often within the window is not restarted again.
_MAX_RESTARTS = 5
_WINDOW_S = 60.0


class Supervisor:
    """Watches servers by name; restarts each when its process dies on its own."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._servers: dict[str, ChildProcessServer] = {}
        self._restarts: Counter[str] = Counter()
        self._recent: defaultdict[str, deque[float]] = defaultdict(deque)
        self._after: defaultdict[str, list[Callable[[], None]]] = defaultdict(list)
        self._lost: dict[str, str] = {}

    def watch(self, name: str, server: ChildProcessServer, lost: str = "") -> None:
        """Restart ``server`` whenever its process dies on its own. ``lost`` says, in the
        restart's log line, what a restart loses (moto's state)."""
        with self._condition:
            self._servers[name] = server
            self._lost[name] = lost
        server.supervise(lambda _server, pid, status: self._died(name, pid, status))

    def after_restart(self, name: str, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each restart of ``name``, once it serves again, in the
        order the callbacks were added (on the supervisor's thread: it must not block long)."""
        with self._condition:
            self._after[name].append(callback)

    def restarts(self, name: str) -> int:
        """How many times ``name`` was restarted (its callbacks run) so far."""
        with self._condition:
            return self._restarts[name]

    def wait_for_restarts(self, name: str, count: int, timeout: float) -> bool:
        """Block until ``name`` was restarted ``count`` times in all; False after ``timeout``."""
        with self._condition:
            return self._condition.wait_for(lambda: self._restarts[name] >= count, timeout)

    def close(self) -> None:
        """Stop supervising: servers that die from now on stay down. Idempotent."""
        with self._condition:
            servers = list(self._servers.values())
            self._servers.clear()
        for server in servers:
            server.supervise(None)

    def _died(self, name: str, pid: int, status: int) -> None:
        with self._condition:
            server = self._servers.get(name)
            recent = self._recent[name]
            now = time.monotonic()
            while recent and now - recent[0] > _WINDOW_S:
                recent.popleft()
            recent.append(now)
            looping = len(recent) > _MAX_RESTARTS
            lost = self._lost.get(name, "")
        if server is None:
            return
        if looping:
            logger.error(
                "%s (pid %d) %s: the %d-th death within %.0f s; not restarting it again",
                name,
                pid,
                describe_exit(status),
                len(recent),
                _WINDOW_S,
            )
            return
        logger.warning(
            "%s (pid %d) %s; restarting it on %s%s",
            name,
            pid,
            describe_exit(status),
            server.address,
            f" ({lost})" if lost else "",
        )
        try:
            if not server.revive():
                return  # stopped meanwhile, or started again by its owner
        except ServiceError:
            logger.exception("%s could not be restarted; it stays down", name)
            return
        with self._condition:
            callbacks = list(self._after[name])
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("%s: what follows its restart failed", name)
        logger.warning("%s is back on %s (pid %s)", name, server.address, server.pid)
        with self._condition:
            self._restarts[name] += 1
            self._condition.notify_all()
