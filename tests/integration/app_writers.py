"""The applications of test_mount_apps.py, each run as its own process (the
test SIGKILLs it with the rest of the primary "host"): a loop of committed
transactions, one row each with the next sequence number; after each
COMMIT has returned, that number is appended to the acknowledged record
(a file *outside* the mount) and fsynced. So every number in the record
was reported committed to the application before the kill.

    python app_writers.py sqlite DB ACKS SECONDS
    python app_writers.py postgres SOCKET_DIR ACKS SECONDS

Each stops by itself after SECONDS (the test's bound), or at the first
error (the mount turning read-only or dead), which it prints.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pgwire import PgConn  # type: ignore[import-not-found]

CHECKPOINT_EVERY = 150  # PostgreSQL: checkpoints mid-load too, not only WAL
SQLITE_CHECKPOINT_PAGES = 50


def _tag(seq: int) -> str:
    return f"tag-{seq * 7919 % 1000:04d}"  # scattered: each commit touches index pages


def _loop(commit: Callable[[int], None], acks: Path, seconds: float) -> int:
    fd = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    end = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < end:
        seq += 1
        commit(seq)  # returns once the database reported the COMMIT done
        os.write(fd, f"{seq}\n".encode())
        os.fsync(fd)
    return seq


def sqlite_app(db: str, acks: Path, seconds: float) -> int:
    con = sqlite3.connect(db, isolation_level=None)  # we say BEGIN and COMMIT
    mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    assert mode == "wal", f"journal_mode is {mode!r}, not wal"
    con.execute("PRAGMA synchronous=FULL")
    # Checkpoints (WAL into the database file, then the WAL restarted from
    # its start) several times within the load, not once in 1000 pages:
    # where a replica that got the writes out of order would break.
    con.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_PAGES}")
    con.execute("CREATE TABLE IF NOT EXISTS t (seq INTEGER PRIMARY KEY, tag TEXT, body BLOB)")
    con.execute("CREATE INDEX IF NOT EXISTS t_tag ON t (tag)")

    def commit(seq: int) -> None:
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO t VALUES (?, ?, randomblob(?))",
                    (seq, _tag(seq), 200 + seq * 37 % 6000))  # overflow pages too
        con.execute("COMMIT")

    return _loop(commit, acks, seconds)


def postgres_app(socket_dir: str, acks: Path, seconds: float) -> int:
    pg = PgConn(Path(socket_dir))
    pg.query("CREATE TABLE IF NOT EXISTS t (seq integer PRIMARY KEY, tag text, body text)")
    pg.query("CREATE INDEX IF NOT EXISTS t_tag ON t (tag)")

    def commit(seq: int) -> None:
        # Autocommit: ReadyForQuery after CommandComplete means committed
        # (synchronous_commit on: the WAL is flushed).
        pg.query(f"INSERT INTO t VALUES ({seq}, '{_tag(seq)}', "
                 f"repeat(md5('{seq}'), {4 + seq % 40}))")
        if seq % CHECKPOINT_EVERY == 0:
            pg.query("CHECKPOINT")

    return _loop(commit, acks, seconds)


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] not in ("sqlite", "postgres"):
        print(__doc__, file=sys.stderr)
        return 2
    app, where, acks, seconds = argv[0], argv[1], Path(argv[2]), float(argv[3])
    try:
        last = (sqlite_app if app == "sqlite" else postgres_app)(where, acks, seconds)
    except Exception as exc:  # the mount refused: the application's view of the crash
        print(f"{app} writer stopped by {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{app} writer: {last} commits, time is up", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
