"""The one tree walker: every part that lists a mirror tree (capture's scans
and reconciler, resync's manifest and counts, verify's manifest, repair's
lookups, apply's removal of a directory) goes through :func:`walk`,
:func:`lookup` (one path) or :func:`remove_tree` (bottom-up).

Rules, the same for every caller:

* **No symlink is ever followed** below the root: each directory is opened
  from its parent's descriptor with ``O_NOFOLLOW | O_DIRECTORY`` and must be
  the inode the listing's ``lstat`` saw, so a directory replaced by a symlink
  (or by another directory) while the walk runs is not entered. Symlinks are
  yielded as entries (kind ``LINK``), never resolved.
* **Only what a mirror holds** is yielded: directories, regular files and
  symlinks. Fifos, sockets and device nodes are skipped, and so is a path a
  record could not carry (``PATH_MAX``/``NAME_MAX``, logged as an ERROR).
  ``skip(rel)`` (the mirror's excludes) prunes a path and everything below it.
  (``everything=True``, for removing a tree only, yields those too.)
* **Deterministic order**: depth first, parents before children, the names
  of a directory in sorted order.
* **Bounded**: iterative (a tree thousands of levels deep needs no
  recursion), one directory listing per level in memory (never the tree),
  and at most ``max_fds`` + 1 directory descriptors open: deeper levels
  close the shallowest ones, which are reopened from the root, one
  ``O_NOFOLLOW`` component at a time and checked inode by inode, when the
  walk comes back up to them. A level that is no longer where it was is
  abandoned.

An entry's ``dir_fd`` is its parent directory's descriptor, usable (with
``name``) for ``*at`` calls until the walk resumes. Setting ``descend =
False`` on a directory entry before resuming prunes its contents. With
``listing=True`` each fully listed directory also ends with an ``END`` entry
whose ``names`` are the children yielded, so a caller can find what is gone
(the capture's reconciler pairs it with the index's children); its
``dir_fd`` is the parent of that directory (-1 for ``top``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from mirrorkit.agent.util.fs import length_problem, open_dir_nofollow, safe_parts, show_path

__all__ = [
    "DIR", "END", "FILE", "LINK", "OTHER", "WalkEntry", "kind_of", "lookup", "remove_tree",
    "walk",
]

log = logging.getLogger(__name__)

FILE, DIR, LINK = "f", "d", "l"  # also the kinds of the block index and of manifests
OTHER = "o"  # fifo, socket, device: never mirrored (everything=True only)
END = "end"  # a directory's listing is done (listing=True only)

_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)  # not (or no longer) a directory here

Ident = tuple[int, int]  # (st_dev, st_ino)


def kind_of(st: os.stat_result) -> str | None:
    """DIR, FILE or LINK; None for what a mirror does not hold."""
    if stat.S_ISDIR(st.st_mode):
        return DIR
    if stat.S_ISREG(st.st_mode):
        return FILE
    if stat.S_ISLNK(st.st_mode):
        return LINK
    return None


@dataclass(slots=True)
class WalkEntry:
    tree: int
    rel: str  # relative to the tree root, canonical (``a/b``)
    name: str  # last component of rel
    dir_fd: int  # the parent directory, valid until the walk resumes (END of top: -1)
    st: os.stat_result | None  # lstat of the entry (None for END)
    kind: str  # DIR, FILE, LINK, END (or OTHER)
    descend: bool = True  # DIR: set False to skip its contents
    names: frozenset[str] = frozenset()  # END: the children yielded


@dataclass(slots=True)
class _Level:
    rel: str
    name: str
    nbytes: int  # len(rel) in bytes
    ident: Ident
    fd: int | None
    names: list[str]
    pos: int = 0
    seen: set[str] = field(default_factory=set)


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _open_at(parent: int | None, name: str, ident: Ident | None) -> tuple[int, Ident] | None:
    """``name`` (below ``parent``) opened as a listable directory, without
    following a symlink; None if it is not a directory, or not ``ident``."""
    try:
        fd = os.open(name, _LIST_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise
    st = os.fstat(fd)
    if ident is not None and (st.st_dev, st.st_ino) != ident:
        os.close(fd)
        return None
    return fd, (st.st_dev, st.st_ino)


def _list(fd: int) -> list[str]:
    try:
        return sorted(os.listdir(fd))
    except FileNotFoundError:
        return []  # removed while we walk


class _Walker:
    """The walk's state: one :class:`_Level` per directory from ``top`` down
    to the one being listed. Level 0 and the levels from ``lo`` on hold an
    open fd (at most ``max_fds`` of the latter)."""

    def __init__(self, root: str, tree: int, skip: Callable[[str], bool] | None,
                 on_dir: Callable[[int, str, int], None] | None, max_fds: int,
                 everything: bool = False,
                 on_too_long: Callable[[int, str, str], None] | None = None) -> None:
        self.root, self.tree, self.skip, self.on_dir = root, tree, skip, on_dir
        self.on_too_long = on_too_long
        self.everything = everything
        self.max_fds = max(1, max_fds)
        self.stack: list[_Level] = []
        self.lo = 1

    def push(self, rel: str, name: str, fd: int, ident: Ident) -> None:
        self.stack.append(_Level(rel, name, _nbytes(rel), ident, fd, []))
        if self.on_dir is not None:
            self.on_dir(self.tree, rel, fd)  # before listing: what appears later is an event
        self.stack[-1].names = _list(fd)
        if len(self.stack) - self.lo > self.max_fds:
            self._close(self.stack[self.lo])
            self.lo += 1

    @staticmethod
    def _close(level: _Level) -> None:
        if level.fd is not None:
            os.close(level.fd)
            level.fd = None

    def pop(self) -> _Level:
        level = self.stack.pop()
        self._close(level)
        self.lo = min(self.lo, len(self.stack))  # open: level 0 and [lo, len)
        return level

    def close(self) -> None:
        while self.stack:
            self.pop()

    def top_fd(self) -> int | None:
        """The deepest level's fd. When it was closed, reopen it from level 0
        through every level on the way (each must still be the directory it
        was), keeping the deepest ``max_fds``; None when one is not: that
        level and those below it are abandoned (never ENDed)."""
        top = len(self.stack) - 1
        if self.stack[top].fd is not None:
            return self.stack[top].fd
        keep_from = max(1, top - self.max_fds + 1)
        parent = self.stack[0].fd
        passing: int | None = None  # a level above the window, only passed through
        try:
            for i in range(1, top + 1):
                level = self.stack[i]
                opened = _open_at(parent, level.name, level.ident) if level.fd is None else None
                if passing is not None:
                    os.close(passing)
                    passing = None
                if level.fd is not None:
                    parent = level.fd
                    continue
                if opened is None:
                    del self.stack[i:]
                    self.lo = min(keep_from, i)
                    return None
                if i >= keep_from:
                    level.fd = opened[0]
                else:
                    passing = opened[0]
                parent = opened[0]
        finally:
            if passing is not None:
                os.close(passing)
        self.lo = keep_from
        return self.stack[top].fd

    def entries(self, listing: bool) -> Iterator[WalkEntry]:
        while self.stack:
            level = self.stack[-1]
            if level.pos >= len(level.names):
                self.pop()
                if listing:
                    parent = self.top_fd() if self.stack else None
                    parent = -1 if parent is None else parent
                    yield WalkEntry(self.tree, level.rel, level.name, parent, None, END,
                                    names=frozenset(level.seen))
                continue
            name = level.names[level.pos]
            level.pos += 1
            entry = self._entry(level, name)
            if entry is None:
                continue
            yield entry
            if listing:
                level.seen.add(name)
            if entry.kind == DIR and entry.descend:
                self._descend(entry)

    def _entry(self, level: _Level, name: str) -> WalkEntry | None:
        rel = f"{level.rel}/{name}" if level.rel else name
        if self.skip is not None and self.skip(rel):
            return None
        fd = self.top_fd()
        if fd is None:
            return None
        try:
            st = os.lstat(name, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        kind = kind_of(st)
        if self.everything:
            return WalkEntry(self.tree, rel, name, fd, st, kind or OTHER)
        if kind is None:
            return None
        size = _nbytes(name)
        problem = length_problem(level.nbytes + bool(level.rel) + size, size)
        if problem:
            if self.on_too_long is not None:
                self.on_too_long(self.tree, rel, problem)
            else:
                log.error("%s: %s not mirrored: that path %s", self.root, show_path(rel),
                          problem)
            return None
        return WalkEntry(self.tree, rel, name, fd, st, kind)

    def _descend(self, entry: WalkEntry) -> None:
        assert entry.st is not None
        fd = self.top_fd()
        opened = None if fd is None else _open_at(fd, entry.name,
                                                  (entry.st.st_dev, entry.st.st_ino))
        if opened is not None:
            self.push(entry.rel, entry.name, *opened)


def walk(root: str | os.PathLike[str] | int, top: str = "", *, tree: int = 0,
         skip: Callable[[str], bool] | None = None,
         on_dir: Callable[[int, str, int], None] | None = None,
         listing: bool = False, max_fds: int = 32, everything: bool = False,
         on_too_long: Callable[[int, str, str], None] | None = None,
         ) -> Iterator[WalkEntry]:
    """Every entry below directory ``top`` (canonical, ``""`` = the root) of
    tree ``tree`` at ``root`` (a path, or an open directory's fd); ``top``
    itself is not yielded, and nothing is when it is not a directory reached
    without a symlink. ``on_dir(tree, rel, fd)`` is called with each
    directory (``top`` included) open, before it is listed. ``everything``
    (for removing a tree, not for mirroring one) also yields fifos, sockets
    and devices (``OTHER``) and paths too long for a record.
    ``on_too_long(tree, rel, problem)`` is told of each path skipped for its
    length (default: an ERROR line)."""
    safe_parts(top, allow_root=True)
    parent, _, name = top.rpartition("/")
    pfd = None
    if top:
        pfd = open_dir_nofollow(root, parent)
        if pfd is None:
            return
    try:
        if top:
            opened = _open_at(pfd, name, None)
        elif isinstance(root, int):
            opened = _open_at(root, ".", None)
        else:
            opened = _open_at(None, os.fspath(root), None)
    finally:
        if pfd is not None:
            os.close(pfd)
    if opened is None:
        return
    where = f"fd {root}" if isinstance(root, int) else os.fspath(root)
    walker = _Walker(where, tree, skip, on_dir, max_fds, everything, on_too_long)
    try:
        walker.push(top, name, *opened)
        yield from walker.entries(listing)
    finally:
        walker.close()


@contextlib.contextmanager
def lookup(root: str | os.PathLike[str], rel: str, *, tree: int = 0) -> Iterator[WalkEntry | None]:
    """The entry of the one path ``rel`` (which must pass
    :func:`~mirrorkit.agent.util.fs.safe_parts`), its parent reached without
    following a symlink; None when it is absent or not a kind a mirror holds.
    Its ``dir_fd`` (an ``O_PATH`` descriptor) is closed on leaving."""
    safe_parts(rel)
    parent, _, name = rel.rpartition("/")
    dfd = open_dir_nofollow(root, parent)
    if dfd is None:
        yield None
        return
    try:
        try:
            st = os.lstat(name, dir_fd=dfd)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        kind = None if st is None else kind_of(st)
        yield None if kind is None else WalkEntry(tree, rel, name, dfd, st, kind)
    finally:
        os.close(dfd)


def remove_tree(dir_fd: int, name: str) -> None:
    """Remove directory ``name`` of ``dir_fd`` and everything below it,
    bottom-up, never following a symlink, without recursion (unlike
    ``shutil.rmtree``, which recurses once per level)."""
    for entry in walk(dir_fd, name, listing=True, everything=True):
        if entry.kind == END:
            if entry.rel != name:
                os.rmdir(entry.name, dir_fd=entry.dir_fd)
        elif entry.kind != DIR:
            os.unlink(entry.name, dir_fd=entry.dir_fd)
    os.rmdir(name, dir_fd=dir_fd)
