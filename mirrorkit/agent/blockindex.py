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
subtree), shared by the watch capture and :func:`capture.scan_full` (which
runs it against the always-empty :class:`NullIndex`).

Paths are stored as bytes (UTF-8 with ``surrogateescape``) so every Linux file
name round-trips and prefix ranges sort bytewise.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path
from typing import Protocol

import xxhash

from mirrorkit.agent.filespec import is_excluded
from mirrorkit.agent.records import Op, OpKind
from mirrorkit.errors import MirrorkitError

__all__ = [
    "DIGEST_SIZE",
    "DIR",
    "FILE",
    "HASH_NAME",
    "LINK",
    "BlockIndex",
    "CaptureError",
    "Entry",
    "How",
    "IndexStore",
    "NullIndex",
    "Reconciler",
    "block_digest",
    "diff_file",
    "removal_op",
    "touch_entry",
]

log = logging.getLogger(__name__)

# The block hash (one function, used by capture, resync and the index):
# xxh3-128, chosen by measurement (docs/architecture.md, "Block hash"): 16 B
# per block, ~14x faster than blake2b-128 here. HASH_NAME is stored in the
# index; an index written with another hash is rehashed, never misread.
DIGEST_SIZE = 16
HASH_NAME = "xxh3_128"
FILE, DIR, LINK = "f", "d", "l"
# An entry hashed less than this after the file's last change may hide a write
# made in the same timestamp tick (the "racy clean" problem): rehash it.
_RACY_NS = 2_000_000_000
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir_nofollow(root: str | os.PathLike[str], rel: str) -> int | None:
    """An O_PATH fd of directory ``rel`` below ``root``, reached one component
    at a time without following any symlink; ``None`` if that path is not (or
    no longer) a directory. A stale path through a directory since replaced by
    a symlink must never lead outside the tree (capture, verify)."""
    try:
        fd = os.open(root, _PATH_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    for part in rel.split("/") if rel else ():
        try:
            nfd = os.open(part, _PATH_FLAGS, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        os.close(fd)
        fd = nfd
    return fd
_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def block_digest(block: bytes) -> bytes:
    return xxhash.xxh3_128_digest(block)


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


def removal_op(tree: int, path: str, old: Entry) -> Op:
    return Op(OpKind.RMDIR if old.kind == DIR else OpKind.UNLINK, tree, path)


def diff_file(
    tree: int, path: str, abspath: str, old: Entry | None, block_size: int,
    *, dir_fd: int | None = None,
) -> Generator[Op | None, None, Entry | None]:
    """Yield the ops that turn the replica's ``old`` into the file at
    ``abspath``; return its new entry (``None`` if it is no longer a regular
    file — the caller re-examines the path). ``None`` items are progress ticks
    (a block that did not change), so a caller can yield to its event loop.
    With ``dir_fd``, ``abspath`` is a name relative to that directory.

    The stat recorded is the one taken *before* reading, so a write racing
    with the read leaves a stat that no longer matches and gets rehashed.
    """
    try:
        fd = os.open(
            abspath, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        # ELOOP: it became a symlink; ENXIO/EACCES etc.: not something we read.
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            return None
        raise
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as f:
        hashed_ns = time.time_ns()
        mode = stat.S_IMODE(st.st_mode)
        fresh = old is None or old.kind != FILE
        if fresh:
            if old is not None:
                yield removal_op(tree, path, old)
            yield Op(OpKind.CREATE, tree, path, value=mode)
            old_hashes, old_size = b"", 0
        else:
            assert old is not None
            old_hashes, old_size = old.hashes, old.size
        hashes = bytearray()
        offset = 0
        changed = False
        while block := f.read(block_size):
            digest = block_digest(block)
            at = len(hashes)
            hashes += digest
            if old_hashes[at : at + DIGEST_SIZE] != digest:
                changed = True
                yield Op(OpKind.WRITE, tree, path, value=offset, data=block)
            else:
                yield None
            offset += len(block)
    if not fresh:
        assert old is not None
        if offset < old_size:
            changed = True
            yield Op(OpKind.TRUNCATE, tree, path, value=offset)
        if mode != old.mode:
            yield Op(OpKind.CHMOD, tree, path, value=mode)
    # Our WRITE/TRUNCATE moved the replica's mtime: always restore it after.
    if fresh or changed or old is None or st.st_mtime_ns != old.mtime_ns:
        yield Op(OpKind.UTIME, tree, path, value=st.st_mtime_ns)
    return Entry(
        FILE, mode, offset, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, hashed_ns, "",
        bytes(hashes),
    )


def touch_entry(old: Entry, st: os.stat_result) -> Entry:
    """``old`` with the metadata of ``st`` (content known unchanged)."""
    return replace(
        old, mode=stat.S_IMODE(st.st_mode), mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns
    )


class CaptureError(MirrorkitError):
    """Capture can no longer guarantee that no change is missed."""


class How(IntEnum):
    """How thoroughly to re-examine a path; merging two requests takes the max."""

    ATTR = 0  # only metadata changed (IN_ATTRIB): no rehash when size/ino match
    CONTENT = 1  # data may have changed: rehash the file
    SCAN = 2  # quick check (stat vs index); directories recursively


class Reconciler:
    """Diffs disk against an index; yields ops (``None`` = progress tick) and
    updates the index *after* yielding the ops that justify each change."""

    def __init__(
        self,
        roots: list[str],
        exclude: list[str],
        index: IndexStore,
        on_dir: Callable[[int, str, int], None],
    ) -> None:
        self.roots = roots
        self.exclude = exclude
        self.index = index
        # on_dir(tree, rel, fd) is called with the directory open, before it
        # is listed: watch first, so whatever is created after is an event.
        self.on_dir = on_dir

    def abspath(self, tree: int, rel: str) -> str:
        return os.path.join(self.roots[tree], rel) if rel else self.roots[tree]

    def reconcile(self, tree: int, rel: str, how: How) -> Iterator[Op | None]:
        stack = [rel]
        while stack:
            yield from self._one(tree, stack.pop(), how, stack)

    def _open_dir(self, tree: int, rel: str) -> int | None:
        return open_dir_nofollow(self.roots[tree], rel)

    def _one(self, tree: int, rel: str, how: How, stack: list[str]) -> Iterator[Op | None]:
        parent, _, name = rel.rpartition("/")
        pfd = None
        if rel and not is_excluded(rel, self.exclude):
            pfd = self._open_dir(tree, parent)
        try:
            st: os.stat_result | None = None
            if not rel:
                try:
                    st = os.stat(self.roots[tree])
                except OSError:
                    st = None
                if st is None or not stat.S_ISDIR(st.st_mode):
                    raise CaptureError(
                        f"mirror tree {self.roots[tree]} is missing or not a directory"
                    )
                yield from self._dir(tree, rel, None, self.roots[tree], st, None, how, stack)
                return
            if pfd is not None:
                try:
                    st = os.lstat(name, dir_fd=pfd)
                except (FileNotFoundError, NotADirectoryError):
                    st = None
            old = self.index.get(tree, rel)
            if pfd is None or st is None or not (
                stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)
            ):
                # Gone, excluded, or a kind we do not mirror (fifo, socket, device).
                if old is not None:
                    yield removal_op(tree, rel, old)
                    self.index.delete_subtree(tree, rel)
                return
            if stat.S_ISDIR(st.st_mode):
                yield from self._dir(tree, rel, pfd, name, st, old, how, stack)
            elif stat.S_ISLNK(st.st_mode):
                yield from self._link(tree, rel, pfd, name, old)
            else:
                yield from self._file(tree, rel, pfd, name, st, old, how)
        finally:
            if pfd is not None:
                os.close(pfd)

    def _dir(
        self, tree: int, rel: str, pfd: int | None, name: str, st: os.stat_result,
        old: Entry | None, how: How, stack: list[str],
    ) -> Iterator[Op | None]:
        mode = stat.S_IMODE(st.st_mode)
        fresh = bool(rel) and (old is None or old.kind != DIR)
        if rel:
            if fresh:
                if old is not None:
                    yield removal_op(tree, rel, old)
                    self.index.delete_subtree(tree, rel)
                yield Op(OpKind.MKDIR, tree, rel, value=mode)
                self.index.put(tree, rel, Entry(DIR, mode))
            elif old is not None and old.mode != mode:
                yield Op(OpKind.CHMOD, tree, rel, value=mode)
                self.index.put(tree, rel, Entry(DIR, mode))
        if not (fresh or how == How.SCAN):
            return
        try:
            dfd = os.open(name, _LIST_FLAGS, dir_fd=pfd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return  # replaced meanwhile; its parent's watch reports that
            raise
        try:
            self.on_dir(tree, rel, dfd)  # before listing: anything created after is an event
            names = set(os.listdir(dfd))
        finally:
            os.close(dfd)
        known = self.index.children(tree, rel)
        prefix = f"{rel}/" if rel else ""
        stack.extend(prefix + name for name in sorted(known.keys() - names, reverse=True))
        stack.extend(prefix + name for name in sorted(names, reverse=True))
        yield None

    def _link(
        self, tree: int, rel: str, pfd: int, name: str, old: Entry | None
    ) -> Iterator[Op | None]:
        try:
            target = os.readlink(name, dir_fd=pfd)
        except OSError:
            return  # replaced meanwhile; an event follows
        if old is not None and old.kind == LINK and old.target == target:
            yield None
            return
        if old is not None and old.kind == DIR:
            yield removal_op(tree, rel, old)
            self.index.delete_subtree(tree, rel)
        yield Op(OpKind.SYMLINK, tree, rel, target=target)
        self.index.put(tree, rel, Entry(LINK, target=target))

    def _file(
        self, tree: int, rel: str, pfd: int, name: str, st: os.stat_result, old: Entry | None,
        how: How,
    ) -> Iterator[Op | None]:
        if old is not None and old.kind == FILE:
            if how == How.SCAN and old.same_stat(st):
                yield None
                return
            if how == How.ATTR and (old.size, old.ino) == (st.st_size, st.st_ino):
                # chmod/touch: metadata only (a data change brings IN_MODIFY,
                # which asks for CONTENT instead).
                mode = stat.S_IMODE(st.st_mode)
                if mode != old.mode:
                    yield Op(OpKind.CHMOD, tree, rel, value=mode)
                if st.st_mtime_ns != old.mtime_ns:
                    yield Op(OpKind.UTIME, tree, rel, value=st.st_mtime_ns)
                self.index.put(tree, rel, touch_entry(old, st))
                return
        try:
            new = yield from diff_file(tree, rel, name, old, self.index.block_size, dir_fd=pfd)
        except OSError as exc:
            full = self.abspath(tree, rel)
            # Unreadable (EACCES, EIO): loud, and the index keeps the old entry
            # so the next scan retries; verify reports the difference.
            log.error("capture: cannot read %s: %s; not mirrored until readable", full, exc)
            return
        if new is not None:
            self.index.put(tree, rel, new)
