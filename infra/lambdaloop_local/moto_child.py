"""The moto server process: ``python -m lambdaloop_local.moto_child --host H --port P``.

:class:`lambdaloop_local.services.MotoServer` runs this as its child, so that moto's memory
and CPU are its own (measurable by pid, on the other core than the workers' and the
gateway's) and a crash or a kill takes only moto down. It applies
:mod:`lambdaloop_local.moto_patches`, then serves moto's werkzeug app, threaded, on the
listening socket the parent passes (``--fd``; the parent keeps it across restarts, so the
port never changes and a client connecting while moto restarts waits instead of being
refused), or on one it binds itself. It writes one line, ``ready``, to stdout once it serves.

It exits when its stdin reaches end of file: the parent holds the other end, so a parent that
dies without stopping it (SIGKILL) does not leave it behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence

from lambdaloop_local.moto_patches import Bounds, apply

__all__ = ["main"]


def _exit_when_orphaned() -> None:
    """Block until the parent's end of stdin closes, then end the process at once."""
    with open(sys.stdin.fileno(), "rb", closefd=False) as stdin:
        while stdin.read(4096):
            pass
    os._exit(0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lambdaloop_local.moto_child")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fd", type=int, help="a listening socket to serve on (inherited)")
    defaults = Bounds()
    parser.add_argument("--stream-records", type=int, default=defaults.stream_records)
    parser.add_argument("--ttl-sweep-s", type=float, default=defaults.ttl_sweep_s)
    parser.add_argument("--deleted-handles", type=int, default=defaults.deleted_handles)
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when stdin reaches end of file"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s moto[%(process)d] %(name)s: %(message)s",
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    if args.watch_stdin:
        threading.Thread(target=_exit_when_orphaned, name="orphan-watch", daemon=True).start()
    apply(
        Bounds(
            stream_records=args.stream_records,
            ttl_sweep_s=args.ttl_sweep_s,
            deleted_handles=args.deleted_handles,
        )
    )

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        args.host,
        args.port,
        app,
        threaded=True,
        request_handler=MotoRequestHandler,
        fd=args.fd,
    )
    # The parent reads this one line and closes the pipe: what moto prints later goes to
    # stderr, with its log.
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
