"""Replacing a small file so that a crash leaves the old or the new content,
never a torn one: write a temp file beside it, fsync, rename over, fsync the
directory. Used by the agent's state files and the controller's PKI."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "temp_path", "write_all"]


def temp_path(path: Path) -> Path:
    """Where ``path``'s next content is written before it is renamed over."""
    return path.with_name(f".{path.name}.tmp")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (file mode ``mode``; the temp file is
    0600 until then, so a secret is never readable on the way)."""
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if mode != 0o600:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)
