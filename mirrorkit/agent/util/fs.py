"""File-system primitives: ``syncfs``, no-follow directory opens, the path sanitiser."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

__all__ = ["open_dir_nofollow", "syncfs", "syncfs_supported"]


def _load_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """libc's ``syncfs(int)``, only on Linux >= 5.8: older kernels return 0 from
    ``syncfs`` even when writeback failed, so it could not replace fsync there."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return None
    if os.uname().sysname != "Linux" or (major, minor) < (5, 8):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def syncfs_supported() -> bool:
    return _SYNCFS is not None


def syncfs(fd: int) -> None:
    """``syncfs(2)``: write back and commit everything dirty on ``fd``'s file
    system, and report (once per descriptor, like fsync) any writeback error
    on it since ``fd`` was opened or last synced. Raises :class:`OSError`."""
    if _SYNCFS is None:
        raise OSError(38, "syncfs not available")  # ENOSYS
    if _SYNCFS(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


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
