"""Diffing the disk against the block-hash index: one file (:func:`diff_file`)
or a whole subtree (:class:`Reconciler`), shared by the watch capture, the
full scan and resync."""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from enum import IntEnum

from mirrorkit.agent.capture.filespec import is_excluded
from mirrorkit.agent.capture.index import DIR, FILE, LINK, Entry, IndexStore
from mirrorkit.agent.log.records import Op, OpKind
from mirrorkit.agent.util.fs import open_dir_nofollow
from mirrorkit.agent.util.hashing import DIGEST_SIZE, block_digest
from mirrorkit.errors import MirrorkitError

__all__ = ["CaptureError", "How", "Reconciler", "diff_file", "removal_op", "touch_entry"]

log = logging.getLogger(__name__)



_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
