"""The mirror log: append-only, segmented, checksummed (ProMirror's SAM).

Layout: ``<state_dir>/<mirror>/log/<first_lsn:020d>.log`` segments holding
records encoded by :mod:`mirrorkit.agent.log.records`, LSNs consecutive across
segments. The same class serves the primary (capture appends) and receivers
(they log what they receive before applying it).

Durability (fsync policy):

* :meth:`MirrorLog.append` is a *group commit*: it writes the whole batch and
  ``fdatasync``\\ s the segment before it returns and before the new records
  become visible to readers (``last_lsn``). Nothing is shipped or acknowledged
  before that, so every record a peer ever saw, and every LSN this member ever
  acknowledged, survives a crash.
* A new segment file is created and its directory fsynced before records go
  into it; a dropped segment is unlinked and the directory fsynced.

Recovery on open: every segment is scanned record by record, checking length,
CRC and LSN continuity. A record that does not decode (partial, bad length,
CRC or layout) is

* a **torn tail** when it is in the *last* segment and no record that passes
  its checksum (with a higher LSN) follows it anywhere in that segment: the
  remains of a batch whose ``fdatasync`` never returned, so never shipped nor
  acknowledged. The log is truncated there (WARNING line; bytes that are not
  merely a partial record are kept in ``log/quarantine/<segment>.<byte>.torn.*``)
  and the member continues;
* **corruption in the middle** otherwise: valid data follows it, or it is in
  a segment that is not the last, or a record with a valid checksum carries
  the wrong LSN, or a segment is missing. :class:`LogCorrupt` is raised naming
  the file, byte offset and LSN; nothing is truncated, moved or applied, so
  every later attempt to open the log fails the same way until an operator
  moves the log directory aside (docs/architecture.md).

A bit flip in the very last committed record looks exactly like a torn write
and is truncated like one (the format has no commit marker to tell them
apart). On a receiver that is harmless: it asks the primary again from its
last logged LSN. On a primary that record's LSN would be reused for the next
change; receivers that already hold it would keep the old one (a known limit,
caught by online verification).

Retention: :meth:`trim` drops whole segments from the front when the log is
over ``max_bytes`` (default 1 GiB): first segments every member has
acknowledged; if it is still over the limit, older unacknowledged segments
too (a member that falls off the retained log gets a full resync). The active
segment is never dropped.

Threading: one appender at a time (append, trim and reset; a worker thread
is fine, the callers serialise them) and any number of readers in any
threads, the event loop's included. ``_lock`` guards the segment list and
each segment's published ``offsets``/``end``; it is never held across disk
I/O, so a loop-side reader (``last_lsn``, ``size``, ``bytes_between`` for
lag and status) never waits for the disk:

* :meth:`read_raw` locates the range and duplicates (``dup``) the segment's
  descriptor under the lock, then reads through the duplicate without it.
  A segment trimmed (or reset away) meanwhile is closed and unlinked, but the
  duplicate keeps the file readable, and the range read was published, hence
  durable and immutable: the bytes are the records asked for. The duplicate
  is also why a closed descriptor number reused by another ``open`` can never
  be read by mistake.
* Readers see records only once they are durable (published after the
  batch's ``fdatasync``), and never bytes past a segment's published ``end``.
* :meth:`reset` swaps the whole segment list at once, so ``first_lsn`` and
  ``last_lsn`` never see an empty list from another thread.

Instrumentation: an optional ``stats`` (:class:`LogStats`) is told each
append's fdatasync time and size and each file put into quarantine.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import struct
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mirrorkit.agent.log.records import (
    HEADER,
    MAX_RECORD_BYTES,
    Op,
    Record,
    RecordCorrupt,
    decode_body,
    encode_record,
)
from mirrorkit.atomicfile import fsync_dir

__all__ = ["LogCorrupt", "LogError", "LogStats", "MirrorLog", "decode_all", "decode_at",
           "valid_record_after"]

log = logging.getLogger(__name__)

_SUFFIX = ".log"


class LogStats(Protocol):
    """What the log reports to the agent's metrics (util.stats.MirrorMetrics);
    called from the appending thread."""

    def log_fsync(self, seconds: float) -> None: ...

    def log_appended(self, records: int, nbytes: int) -> None: ...

    def quarantined(self, reason: str, files: int = 1) -> None: ...


class LogError(Exception):
    """A caller broke the log's rules (e.g. a non-consecutive LSN)."""


class LogCorrupt(LogError):
    """Corruption in the middle of the log: the member must not use it.

    Raised by :class:`MirrorLog` on open; nothing on disk was changed, so
    opening again (the agent retries a failed mirror) fails the same way."""

    def __init__(self, path: Path, offset: int, lsn: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.lsn = lsn
        self.reason = reason
        super().__init__(
            f"mirror log corrupt in {path} at byte {offset}, record LSN {lsn}: {reason}. "
            f"Not a torn tail: refusing to use the log (nothing past LSN {lsn - 1} is "
            f"applied or shipped). To recover, stop the agent and move "
            f"{path.parent} aside (see docs/architecture.md, 'Mirror log durability')")


@dataclass(slots=True)
class _Segment:
    path: Path
    first_lsn: int
    fd: int  # read-write descriptor; the log owns it
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    end: int = 0  # bytes of valid records

    @property
    def last_lsn(self) -> int:
        return self.first_lsn + len(self.offsets) - 1


def decode_at(buf: bytes, pos: int) -> tuple[Record, int]:
    """Decode the record at ``buf[pos:]`` without copying the rest of ``buf``.

    Same errors as :func:`records.decode_record`: ``EOFError`` for a partial
    record, :class:`RecordCorrupt` for a bad one.
    """
    if len(buf) - pos < HEADER.size:
        raise EOFError("partial record header")
    length, crc = HEADER.unpack_from(buf, pos)
    if length > MAX_RECORD_BYTES:
        raise RecordCorrupt(f"record length {length} exceeds {MAX_RECORD_BYTES}")
    end = pos + HEADER.size + length
    if len(buf) < end:
        raise EOFError("partial record body")
    return decode_body(buf[pos + HEADER.size : end], crc), end - pos


def decode_all(buf: bytes, max_records: int | None = None) -> list[Record]:
    """Decode a buffer holding whole records only (a partial one is corrupt).
    More than ``max_records`` records is corrupt too, found before the one
    past the bound is decoded (a frame's decoding is bounded work)."""
    out: list[Record] = []
    pos = 0
    while pos < len(buf):
        if max_records is not None and len(out) >= max_records:
            raise RecordCorrupt(f"more than {max_records} records in one buffer")
        try:
            record, length = decode_at(buf, pos)
        except EOFError as exc:
            raise RecordCorrupt(str(exc)) from None
        out.append(record)
        pos += length
    return out


_PROBE = struct.Struct(">IIQ")  # body length, crc, the body's leading LSN
_MIN_BODY = 8 + 8 + 1 + 2 + 2 + 2 + 8 + 4  # lsn, term, op, tree, 2 lengths, value, data len


def valid_record_after(buf: bytes, pos: int, after_lsn: int) -> tuple[int, int] | None:
    """(offset, LSN) of the first record after ``buf[pos]`` that passes its
    checksum and carries an LSN above ``after_lsn``; ``None`` if there is none.

    Candidates are found with a regular expression on the LSN's high bytes
    (so a zero-filled or random tail is skipped at C speed), then decoded."""
    lo = after_lsn + 1
    hi = after_lsn + 1 + (len(buf) - pos) // (HEADER.size + _MIN_BODY)
    prefix = b""
    if lo >> 32 == hi >> 32:
        prefix = re.escape(struct.pack(">I", lo >> 32))
        if lo & 0xFFFFFFFF:  # no LSN in range has four zero low bytes
            prefix += rb"(?!\x00{4})"
    pattern = re.compile(rb"(?s)(?=.{8}" + prefix + rb")")
    for match in pattern.finditer(buf, pos + 1):
        p = match.start()
        if p + _PROBE.size > len(buf):
            break
        length, _crc, lsn = _PROBE.unpack_from(buf, p)
        if not (lo <= lsn <= hi and _MIN_BODY <= length <= len(buf) - p - HEADER.size):
            continue
        try:
            record, _ = decode_at(buf, p)
        except (EOFError, RecordCorrupt):
            continue
        return p, record.lsn
    return None


def _name(lsn: int) -> str:
    return f"{lsn:020d}{_SUFFIX}"


class MirrorLog:
    """One mirror's log directory. Not safe for two appenders."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 64 << 20,
        max_bytes: int = 1 << 30,
        stats: LogStats | None = None,
    ) -> None:
        self.directory = directory
        self.stats = stats
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        directory.mkdir(parents=True, exist_ok=True)
        try:
            self._recover()
        except BaseException:
            self.close()
            raise
        if not self._segments:
            self._segments.append(self._create_segment(1))

    # -- recovery -----------------------------------------------------------

    def _recover(self) -> None:
        names = sorted(p for p in self.directory.iterdir()
                       if p.name.endswith(_SUFFIX) and p.name[:-4].isdigit())
        expected: int | None = None
        for index, path in enumerate(names):
            first = int(path.name[: -len(_SUFFIX)])
            if expected is not None and first != expected:
                raise LogCorrupt(path, 0, expected, f"segment starts at LSN {first}: the "
                                 f"segment holding LSN {expected} is missing")
            seg = _Segment(path, first, os.open(path, os.O_RDWR))
            self._segments.append(seg)
            last = index == len(names) - 1
            self._scan(seg, last_segment=last)
            if last:
                # After a crash of this process (not of the host) the tail may
                # hold whole records whose fdatasync never ran: still only in
                # the page cache. Make them durable before anything is built on
                # them (resumed from, shipped, acknowledged).
                os.fdatasync(seg.fd)
            expected = seg.last_lsn + 1

    def _scan(self, seg: _Segment, *, last_segment: bool) -> None:
        """Index ``seg``; truncate a torn tail; raise :class:`LogCorrupt` on
        corruption in the middle (see the module docstring)."""
        with open(seg.path, "rb") as f:
            buf = f.read()
        pos = 0
        while pos < len(buf):
            expected = seg.first_lsn + len(seg.offsets)
            try:
                record, length = decode_at(buf, pos)
            except (EOFError, RecordCorrupt) as exc:
                self._bad_record(seg, buf, pos, str(exc), partial=isinstance(exc, EOFError),
                                 last_segment=last_segment)
                break
            if record.lsn != expected:
                # A record that passes its checksum cannot come from a torn write.
                raise LogCorrupt(seg.path, pos, expected,
                                 f"holds LSN {record.lsn} (valid checksum, wrong sequence)")
            seg.offsets.append(pos)
            pos += length
        seg.end = pos

    def _bad_record(self, seg: _Segment, buf: bytes, pos: int, reason: str, *,
                    partial: bool, last_segment: bool) -> None:
        """A record at ``pos`` does not decode: truncate if it is a torn tail."""
        expected = seg.first_lsn + len(seg.offsets)
        if not last_segment:
            raise LogCorrupt(seg.path, pos, expected, f"{reason}; later segments follow")
        found = valid_record_after(buf, pos, expected - 1)
        if found is not None:
            raise LogCorrupt(seg.path, pos, expected,
                             f"{reason}; a valid record (LSN {found[1]}) follows at byte "
                             f"{found[0]}")
        # A write that crashed before its fsync: never committed, never acked.
        tail = buf[pos:]
        if partial:
            log.warning("log %s: torn tail at byte %d (partial record LSN %d): truncating "
                        "%d bytes", seg.path, pos, expected, len(tail))
        else:
            name = self._save_quarantine(f"{seg.path.name}.{pos}.torn", tail)
            if self.stats is not None:
                self.stats.quarantined("torn_tail")
            log.warning("log %s: torn tail at byte %d (LSN %d: %s, no valid record after "
                        "it): truncating %d bytes (kept as %s)", seg.path, pos, expected,
                        reason, len(tail), name)
        os.ftruncate(seg.fd, pos)
        os.fsync(seg.fd)

    def _save_quarantine(self, name: str, data: bytes) -> Path:
        q = self.directory / "quarantine"
        q.mkdir(exist_ok=True)
        dest = q / f"{name}.{int(time.time())}"
        dest.write_bytes(data)
        return dest

    # -- state --------------------------------------------------------------

    @property
    def first_lsn(self) -> int:
        """LSN of the oldest retained record (``last_lsn + 1`` when empty)."""
        return self._segments[0].first_lsn

    @property
    def last_lsn(self) -> int:
        """LSN of the newest durable record (``first_lsn - 1`` when empty)."""
        return self._segments[-1].last_lsn

    @property
    def size(self) -> int:
        with self._lock:
            return sum(s.end for s in self._segments)

    def close(self) -> None:
        with self._lock:
            for seg in self._segments:
                os.close(seg.fd)
            self._segments = []

    # -- append -------------------------------------------------------------

    def append_ops(self, ops: Sequence[Op], term: int) -> list[Record]:
        """Stamp ``ops`` with the next LSNs and ``term``; append durably."""
        first = self.last_lsn + 1
        records = [Record(first + i, term, op) for i, op in enumerate(ops)]
        self.append(records)
        return records

    def append(self, records: Sequence[Record]) -> None:
        """Append consecutive records durably (one fdatasync for the batch)."""
        if not records:
            return
        expected = self.last_lsn + 1
        for i, r in enumerate(records):
            if r.lsn != expected + i:
                raise LogError(f"record LSN {r.lsn} where {expected + i} was expected")
        encoded = [encode_record(r) for r in records]
        seg = self._segments[-1]
        if seg.end >= self.segment_bytes:
            seg = self._create_segment(expected)
            with self._lock:
                self._segments.append(seg)
        data = b"".join(encoded)
        written = 0
        while written < len(data):
            written += os.pwrite(seg.fd, data[written:], seg.end + written)
        started = time.perf_counter()
        os.fdatasync(seg.fd)
        if self.stats is not None:
            self.stats.log_fsync(time.perf_counter() - started)
            self.stats.log_appended(len(records), len(data))
        # Publish only now: a reader never ships a record that is not durable.
        with self._lock:
            pos = seg.end
            for chunk in encoded:
                seg.offsets.append(pos)
                pos += len(chunk)
            seg.end = pos

    def _create_segment(self, first_lsn: int) -> _Segment:
        path = self.directory / _name(first_lsn)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        fsync_dir(self.directory)
        return _Segment(path, first_lsn, fd)

    def reset(self, next_lsn: int) -> None:
        """Drop every record and continue at ``next_lsn`` (after a full resync)."""
        # Unlink first (the new segment may reuse an old name); readers keep
        # the old, still open segments until the swap (see Threading).
        old = list(self._segments)
        for seg in old:
            seg.path.unlink(missing_ok=True)
        new = self._create_segment(next_lsn)
        with self._lock:
            self._segments = [new]
            for seg in old:
                os.close(seg.fd)
        log.info("log %s: reset, next LSN %d", self.directory, next_lsn)

    # -- read ---------------------------------------------------------------

    def _locate(self, lsn: int) -> tuple[_Segment, int]:
        firsts = [s.first_lsn for s in self._segments]
        seg = self._segments[bisect.bisect_right(firsts, lsn) - 1]
        return seg, lsn - seg.first_lsn

    def read_raw(self, from_lsn: int, max_bytes: int = 1 << 20,
                 max_records: int = 1 << 62) -> tuple[bytes, int]:
        """Encoded records from ``from_lsn`` (at least one if any), within one
        segment, about ``max_bytes`` and at most ``max_records``; returns
        (bytes, record count)."""
        with self._lock:
            if from_lsn < self.first_lsn:
                raise LogError(f"LSN {from_lsn} is before the log start {self.first_lsn}")
            if from_lsn > self.last_lsn:
                return b"", 0
            seg, index = self._locate(from_lsn)
            start = seg.offsets[index]
            count = 1
            limit = start + max(max_bytes, 1)
            n = len(seg.offsets)
            while (index + count < n and seg.offsets[index + count] < limit
                   and count < max_records):
                count += 1
            # The last included record ends where the next begins (or at end).
            stop = seg.offsets[index + count] if index + count < n else seg.end
            if stop - start > max_bytes and count > 1:
                count -= 1
                stop = seg.offsets[index + count]
            fd = os.dup(seg.fd)  # read without the lock (see Threading)
        try:
            data = os.pread(fd, stop - start, start)
        finally:
            os.close(fd)
        if len(data) != stop - start:
            raise LogError(f"short read in {seg.path.name}")
        return data, count

    def read(self, from_lsn: int, max_bytes: int = 1 << 20) -> list[Record]:
        data, _count = self.read_raw(from_lsn, max_bytes)
        return decode_all(data)

    def bytes_between(self, first: int, last: int) -> int:
        """Encoded bytes of the retained records ``first..last`` inclusive."""
        with self._lock:
            first = max(first, self.first_lsn)
            last = min(last, self.last_lsn)
            if last < first:
                return 0
            return self._pos(last + 1) - self._pos(first)

    def _pos(self, lsn: int) -> int:
        total = 0
        for seg in self._segments:
            if lsn <= seg.last_lsn:
                return total + seg.offsets[lsn - seg.first_lsn]
            total += seg.end
        return total

    # -- retention ----------------------------------------------------------

    def trim(self, min_acked_lsn: int, *, drop_unacked: bool = True) -> int:
        """Drop front segments while over ``max_bytes``; return how many.

        ``drop_unacked=False`` keeps segments past ``min_acked_lsn`` whatever
        the size (a receiver never drops what it has not applied yet)."""
        dropped = 0
        while True:
            with self._lock:
                if len(self._segments) < 2:
                    break
                total = sum(s.end for s in self._segments)
                if total <= self.max_bytes:
                    break
                seg = self._segments[0]
                if seg.last_lsn > min_acked_lsn:
                    if not drop_unacked:
                        break
                    log.warning("log %s over %d bytes: dropping unacknowledged segment %s "
                                "(members behind LSN %d will need a full resync)",
                                self.directory, self.max_bytes, seg.path.name, seg.last_lsn)
                self._segments.pop(0)
            os.close(seg.fd)
            seg.path.unlink(missing_ok=True)
            dropped += 1
        if dropped:
            fsync_dir(self.directory)
            log.info("log %s: dropped %d segment(s), first LSN now %d", self.directory,
                     dropped, self.first_lsn)
        return dropped

