"""mountd's journal: the changes made on the mount, numbered, held until the
agent has them durably, and the write fence.

Thread-safe (libfuse calls the handlers from several threads; the socket
threads feed back DURABLE/ACKED/MODE).

* **Order.** A mutating handler runs inside :meth:`Journal.mutation`: one lock
  held across "may we write?", the syscall on the backing store and the
  numbering of its record, so the journal's order is the order in which the
  backing store changed. (One lock for every mutating op, not one per file:
  the syscalls are page-cache fast; what must overlap is the waiting of
  fsyncs, which happens outside it.)
* **Bound.** At most ``max_bytes`` of encoded records are held; a mutation
  waits for room *before* it changes anything (back-pressure reaches the
  application), and fails with EROFS if the fence closes meanwhile.
* **Fence.** Writable only while the agent's lease (``MODE rw``, renewed)
  runs; :meth:`fence` closes it at once, after every mutation in flight has
  finished and been numbered, and returns the last number: nothing after it
  can change the backing store.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import secrets
import threading
import time
from collections.abc import Iterator

from mirrorkit.agent.log.records import Op, Record, encode_record

__all__ = ["MAX_GRANT", "Journal", "JournalClosed"]

MAX_GRANT = 60.0


def _now() -> float:
    # The primary's lease clock (util/clock.py): runs through a suspend.
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class JournalClosed(Exception):
    """mountd is shutting down."""


class Journal:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.session = secrets.token_hex(8)
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._op_lock = threading.Lock()
        self._held: collections.deque[tuple[int, bytes]] = collections.deque()
        self._held_bytes = 0
        self.next_seq = 1
        self.durable = 0
        self.acked = 0
        self._writable_until = 0.0
        self._closed = False

    # -- the application's side (FUSE handler threads) -----------------------

    def writable(self) -> bool:
        return _now() < self._writable_until

    @contextlib.contextmanager
    def mutation(self, room: int = 0) -> Iterator[_Mutation]:
        """Hold the op lock for one change: raises ``OSError(EROFS)`` when the
        fence is closed; waits for ``room`` bytes of journal first."""
        with self._cond:
            while True:
                if self._closed:
                    raise OSError(errno.EROFS, "mirrorkit-mountd is stopping")
                if not self.writable():
                    raise OSError(errno.EROFS, "the mount is read-only (not the primary, "
                                  "or its agent has not renewed the write lease)")
                if self._held_bytes + room <= self.max_bytes or not self._held:
                    break
                self._cond.wait(0.1)
        with self._op_lock:
            if not self.writable():  # fenced while we waited for the lock
                raise OSError(errno.EROFS, "the mount was fenced (read-only)")
            yield _Mutation(self)

    def _log(self, op: Op) -> int:
        # Caller holds _op_lock (through _Mutation).
        with self._cond:
            seq = self.next_seq
            self.next_seq += 1
            data = encode_record(Record(seq, 0, op))
            self._held.append((seq, data))
            self._held_bytes += len(data)
            self._cond.notify_all()
        return seq

    def last_seq(self) -> int:
        with self._cond:
            return self.next_seq - 1

    def wait(self, seq: int, *, acked: bool) -> None:
        """Block until ``seq`` is durable in the primary's log (or, ``acked``,
        on the active backup). EIO when the fence closes first: this member
        may no longer be the primary, the change may not survive a failover."""
        with self._cond:
            while (self.acked if acked else self.durable) < seq:
                if self._closed or not self.writable():
                    raise OSError(errno.EIO, "the mount was fenced before this change "
                                  "was durable on the mirror")
                self._cond.wait(0.05)

    # -- the agent's side (socket threads) -----------------------------------

    def held_after(self, seq: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Held records numbered after ``seq``, up to ``max_bytes`` (at least one)."""
        out: list[tuple[int, bytes]] = []
        size = 0
        with self._cond:
            # Held numbers are consecutive: skip straight to seq + 1 (islice
            # walks the deque in C; no per-item Python test of what is skipped).
            skip = max(0, seq + 1 - self._held[0][0]) if self._held else 0
            for item in itertools.islice(self._held, skip, None):
                if out and size + len(item[1]) > max_bytes:
                    break
                out.append(item)
                size += len(item[1])
        return out

    def first_held(self) -> int:
        with self._cond:
            return self._held[0][0] if self._held else self.next_seq

    def wait_new(self, seq: int, timeout: float) -> bool:
        """Wait until something numbered after ``seq`` is held."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed or self.next_seq - 1 > seq, timeout) and not self._closed

    def set_durable(self, seq: int) -> None:
        with self._cond:
            seq = min(seq, self.next_seq - 1)
            if seq <= self.durable:
                return
            self.durable = seq
            while self._held and self._held[0][0] <= seq:
                self._held_bytes -= len(self._held.popleft()[1])
            self._cond.notify_all()

    def set_acked(self, seq: int) -> None:
        with self._cond:
            seq = min(seq, self.durable)
            if seq > self.acked:
                self.acked = seq
                self._cond.notify_all()

    def set_writable(self, deadline: float) -> None:
        """Writable until ``deadline`` (CLOCK_BOOTTIME seconds; at most
        :data:`MAX_GRANT` from now: a confused sender cannot open it for long)."""
        with self._cond:
            if self._closed:
                return
            self._writable_until = min(deadline, _now() + MAX_GRANT)
            self._cond.notify_all()

    def fence(self) -> int:
        """Read-only from now on; every mutation in flight has finished. The
        last number given out."""
        with self._cond:
            self._writable_until = 0.0
            self._cond.notify_all()
        with self._op_lock:  # wait out a mutation that passed its check
            return self.last_seq()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._writable_until = 0.0
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"next_seq": self.next_seq, "durable": self.durable, "acked": self.acked,
                    "held_records": len(self._held), "held_bytes": self._held_bytes}


class _Mutation:
    """Handed to a handler inside :meth:`Journal.mutation`: logs its ops."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.seq = 0

    def log(self, op: Op) -> int:
        self.seq = self._journal._log(op)
        return self.seq
