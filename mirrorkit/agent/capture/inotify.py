"""Linux inotify through ctypes, with an asyncio reader.

The agent's runtime dependencies are stdlib + PyYAML (targets may have no
internet), so this binds libc's ``inotify_init1`` / ``inotify_add_watch`` /
``inotify_rm_watch`` directly and reads the descriptor with ``os.read``
(the same ``read(2)``).

:class:`Inotify` drains the kernel queue eagerly from the event loop
(``loop.add_reader``) into a bounded in-process list, so a consumer that is
busy (awaiting the mirror log) does not make the small kernel queue overflow.
When the in-process list reaches ``max_pending`` it is replaced by a single
synthetic ``IN_Q_OVERFLOW`` event and further events are dropped until the
consumer takes it: the same contract as the kernel's own overflow, so the
consumer has one overflow path (a rescan) for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import struct
from typing import NamedTuple

from mirrorkit.agent.util.aio import wait_for

__all__ = [
    "IN_ACCESS",
    "IN_ATTRIB",
    "IN_CLOSE_WRITE",
    "IN_CREATE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_DONT_FOLLOW",
    "IN_EXCL_UNLINK",
    "IN_IGNORED",
    "IN_ISDIR",
    "IN_MODIFY",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_MOVE_SELF",
    "IN_ONLYDIR",
    "IN_Q_OVERFLOW",
    "IN_UNMOUNT",
    "Inotify",
    "InotifyEvent",
    "parse_events",
]

IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (native: the kernel's layout)
_READ_SIZE = 256 * 1024


class InotifyEvent(NamedTuple):
    wd: int
    mask: int
    cookie: int
    name: str  # file name inside the watched directory ("" for the directory itself)


def _load_libc() -> ctypes.CDLL:
    # CDLL(None) exposes the symbols already loaded into the interpreter (libc
    # included) without find_library(), which may spawn ldconfig/gcc.
    for name in (None, "libc.so.6"):
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
        if hasattr(lib, "inotify_init1"):
            lib.inotify_init1.argtypes = [ctypes.c_int]
            lib.inotify_init1.restype = ctypes.c_int
            lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            lib.inotify_add_watch.restype = ctypes.c_int
            lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.inotify_rm_watch.restype = ctypes.c_int
            return lib
    raise OSError(errno.ENOSYS, "libc with inotify not found (is this Linux?)")


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = _load_libc()
    return _libc


def parse_events(buf: bytes) -> list[InotifyEvent]:
    """Split a buffer returned by ``read(2)`` on an inotify fd into events."""
    events: list[InotifyEvent] = []
    pos = 0
    end = len(buf)
    while pos + _EVENT.size <= end:
        wd, mask, cookie, length = _EVENT.unpack_from(buf, pos)
        pos += _EVENT.size
        raw = buf[pos : pos + length]
        pos += length
        # The name is NUL-padded to an alignment boundary.
        name = os.fsdecode(raw.split(b"\0", 1)[0]) if length else ""
        events.append(InotifyEvent(wd, mask, cookie, name))
    return events


class Inotify:
    """One inotify instance (non-blocking, close-on-exec)."""

    def __init__(self, max_pending: int = 100_000) -> None:
        fd = _lib().inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd
        self.max_pending = max_pending
        self._pending: list[InotifyEvent] = []
        self._overflowed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None

    # -- watches ---------------------------------------------------------
    def add_watch(self, path: str | bytes | os.PathLike[str], mask: int) -> int:
        """Watch ``path``; return the watch descriptor (the same one again if
        the inode is already watched). Raises ``OSError`` with the errno."""
        wd = _lib().inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch: {os.strerror(err)}", os.fsdecode(path))
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        """Remove a watch; a watch the kernel already dropped is fine."""
        if _lib().inotify_rm_watch(self.fd, wd) < 0:
            err = ctypes.get_errno()
            if err != errno.EINVAL:
                raise OSError(err, f"inotify_rm_watch: {os.strerror(err)}")

    # -- synchronous reading ------------------------------------------------
    def read_now(self) -> list[InotifyEvent]:
        """Read whatever the kernel has queued, without blocking."""
        events: list[InotifyEvent] = []
        while True:
            try:
                buf = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return events
            except InterruptedError:
                continue
            if not buf:
                return events
            events.extend(parse_events(buf))

    # -- asyncio -------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start draining the fd into the pending list from ``loop``."""
        self._loop = loop
        self._ready = asyncio.Event()
        loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            events = self.read_now()
        except OSError:
            # A read error on an inotify fd means events may be lost: report it
            # the only way the consumer understands, an overflow.
            events = [InotifyEvent(-1, IN_Q_OVERFLOW, 0, "")]
        self._push(events)

    def _push(self, events: list[InotifyEvent]) -> None:
        if not events:
            return
        if self._overflowed:
            return  # dropped, as the kernel does after its own overflow
        if len(self._pending) + len(events) > self.max_pending:
            self._pending = [InotifyEvent(-1, IN_Q_OVERFLOW, 0, "")]
            self._overflowed = True
        else:
            self._pending.extend(events)
        if self._ready is not None:
            self._ready.set()

    def inject(self, events: list[InotifyEvent]) -> None:
        """Queue events as if read from the kernel (used by tests and wakeups)."""
        self._push(events)

    @property
    def pending(self) -> int:
        """How many events wait to be taken."""
        return len(self._pending)

    def take(self) -> list[InotifyEvent]:
        """Return and clear the pending events."""
        events, self._pending = self._pending, []
        self._overflowed = False
        if self._ready is not None:
            self._ready.clear()
        return events

    def wakeup(self) -> None:
        """Make a pending :meth:`wait` return (used by ``stop()``)."""
        if self._ready is not None:
            self._ready.set()

    async def wait(self, timeout: float | None) -> None:
        """Wait until events are pending, :meth:`wakeup`, or ``timeout``."""
        if self._ready is None:
            raise RuntimeError("Inotify.attach() was not called")
        if self._pending:
            return
        with contextlib.suppress(TimeoutError):
            await wait_for(self._ready.wait(), timeout)

    def close(self) -> None:
        if self.fd < 0:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
