"""SnapStart: what an execution environment restored from a snapshot must not reuse.

With SnapStart, Lambda runs a published version's init once, snapshots the environment and
resumes new environments from that snapshot: whatever init left in memory is in every copy.
After a restore, :func:`after_restore` makes sure nothing from before the snapshot that is
bound to a connection or to the old event loop is used again:

- the clients (:mod:`lambdaloop.clients`: boto3 clients and their connection pools, the
  Redis pool, the aiohttp session; the fetcher's sessions; the thread pool of blocking
  calls) are closed and forgotten; the next call builds new ones. A connection made before
  the snapshot is, after it, one socket claimed by every restored copy, and long dead at
  the server;
- the event loop is replaced: its selector (an epoll descriptor) and its self-pipe were
  made before the snapshot. The old loop runs once more, to close the clients bound to it;
- the random module is re-seeded: every copy would draw the same numbers (``uuid4`` and
  ``secrets`` read ``os.urandom``, and are unaffected).

The layer opens no connection at init (clients are built by the first call that needs
them), so for its own code this is a safety net: for a function that warms a client at
init, or an init that ran something on the loop.

:func:`install` registers :func:`after_restore` with Lambda's runtime hooks (the
``snapshot_restore_py`` module of its Python runtimes); where that module is absent
(SnapStart off, tests, the local emulator unless it stands in for it) it does nothing.
:mod:`lambdaloop.runtime` installs it when imported, so every handler of the layer has it,
registered before any hook of the function's own (hooks run in registration order after a
restore, so the function's see the fresh clients).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import random
import sys

__all__ = ["after_restore", "install"]

logger = logging.getLogger(__name__)

#: Closing the old clients must not hold up the restore (Lambda allows the after-restore
#: hooks 10 s in all): whatever is not closed by then is dropped.
_CLOSE_TIMEOUT_S = 2.0

_installed = False


def install() -> bool:
    """Register :func:`after_restore` with the runtime's after-restore hooks, once.

    False (and nothing done) where the runtime has no hooks.
    """
    global _installed  # noqa: PLW0603 - once per execution environment
    if _installed:
        return True
    try:
        hooks = importlib.import_module("snapshot_restore_py")
    except ImportError:
        return False
    hooks.register_after_restore(after_restore)
    _installed = True
    return True


def after_restore() -> None:
    """Close and forget what is bound to connections or to the old loop; re-seed random."""
    from lambdaloop.runtime import discard_loop

    old = discard_loop()
    loop = old if old is not None and not old.is_closed() else asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(_close_clients(), _CLOSE_TIMEOUT_S))
    except Exception:
        # What could not be closed is still forgotten (it was bound to the old loop, or
        # is rebuilt on the next call): a restore must not fail for a stale connection.
        logger.warning("after restore: some clients could not be closed", exc_info=True)
    finally:
        loop.close()
    random.seed()


async def _close_clients() -> None:
    # Modules that were never imported built nothing: no need to import them now.
    clients = sys.modules.get("lambdaloop.clients")
    if clients is not None:
        await clients.aclose_clients()
    ssrf = sys.modules.get("lambdaloop.ssrf")
    if ssrf is not None:
        await ssrf.aclose_sessions()
