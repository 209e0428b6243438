"""Diffing the disk against the block-hash index: one file (:func:`diff_file`)
or a whole subtree (:class:`Reconciler`), shared by the watch capture, the
full scan and resync."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from enum import IntEnum

from mirrorkit.agent.capture.filespec import excluder, is_excluded
from mirrorkit.agent.capture.index import DIR, FILE, LINK, Entry, IndexStore
from mirrorkit.agent.capture.unmirrorable import Unmirrorable
from mirrorkit.agent.log.records import Op, OpKind
from mirrorkit.agent.util.fs import UnsafePath, open_file_nofollow, safe_parts, show_path
from mirrorkit.agent.util.hashing import DIGEST_SIZE, read_blocks
from mirrorkit.agent.util.walk import END, WalkEntry, lookup, walk
from mirrorkit.errors import MirrorkitError

__all__ = ["CaptureError", "How", "Reconciler", "diff_file", "removal_op", "touch_entry"]

log = logging.getLogger(__name__)


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
    opened = open_file_nofollow(abspath, dir_fd)
    if opened is None:
        return None
    fd, st = opened
    try:
        return (yield from _diff_blocks(tree, path, fd, st, old, block_size))
    finally:
        os.close(fd)


def _diff_blocks(
    tree: int, path: str, fd: int, st: os.stat_result, old: Entry | None, block_size: int,
) -> Generator[Op | None, None, Entry]:
    hashed_ns = time.time_ns()
    mode = stat.S_IMODE(st.st_mode)
    fresh = old is None or old.kind != FILE
    if fresh:
        if old is not None:
            yield removal_op(tree, path, old)
        yield Op(OpKind.CREATE, tree, path, value=mode)
    old_hashes = b"" if fresh or old is None else old.hashes
    hashes = bytearray()
    size = 0
    changed = False
    for offset, block, digest in read_blocks(fd, block_size):
        at = len(hashes)
        hashes += digest
        if old_hashes[at : at + DIGEST_SIZE] != digest:
            changed = True
            yield Op(OpKind.WRITE, tree, path, value=offset, data=bytes(block))
        else:
            yield None
        size = offset + len(block)
    if not fresh and old is not None:
        if size < old.size:
            changed = True
            yield Op(OpKind.TRUNCATE, tree, path, value=size)
        if mode != old.mode:
            yield Op(OpKind.CHMOD, tree, path, value=mode)
    # Our WRITE/TRUNCATE moved the replica's mtime: always restore it after.
    if fresh or changed or old is None or st.st_mtime_ns != old.mtime_ns:
        yield Op(OpKind.UTIME, tree, path, value=st.st_mtime_ns)
    return Entry(
        FILE, mode, size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, hashed_ns, "", bytes(hashes),
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
    updates the index *after* yielding the ops that justify each change.

    The trees are read with the one walker (:mod:`mirrorkit.agent.util.walk`):
    a subtree's entries in walk order, each compared with its index entry,
    and at the end of each directory's listing (``END``) the index's children
    that the walk did not yield (gone, excluded, or of a kind not mirrored)
    are removed."""

    def __init__(
        self,
        roots: list[str],
        exclude: list[str],
        index: IndexStore,
        on_dir: Callable[[int, str, int], None] | None = None,
        unmirrorable: Unmirrorable | None = None,
    ) -> None:
        self.roots = roots
        # Paths too long for a record: skipped, one WARNING each, counted.
        self.unmirrorable = unmirrorable or Unmirrorable()
        self.exclude = exclude
        self.index = index
        # on_dir(tree, rel, fd) is called with the directory open, before it
        # is listed: watch first, so whatever is created after is an event.
        self.on_dir = on_dir

    def abspath(self, tree: int, rel: str) -> str:
        return os.path.join(self.roots[tree], rel) if rel else self.roots[tree]

    def reconcile(self, tree: int, rel: str, how: How) -> Iterator[Op | None]:
        """The ops for path ``rel`` of ``tree`` (``""``: the whole tree) and,
        for a directory that is new or with ``How.SCAN``, everything below."""
        if not rel:
            try:
                st = os.stat(self.roots[tree])
            except OSError:
                st = None
            if st is None or not stat.S_ISDIR(st.st_mode):
                raise CaptureError(f"mirror tree {self.roots[tree]} is missing or not a directory")
            if how == How.SCAN:
                yield from self._below(tree, "", how)
            return
        old = self.index.get(tree, rel)
        with self._lookup(tree, rel) as found:
            if found is None:
                # Gone, excluded, or a kind we do not mirror (fifo, socket, device).
                if old is not None:
                    yield removal_op(tree, rel, old)
                    self.index.delete_subtree(tree, rel)
                return
            yield from self._entry(found, old, how)
        if found.kind == DIR and found.descend:
            yield from self._below(tree, rel, how)

    @contextlib.contextmanager
    def _lookup(self, tree: int, rel: str) -> Iterator[WalkEntry | None]:
        try:
            safe_parts(rel)
        except UnsafePath as exc:  # a path no record can carry (too long)
            self.too_long(tree, rel, str(exc).removeprefix(f"path {show_path(rel)} "))
            yield None
            return
        if is_excluded(rel, self.exclude):
            yield None
            return
        with lookup(self.roots[tree], rel, tree=tree) as found:
            yield found

    def _below(self, tree: int, top: str, how: How) -> Iterator[Op | None]:
        for entry in walk(self.roots[tree], top, tree=tree, skip=excluder(self.exclude),
                          on_dir=self.on_dir, listing=True, on_too_long=self.too_long):
            if entry.kind == END:
                yield from self._vanished(tree, entry.rel, entry.names)
            else:
                yield from self._entry(entry, self.index.get(tree, entry.rel), how)

    def too_long(self, tree: int, rel: str, problem: str) -> None:
        self.unmirrorable.refuse(self.roots[tree], tree, rel, problem)

    def _vanished(self, tree: int, rel: str, present: frozenset[str]) -> Iterator[Op | None]:
        """Remove what the index holds below ``rel`` that the listing lacked."""
        known = self.index.children(tree, rel)
        prefix = f"{rel}/" if rel else ""
        for name in sorted(known.keys() - present):
            yield removal_op(tree, prefix + name, known[name])
            self.index.delete_subtree(tree, prefix + name)
        yield None

    def _entry(self, entry: WalkEntry, old: Entry | None, how: How) -> Iterator[Op | None]:
        if entry.kind == DIR:
            entry.descend = yield from self._dir(entry, old, how)
        elif entry.kind == LINK:
            yield from self._link(entry, old)
        else:
            yield from self._file(entry, old, how)

    def _dir(self, entry: WalkEntry, old: Entry | None, how: How) -> Generator[Op, None, bool]:
        """The ops of one directory; returns whether to look inside it."""
        assert entry.st is not None
        tree, rel = entry.tree, entry.rel
        mode = stat.S_IMODE(entry.st.st_mode)
        fresh = old is None or old.kind != DIR
        if fresh:
            if old is not None:
                yield removal_op(tree, rel, old)
                self.index.delete_subtree(tree, rel)
            yield Op(OpKind.MKDIR, tree, rel, value=mode)
            self.index.put(tree, rel, Entry(DIR, mode))
        elif old is not None and old.mode != mode:
            yield Op(OpKind.CHMOD, tree, rel, value=mode)
            self.index.put(tree, rel, Entry(DIR, mode))
        return fresh or how == How.SCAN

    def _link(self, entry: WalkEntry, old: Entry | None) -> Iterator[Op | None]:
        tree, rel = entry.tree, entry.rel
        try:
            target = os.readlink(entry.name, dir_fd=entry.dir_fd)
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

    def _file(self, entry: WalkEntry, old: Entry | None, how: How) -> Iterator[Op | None]:
        st = entry.st
        assert st is not None
        tree, rel = entry.tree, entry.rel
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
            new = yield from diff_file(tree, rel, entry.name, old, self.index.block_size,
                                       dir_fd=entry.dir_fd)
        except OSError as exc:
            # Unreadable (EACCES, EIO): loud, and the index keeps the old entry
            # so the next scan retries; verify reports the difference.
            log.error("capture: cannot read %s: %s; not mirrored until readable",
                      self.abspath(tree, rel), exc)
            return
        if new is not None:
            self.index.put(tree, rel, new)
