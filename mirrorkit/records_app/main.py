"""``mirrorkit-records-app``: run records-app until SIGTERM / SIGINT.

On SIGTERM (``systemctl stop records-app``, the ``on_demote`` hook) it stops
accepting, lets the requests in flight finish (each is bounded by
``--request-timeout``) and exits 0: a write that was answered 201 is on disk.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TypeVar

from mirrorkit.records_app.server import Limits, make_server

__all__ = ["main"]

log = logging.getLogger("records-app")
Number = TypeVar("Number", int, float)


def _number_in(kind: Callable[[str], Number], low: Number, high: Number,
               noun: str) -> Callable[[str], Number]:
    """An argparse type: KIND(text) within LOW..HIGH, or a usage error naming both."""
    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}..{high:g}")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mirrorkit-records-app",
        description="records-app: store each HTTP write as a durable file under the "
                    "mirrored path (the demo application on a mirror's VIP).")
    p.add_argument("--listen", default="0.0.0.0", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=_number_in(int, 0, 65535, "a whole number"),
                   default=8080,
                   help="TCP port (default %(default)s; 0: any free port)")
    p.add_argument("--data-dir", type=Path, default=Path("/srv/records/app"),
                   help="directory of the records, under the mirrored path "
                        "(default %(default)s; created if missing)")
    p.add_argument("--host-name", default=socket.gethostname(),
                   help="host name in ids and answers (default: this host's, %(default)s)")
    p.add_argument("--max-body", type=_number_in(int, 1, 64 << 20, "a whole number"),
                   default=1 << 20,
                   help="largest record in bytes (default %(default)s)")
    p.add_argument("--max-connections", type=_number_in(int, 1, 4096, "a whole number"),
                   default=64,
                   help="connections served at once; more are answered 503 "
                        "(default %(default)s)")
    p.add_argument("--request-timeout",
                   type=_number_in(float, 0.1, 3600.0, "a number of seconds"), default=30.0,
                   help="seconds a connection may take from accept to answer "
                        "(default %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="records-app: %(levelname)s %(message)s")
    limits = Limits(max_body=args.max_body, max_connections=args.max_connections,
                    request_seconds=args.request_timeout)
    try:
        server = make_server(args.listen, args.port, args.data_dir, args.host_name, limits)
    except OSError as exc:
        what = f"{args.listen}:{args.port}" if exc.filename is None else exc.filename
        print(f"mirrorkit-records-app: cannot start: {what}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: finishing the requests in flight, then exiting",
                 signal.Signals(signum).name)
        # shutdown() waits for serve_forever() to return: not from its own thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    log.info("serving on %s:%s, records in %s (host %s)", host, port,
             server.store.data_dir, server.store.host)
    print(f"records-app listening on {host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()  # joins the request threads
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
