"""The mount capture's marks in the mirror log: where, in mountd's numbering,
the log stands.

Every batch the capture emits *starts* with a mark naming the mountd changes
it carries, ``MARK "mount <host> <session> <first> <last>"``, followed by
exactly those ``last - first + 1`` changes, in one group commit. The mark
leads, not trails, because of the log's torn tail: a crash during the append
can leave a prefix of the batch after recovery (segments.py truncates at the
first record that does not decode), and a trailing mark would then be
missing while the prefix stays — the next start would resume before it and
log those changes twice, and a replica would apply a rename or a link twice.
With a leading mark the records that follow it say how much of the batch
survived: the resume point is ``first - 1 + min(count, records after it)``.

A resume or rescan batch has no changes (``first = last + 1``); a clean stop
ends with ``MARK "mount-fenced <host> <session> <seq>"``: mountd was fenced
after change ``seq`` and everything up to it is logged, so a later start
knows nothing unlogged can exist even if mountd restarted meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mirrorkit.agent.log.records import Op, OpKind, Record

__all__ = ["FENCED_PREFIX", "MARK_PREFIX", "LoggedMark", "MountMark", "UnreadableMark",
           "find_last_mark", "parse_mark"]

MARK_PREFIX = "mount "
FENCED_PREFIX = "mount-fenced "


@dataclass(frozen=True, slots=True)
class MountMark:
    host: str
    session: str
    first: int  # the first mountd change of the batch it leads
    last: int  # ... and its last (first - 1 when it leads none)
    fenced: bool = False  # a clean stop's mark: mountd fenced after ``last``

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def op(self) -> Op:
        if self.fenced:
            return Op(OpKind.MARK, 0, "", target=f"{FENCED_PREFIX}{self.host} {self.session} "
                      f"{self.last}")
        return Op(OpKind.MARK, 0, "", target=f"{MARK_PREFIX}{self.host} {self.session} "
                  f"{self.first} {self.last}")


def parse_mark(target: str) -> MountMark | None:
    """The mount mark a MARK record's target holds, or None (not one, or
    malformed). Never resume from a guess: the capture's start asks
    :func:`find_last_mark` with ``strict``, so a newest mark this version
    cannot read is a "lost" start (the peers are resynced)."""
    fenced = target.startswith(FENCED_PREFIX)
    if fenced:
        parts = target[len(FENCED_PREFIX):].split(" ")
        if len(parts) != 3 or not parts[2].isdigit():
            return None
        seq = int(parts[2])
        return MountMark(parts[0], parts[1], seq + 1, seq, fenced=True)
    if not target.startswith(MARK_PREFIX):
        return None
    parts = target[len(MARK_PREFIX):].split(" ")
    if len(parts) != 4 or not (parts[2].isdigit() and parts[3].isdigit()):
        return None
    first, last = int(parts[2]), int(parts[3])
    if first < 1 or last < first - 1:
        return None
    return MountMark(parts[0], parts[1], first, last)


@dataclass(frozen=True, slots=True)
class LoggedMark:
    """The newest mount mark in a log, and what of its batch the log holds."""

    mark: MountMark
    lsn: int  # the mark's own LSN
    after: int  # the last mountd change of its session the log holds

    @classmethod
    def at(cls, mark: MountMark, lsn: int, records_after: int) -> LoggedMark:
        """``records_after``: how many records the log holds after the mark."""
        return cls(mark, lsn, mark.first - 1 + min(mark.count, records_after))

    @property
    def torn(self) -> bool:
        """The log holds only part of the mark's batch (a torn tail)."""
        return self.after < self.mark.last


class _Log(Protocol):
    @property
    def first_lsn(self) -> int: ...

    @property
    def last_lsn(self) -> int: ...

    def read(self, from_lsn: int, max_bytes: int = ...) -> list[Record]: ...


class UnreadableMark(Exception):
    """The newest mount mark in the log is one this version cannot read."""


def find_last_mark(log: _Log, window: int = 8192, *,
                   strict: bool = False) -> LoggedMark | None:
    """The newest mount mark in the retained ``log`` (windows of ``window``
    records read backwards from its end: the last batch normally holds it).
    ``strict``: when the newest MARK that looks like a mount mark (its
    prefix) cannot be read (another version's format, damage), raise
    :class:`UnreadableMark` instead of looking further back: the capture
    then cannot vouch for the log, which is a "lost" start (a checksum
    resync of the peers), not a first one. Blocking: call it in a worker
    thread."""
    end = log.last_lsn
    while end >= log.first_lsn:
        start = max(log.first_lsn, end - window + 1)
        found: tuple[MountMark, int] | None = None
        unreadable: tuple[str, int] | None = None
        lsn = start
        while lsn <= end:
            records = log.read(lsn, 4 << 20)
            if not records:
                break
            for record in records:
                if record.lsn > end:
                    break
                if record.op.kind is OpKind.MARK:
                    mark = parse_mark(record.op.target)
                    if mark is not None:
                        found = (mark, record.lsn)
                    elif record.op.target.startswith((MARK_PREFIX, FENCED_PREFIX)):
                        unreadable = (record.op.target, record.lsn)
            lsn = records[-1].lsn + 1
        if strict and unreadable is not None and (found is None or unreadable[1] > found[1]):
            raise UnreadableMark(f"the newest mount mark in the log (LSN {unreadable[1]}, "
                                 f"{unreadable[0][:80]!r}) is not one this version reads")
        if found is not None:
            mark, at = found
            return LoggedMark.at(mark, at, log.last_lsn - at)
        end = start - 1
    return None
