"""Moving one entry of a mirror tree elsewhere by descriptors (quarantine):
:func:`make_dirs` (``mkdir -p`` one component at a time) and
:func:`move_entry` (``rename``, or a copy and a removal across file
systems).

Both are iterative and descriptor-based, like the walker: a path thousands
of levels deep (deeper than an absolute path may be spelt, PATH_MAX from
``/``) is reached one ``openat`` at a time with ``O_NOFOLLOW``, never built
into an absolute path string and opened, and never recursed into
(``pathlib.Path.mkdir(parents=True)`` and ``shutil.move``/``copytree``
recurse once per level and raise RecursionError about 1,000 levels down).

What lands in a quarantine can no longer be run with privilege: a regular
file moved or copied loses its set-user-ID and set-group-ID bits (the
quarantine directory is root-only as well; docs/architecture.md, "Replica
privilege").
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence

from mirrorkit.agent.util.walk import DIR, END, FILE, LINK, remove_tree, walk

__all__ = ["PRIVILEGE_BITS", "make_dirs", "move_entry"]

PRIVILEGE_BITS = stat.S_ISUID | stat.S_ISGID
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_FDS = 32  # destination directories held open while copying a tree


def make_dirs(base_fd: int, parts: Sequence[str], mode: int = 0o700) -> int:
    """A new descriptor of directory ``base_fd/parts...``, creating what is
    missing with ``mode``; no symlink is followed (one raises ``OSError``
    ELOOP or ENOTDIR)."""
    fd = os.open(".", _DIR_FLAGS, dir_fd=base_fd)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, mode, dir_fd=fd)
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _strip_privilege(fd: int) -> None:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_mode & PRIVILEGE_BITS:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~PRIVILEGE_BITS)


def move_entry(src_dir: int, name: str, dst_dir: int, dst_name: str) -> None:
    """Move entry ``name`` of ``src_dir`` (any kind; a symlink as a link) to
    ``dst_name`` in ``dst_dir``, which must not exist. Across file systems
    the entry is copied (directories, regular files and symlinks; modes and
    mtimes) and then removed. Files land without setuid/setgid."""
    try:
        os.rename(name, dst_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        st = os.stat(name, dir_fd=src_dir, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            _copy_tree(src_dir, name, dst_dir, dst_name)
            remove_tree(src_dir, name)
        else:
            _copy_one(src_dir, name, st, dst_dir, dst_name)
            os.unlink(name, dir_fd=src_dir)
        return
    st = os.stat(dst_name, dir_fd=dst_dir, follow_symlinks=False)
    if stat.S_ISREG(st.st_mode) and st.st_mode & PRIVILEGE_BITS:
        fd = os.open(dst_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dst_dir)
        try:
            _strip_privilege(fd)
        finally:
            os.close(fd)
    elif stat.S_ISDIR(st.st_mode):
        _strip_tree(dst_dir, dst_name)


def _strip_tree(dir_fd: int, name: str) -> None:
    for entry in walk(dir_fd, name):
        if entry.kind == FILE and entry.st is not None and entry.st.st_mode & PRIVILEGE_BITS:
            fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=entry.dir_fd)
            try:
                _strip_privilege(fd)
            finally:
                os.close(fd)


def _copy_one(src_dir: int, name: str, st: os.stat_result, dst_dir: int, dst_name: str) -> None:
    """Copy a regular file or a symlink (other kinds are not mirrored: skipped)."""
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=src_dir), dst_name, dir_fd=dst_dir)
        os.utime(dst_name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_dir,
                 follow_symlinks=False)
        return
    if not stat.S_ISREG(st.st_mode):
        return
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                  dir_fd=src_dir)
    try:
        dst = os.open(dst_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                      | os.O_CLOEXEC, 0o600, dir_fd=dst_dir)
        try:
            while os.sendfile(dst, src, None, 1 << 20) > 0:
                pass
            os.fchmod(dst, stat.S_IMODE(st.st_mode) & ~PRIVILEGE_BITS)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)


class _DestChain:
    """The destination directories of a tree copy from its top down to the
    one being filled, as (name, fd or None); at most ``_MAX_FDS`` open
    besides the base: shallower ones are reopened by name when the copy
    comes back up to them."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.levels: list[list[str | int | None]] = []  # [name, fd]

    def top(self) -> int:
        """The deepest level's descriptor (reopened when it was closed)."""
        open_at = len(self.levels) - 1
        while open_at >= 0 and self.levels[open_at][1] is None:
            open_at -= 1
        fd = self.base if open_at < 0 else self.levels[open_at][1]
        assert isinstance(fd, int)
        for level in self.levels[open_at + 1:]:
            assert isinstance(level[0], str)
            fd = os.open(level[0], _DIR_FLAGS, dir_fd=fd)
            level[1] = fd
            self._trim()
        return fd

    def push(self, name: str) -> None:
        parent = self.top()
        self.levels.append([name, os.open(name, _DIR_FLAGS, dir_fd=parent)])
        self._trim()

    def pop(self) -> None:
        fd = self.levels.pop()[1]
        if isinstance(fd, int):
            os.close(fd)

    def _trim(self) -> None:
        opened = [lv for lv in self.levels if lv[1] is not None]
        for level in opened[:max(0, len(opened) - _MAX_FDS)]:
            assert isinstance(level[1], int)
            os.close(level[1])
            level[1] = None

    def close(self) -> None:
        while self.levels:
            self.pop()


def _copy_tree(src_dir: int, name: str, dst_dir: int, dst_name: str) -> None:
    """Copy directory ``name`` and everything below it (the walker's order:
    parents first), setting each directory's mode and mtime at its END. A
    directory the walk could not enter (changed meanwhile) stays empty."""
    os.mkdir(dst_name, 0o700, dir_fd=dst_dir)
    chain = _DestChain(dst_dir)
    # Aligned with chain.levels: the source directory each level copies.
    rels: list[str] = [name]
    stats = [os.stat(name, dir_fd=src_dir, follow_symlinks=False)]
    try:
        chain.push(dst_name)
        for entry in walk(src_dir, name, listing=True):
            here = entry.rel if entry.kind == END else entry.rel.rpartition("/")[0]
            while rels and rels[-1] != here:  # a level the walk left without an END
                rels.pop()
                stats.pop()
                chain.pop()
            if not rels:
                break
            if entry.kind == END:
                st = stats.pop()
                fd = chain.top()
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                rels.pop()
                chain.pop()
                continue
            assert entry.st is not None
            if entry.kind == DIR:
                os.mkdir(entry.name, 0o700, dir_fd=chain.top())
                chain.push(entry.name)
                rels.append(entry.rel)
                stats.append(entry.st)
            elif entry.kind in (FILE, LINK):
                _copy_one(entry.dir_fd, entry.name, entry.st, chain.top(), entry.name)
    finally:
        chain.close()
