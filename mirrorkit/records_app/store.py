"""Records on disk: one file per record, named by its id, written durably.

An id is ``<ns>-<seq>-<host>``: ``ns`` the wall-clock nanoseconds at the
write (20 digits), ``seq`` a per-process counter (6 digits) and ``host`` the
writer's host name. Ids sort in write order within one host and roughly in
time across hosts; they are unique because ``ns`` never repeats inside one
process (it is forced past the last one under a lock) and the host name
tells writers apart (only one records-app writes a data directory at a time:
the primary's).

A record is written to a hidden temp file, fsynced, renamed to its id and
the directory fsynced: a record whose id was returned survives a crash of
this host, and a reader never sees half of one.
"""

from __future__ import annotations

import heapq
import os
import re
import threading
import time
from pathlib import Path

from mirrorkit.atomicfile import fsync_dir, write_all

__all__ = ["ID_PATTERN", "MAX_LIST", "RecordStore", "host_label", "valid_id"]

ID_PATTERN = re.compile(r"[0-9]{20}-[0-9]{6}-[a-z0-9][a-z0-9-]{0,62}")
MAX_LIST = 1000          # ids one listing returns at most
_SEQ_MODULO = 1_000_000  # seq has six digits; it only breaks ties


def host_label(name: str) -> str:
    """``name`` as it appears in ids: lower case, [a-z0-9-], at most 63 characters."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63]
    return label or "host"


def valid_id(text: str) -> bool:
    return ID_PATTERN.fullmatch(text) is not None


class RecordStore:
    """The records of one data directory. Thread-safe: the server calls it
    from one thread per connection."""

    def __init__(self, data_dir: Path, host: str) -> None:
        self.data_dir = data_dir
        self.host = host_label(host)
        self._lock = threading.Lock()
        self._last_ns = 0
        self._seq = 0

    def open(self) -> None:
        """Create the data directory if needed and drop temp files of a crashed run."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(self.data_dir):
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                os.unlink(entry.path)

    def new_id(self) -> str:
        with self._lock:
            ns = max(time.time_ns(), self._last_ns + 1)
            self._last_ns = ns
            self._seq = (self._seq + 1) % _SEQ_MODULO
            return f"{ns:020d}-{self._seq:06d}-{self.host}"

    def path_of(self, record_id: str) -> Path:
        if not valid_id(record_id):
            raise ValueError(f"{record_id[:80]!r} is not a record id (like {self.new_id()})")
        return self.data_dir / record_id

    def write(self, data: bytes) -> tuple[str, Path]:
        """Store ``data`` as a new record; return its id and path once durable."""
        record_id = self.new_id()
        path = self.data_dir / record_id
        tmp = self.data_dir / f".{record_id}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, path)
        fsync_dir(self.data_dir)
        return record_id, path

    def read(self, record_id: str, limit: int) -> bytes | None:
        """The record's content, or None when there is no such record."""
        try:
            fd = os.open(self.path_of(record_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            chunks: list[bytes] = []
            left = limit + 1
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if len(data) > limit:
            raise OSError(f"record {record_id} is larger than {limit} bytes")
        return data

    def list_ids(self, after: str = "", limit: int = 100) -> list[str]:
        """Ids greater than ``after``, in order, at most ``limit`` (<= MAX_LIST)."""
        limit = max(0, min(limit, MAX_LIST))
        with os.scandir(self.data_dir) as entries:
            return heapq.nsmallest(limit, (e.name for e in entries
                                           if e.name > after and valid_id(e.name)))
