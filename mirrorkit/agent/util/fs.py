"""File-system primitives: ``syncfs``, no-follow directory opens, the path sanitiser."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat

__all__ = [
    "NAME_MAX",
    "PATH_MAX",
    "UnsafePath",
    "fallocate",
    "length_problem",
    "open_dir_nofollow",
    "open_file_nofollow",
    "private_file",
    "rename_noreplace",
    "safe_parts",
    "show_path",
    "syncfs",
    "syncfs_supported",
]

# Linux's limits, in bytes (UTF-8 with surrogateescape, as records carry
# paths): a path of PATH_MAX bytes or more has no room for its NUL.
PATH_MAX = 4096
NAME_MAX = 255


def _libc_call(name: str, argtypes: list[type]) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """libc's ``name`` with ``argtypes``; None where this libc lacks it (the
    agent must still start: only the mount capture's paths call these)."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                                 use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn


def _load_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """libc's ``syncfs(int)``, only on Linux >= 5.8: older kernels return 0 from
    ``syncfs`` even when writeback failed, so it could not replace fsync there."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return None
    if os.uname().sysname != "Linux" or (major, minor) < (5, 8):
        return None
    return _libc_call("syncfs", [ctypes.c_int])


_SYNCFS = _load_syncfs()


def syncfs_supported() -> bool:
    return _SYNCFS is not None


def syncfs(fd: int) -> None:
    """``syncfs(2)``: write back and commit everything dirty on ``fd``'s file
    system, and report (once per descriptor, like fsync) any writeback error
    on it since ``fd`` was opened or last synced. Raises :class:`OSError`."""
    _call(_SYNCFS, "syncfs", fd)


_RENAME_NOREPLACE = 1


_FALLOCATE = _libc_call("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                                      ctypes.c_int64])
_RENAMEAT2 = _libc_call("renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                      ctypes.c_char_p, ctypes.c_uint])


def _call(fn: ctypes._CFuncPtr | None, name: str, *args: object) -> None:  # type: ignore[name-defined]
    if fn is None:
        raise OSError(errno.ENOSYS, f"{name} not available")
    if fn(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)`` with its ``mode`` (os.posix_fallocate has only mode 0).
    Raises :class:`OSError` (EOPNOTSUPP where the file system lacks the mode)."""
    _call(_FALLOCATE, "fallocate", fd, mode, offset, length)


def rename_noreplace(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    """``renameat2(..., RENAME_NOREPLACE)``: EEXIST instead of replacing ``dst``."""
    _call(_RENAMEAT2, "renameat2", src_dir_fd, src.encode("utf-8", "surrogateescape"),
          dst_dir_fd, dst.encode("utf-8", "surrogateescape"), _RENAME_NOREPLACE)


class UnsafePath(ValueError):
    """A relative path that could leave its tree, or that no record may carry;
    the message says what is wrong with it."""


def show_path(path: str) -> str:
    """``repr(path)``, shortened in the middle when long (for messages)."""
    return repr(path if len(path) <= 80 else path[:60] + "..." + path[-16:])


def length_problem(path_bytes: int, name_bytes: int) -> str | None:
    """What is too long about a path of ``path_bytes`` whose longest name has
    ``name_bytes`` (None when both fit): the one length rule of the walker
    and of :func:`safe_parts`."""
    if name_bytes > NAME_MAX:
        return f"has a name of {name_bytes} bytes (NAME_MAX is {NAME_MAX})"
    if path_bytes >= PATH_MAX:
        return f"is {path_bytes} bytes long (PATH_MAX is {PATH_MAX}, with its NUL)"
    return None


def safe_parts(relpath: str, *, allow_root: bool = False) -> tuple[str, ...]:
    """The components of ``relpath``, a path relative to a tree root in its
    one canonical form (``a/b``: no leading, trailing or doubled ``/``, no
    ``.`` or ``..``, no NUL, within PATH_MAX and NAME_MAX); ``""`` (the root
    itself, ``()``) only with ``allow_root``. Raises :class:`UnsafePath`.

    The one sanitiser of every path that comes from outside the walk: record
    paths (apply, resync's quarantine), repair requests and verify's path
    lists. Resolve the parts one at a time with ``O_NOFOLLOW``; this check
    alone does not stop a symlink."""
    if not relpath:
        if allow_root:
            return ()
        raise UnsafePath("empty path")
    if relpath.startswith("/"):
        raise UnsafePath(f"absolute path {show_path(relpath)}")
    if "\0" in relpath:
        raise UnsafePath(f"NUL byte in path {show_path(relpath)}")
    parts = tuple(relpath.split("/"))
    for bad, what in (("", "empty component"), (".", "'.' component"),
                      ("..", "'..' component")):
        if bad in parts:
            raise UnsafePath(f"{what} in path {show_path(relpath)}")
    try:
        raw = relpath.encode("utf-8", "surrogateescape")  # once: 2,048 names cost one call
    except UnicodeEncodeError:
        raise UnsafePath(f"path {show_path(relpath)} is not a file name (unpaired surrogate)") \
            from None
    problem = length_problem(len(raw), max(map(len, raw.split(b"/"))))
    if problem:
        raise UnsafePath(f"path {show_path(relpath)} {problem}")
    return parts


def private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` (if missing) readable and writable by its owner only,
    and make an existing one so (a sqlite database: sqlite gives its journal
    and WAL files the database file's mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir_nofollow(root: str | os.PathLike[str] | int, rel: str) -> int | None:
    """An O_PATH fd of directory ``rel`` below ``root`` (a path, or an open
    directory's fd), reached one component at a time without following any
    symlink; ``None`` if that path is not (or no longer) a directory. A stale
    path through a directory since replaced by a symlink must never lead
    outside the tree. ``rel`` must pass :func:`safe_parts` (``""`` is the
    root)."""
    parts = safe_parts(rel, allow_root=True)
    try:
        if isinstance(root, int):
            fd = os.open(".", _PATH_FLAGS, dir_fd=root)
        else:
            fd = os.open(root, _PATH_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    for part in parts:
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


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_file_nofollow(name: str, dir_fd: int | None = None) -> tuple[int, os.stat_result] | None:
    """``name`` (below ``dir_fd``) opened for reading if it is a regular file,
    with the ``fstat`` taken before any read; None when it is gone, became a
    symlink or something else meanwhile. Other errors (EACCES, EIO) raise."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO):
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
    return fd, st
