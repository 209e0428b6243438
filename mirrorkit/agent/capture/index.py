"""The per-file block-hash index, and diffing a file against it.

The index records, for every mirrored path, what the replicas have been sent
(not what is on disk): kind, mode, size, mtime, and for regular files one hash
per ``block_size`` block. Capture diffs the disk against it and ships only the
blocks whose hash changed, then updates it.

Persistence (sqlite3, one file): capture commits the index only *after* the
ops it corresponds to were handed to ``emit()`` (which makes them durable in
the mirror log). A crash therefore leaves the index behind the log, never
ahead: a restart re-sends a few idempotent ops instead of losing changes.

:class:`Reconciler` is the diff itself (disk vs index, one path or a whole
subtree), shared by the watch capture and :func:`capture.base.scan_full` (which
runs it against the always-empty :class:`NullIndex`).

Paths are stored as bytes (UTF-8 with ``surrogateescape``) so every Linux file
name round-trips and prefix ranges sort bytewise.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mirrorkit.agent.util.fs import private_file
from mirrorkit.agent.util.hashing import HASH_NAME
from mirrorkit.agent.util.walk import DIR, FILE, LINK

__all__ = ["DIR", "FILE", "HASH_NAME", "LINK", "BlockIndex", "Entry", "IndexStore", "NullIndex"]

log = logging.getLogger(__name__)


def _b(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _s(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "surrogateescape")


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


@dataclass(frozen=True, slots=True)
class Entry:
    kind: str  # FILE, DIR or LINK
    mode: int = 0  # permission bits (st_mode & 0o7777)
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0
    hashed_ns: int = 0  # wall clock when the hashes were taken
    target: str = ""  # symlink target
    hashes: bytes = b""  # DIGEST_SIZE bytes per block, concatenated

    def same_stat(self, st: os.stat_result, *, with_ctime: bool = True) -> bool:
        """Quick check: does ``st`` describe the file this entry was hashed from?"""
        if (self.size, self.mtime_ns, self.ino) != (st.st_size, st.st_mtime_ns, st.st_ino):
            return False
        if not with_ctime:
            return True
        racy = self.ctime_ns + _RACY_NS > self.hashed_ns
        return not racy and self.ctime_ns == st.st_ctime_ns


class IndexStore(Protocol):
    """What the reconciler needs from an index (BlockIndex or NullIndex)."""

    block_size: int

    def get(self, tree: int, path: str) -> Entry | None: ...
    def put(self, tree: int, path: str, entry: Entry) -> None: ...
    def children(self, tree: int, parent: str) -> dict[str, Entry]: ...
    def delete_subtree(self, tree: int, path: str) -> None: ...
    def rename(self, tree: int, src: str, dst: str) -> None: ...


class NullIndex:
    """An always-empty index: diffing against it yields the full tree."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size

    def get(self, tree: int, path: str) -> Entry | None:
        return None

    def put(self, tree: int, path: str, entry: Entry) -> None:
        pass

    def children(self, tree: int, parent: str) -> dict[str, Entry]:
        return {}

    def delete_subtree(self, tree: int, path: str) -> None:
        pass

    def rename(self, tree: int, src: str, dst: str) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    tree INTEGER NOT NULL, path BLOB NOT NULL, parent BLOB NOT NULL,
    kind TEXT NOT NULL, mode INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, ino INTEGER NOT NULL,
    hashed_ns INTEGER NOT NULL, target BLOB NOT NULL, hashes BLOB NOT NULL,
    PRIMARY KEY (tree, path)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_parent ON entries (tree, parent);
"""
_COLS = "kind, mode, size, mtime_ns, ctime_ns, ino, hashed_ns, target, hashes"
_Row = tuple[str, int, int, int, int, int, int, bytes, bytes]


def _entry(row: _Row) -> Entry:
    kind, mode, size, mtime_ns, ctime_ns, ino, hashed_ns, target, hashes = row
    return Entry(kind, mode, size, mtime_ns, ctime_ns, ino, hashed_ns, _s(target), bytes(hashes))


class BlockIndex:
    """The persisted index (sqlite3). Changes become durable on :meth:`commit`."""

    def __init__(self, path: Path | str, block_size: int = 64 * 1024) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # It holds the block hashes of every replicated file (enough to
            # test a guess at any block's content): root only, like the data's
            # own unreadable files would be. Its -wal/-shm files take its mode.
            for name in (str(path), f"{path}-wal", f"{path}-shm"):
                if name == str(path) or os.path.exists(name):
                    private_file(name)
        self.block_size = block_size
        self._db = sqlite3.connect(str(path), isolation_level="DEFERRED")
        # WAL + NORMAL: a power cut may lose the last commits, which only makes
        # the index older than the log (safe), never corrupt.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        stored = self._meta("block_size")
        # An index from before the hash was recorded used blake2b-128.
        hashed_with = self._meta("hash") or ("blake2b_128" if stored is not None else None)
        if (stored is not None and int(stored) != block_size) or (
            hashed_with is not None and hashed_with != HASH_NAME
        ):
            # Old hashes describe other block boundaries or another hash:
            # forget them (every block is re-sent once) but keep the entries,
            # so deletions made while the agent was down are still detected.
            self._db.execute("UPDATE entries SET hashes = x'', hashed_ns = 0")
        self._set_meta("block_size", str(block_size))
        self._set_meta("hash", HASH_NAME)
        self._db.commit()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def bind_roots(self, roots: list[str]) -> list[int]:
        """Record which directory each tree number is; drop the entries of a
        tree whose root changed (they describe another directory). Returns the
        tree numbers that were reset."""
        reset = []
        for tree, root in enumerate(roots):
            old = self._meta(f"root:{tree}")
            if old is not None and old != root:
                self._db.execute("DELETE FROM entries WHERE tree = ?", (tree,))
                reset.append(tree)
            self._set_meta(f"root:{tree}", root)
        self._db.commit()
        return reset

    def get(self, tree: int, path: str) -> Entry | None:
        row = self._db.execute(
            f"SELECT {_COLS} FROM entries WHERE tree = ? AND path = ?", (tree, _b(path))
        ).fetchone()
        return None if row is None else _entry(row)

    def put(self, tree: int, path: str, entry: Entry) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO entries (tree, path, parent, {_COLS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                tree, _b(path), _b(_parent(path)), entry.kind, entry.mode, entry.size,
                entry.mtime_ns, entry.ctime_ns, entry.ino, entry.hashed_ns,
                _b(entry.target), entry.hashes,
            ),
        )

    def children(self, tree: int, parent: str) -> dict[str, Entry]:
        """Direct children of ``parent`` (``""`` = tree root), by name."""
        rows = self._db.execute(
            f"SELECT path, {_COLS} FROM entries WHERE tree = ? AND parent = ?",
            (tree, _b(parent)),
        )
        return {_s(r[0]).rpartition("/")[2]: _entry(r[1:]) for r in rows}

    def _subtree_where(self, path: str) -> tuple[str, tuple[object, ...]]:
        if not path:
            return "tree = ?", ()
        low, high = _b(path) + b"/", _b(path) + b"0"  # '0' sorts right after '/'
        return "tree = ? AND (path = ? OR (path >= ? AND path < ?))", (_b(path), low, high)

    def delete_subtree(self, tree: int, path: str) -> None:
        where, args = self._subtree_where(path)
        self._db.execute(f"DELETE FROM entries WHERE {where}", (tree, *args))

    def longest_below(self, tree: int, path: str) -> int:
        """The length in bytes of the longest indexed path at or below ``path``."""
        where, args = self._subtree_where(path)
        row = self._db.execute(f"SELECT max(length(path)) FROM entries WHERE {where}",
                               (tree, *args)).fetchone()
        return int(row[0] or 0)

    def rename(self, tree: int, src: str, dst: str) -> None:
        """Move ``src`` and everything below it to ``dst`` (replacing ``dst``)."""
        where, args = self._subtree_where(src)
        rows = self._db.execute(
            f"SELECT path, {_COLS} FROM entries WHERE {where}", (tree, *args)
        ).fetchall()
        self.delete_subtree(tree, dst)
        self.delete_subtree(tree, src)
        for row in rows:
            path = dst + _s(row[0])[len(src) :]
            self.put(tree, path, _entry(row[1:]))

    def paths(self, tree: int) -> Iterator[tuple[str, Entry]]:
        rows = self._db.execute(f"SELECT path, {_COLS} FROM entries WHERE tree = ?", (tree,))
        for r in rows.fetchall():
            yield _s(r[0]), _entry(r[1:])

    def commit(self) -> None:
        self._db.commit()

    def rollback(self) -> None:
        self._db.rollback()

    def close(self) -> None:
        """Close, discarding uncommitted changes (they were never emitted)."""
        self._db.rollback()
        self._db.close()


# An entry hashed less than this after the file's last change may hide a write
# made in the same timestamp tick (the "racy clean" problem): rehash it.
_RACY_NS = 2_000_000_000
