"""Mirror log records: the unit of change that capture produces, the log
stores, the transport ships and apply executes.

Contract (shared by capture, log, transport and apply):

* An :class:`Op` is one file-system change relative to one mirror *tree*
  (index into the mirror's ``paths``). ``path`` is a POSIX path relative to
  the tree root, never absolute and never containing ``..`` when produced by
  capture; apply re-checks that anyway because records also arrive from the
  network.
* A :class:`Record` is an op stamped with the mirror ``term`` and log sequence
  number ``lsn`` (strictly increasing by 1 within a mirror log).
* The wire/disk encoding is ``u32 body_len, u32 crc32(body), body`` with
  ``body = u64 lsn, u64 term, u8 op, u16 tree, u16 len(path), path,
  u16 len(target), target, i64 value, u32 len(data), data``. Paths are UTF-8
  with ``surrogateescape`` so any Linux file name round-trips.

Op kinds and their fields:

=========  ==========================================================
kind       meaning
=========  ==========================================================
MKDIR      create directory ``path`` (mode in ``value``); exists is fine
CREATE     create or empty regular file ``path`` (mode in ``value``)
WRITE      write ``data`` at offset ``value`` (creates the file if absent)
TRUNCATE   set size of ``path`` to ``value``
RENAME     rename ``path`` to ``target`` (replacing ``target``)
UNLINK     remove file or symlink ``path``; absent is fine
RMDIR      remove directory ``path`` and everything below; absent is fine
SYMLINK    create symlink ``path`` -> ``target`` (replacing ``path``)
CHMOD      set mode bits (``value & 0o7777``) of ``path``
UTIME      set mtime of ``path`` to ``value`` nanoseconds
MARK       no file effect: a position marker (e.g. end of an initial scan);
           ``target`` names the marker
LINK       hard link ``path`` to the existing regular file ``target``
           (replacing ``path``; already that inode is fine)
CHOWN      set owner and group of ``path`` (never through a final symlink):
           :func:`pack_owner` in ``value``
SETXATTR   set extended attribute ``target`` of ``path`` to ``data``
REMOVEXATTR  remove extended attribute ``target`` of ``path``; absent is fine
FALLOCATE  fallocate(2) on ``path`` at offset ``value``; ``data`` is
           :func:`pack_fallocate` (length, mode)
=========  ==========================================================

LINK .. FALLOCATE come from the ``mount`` capture only; their numbers, like
every other kind's, are on disk and on the wire: never renumber.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

__all__ = [
    "FALLOCATE_MODES",
    "HEADER",
    "MAX_RECORD_BYTES",
    "Op",
    "OpKind",
    "Record",
    "RecordCorrupt",
    "decode_body",
    "decode_record",
    "encode_record",
    "pack_fallocate",
    "pack_owner",
    "unpack_fallocate",
    "unpack_owner",
]


class OpKind(enum.IntEnum):
    MKDIR = 1
    CREATE = 2
    WRITE = 3
    TRUNCATE = 4
    RENAME = 5
    UNLINK = 6
    RMDIR = 7
    SYMLINK = 8
    CHMOD = 9
    UTIME = 10
    MARK = 11
    LINK = 12
    CHOWN = 13
    SETXATTR = 14
    REMOVEXATTR = 15
    FALLOCATE = 16


FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
# The fallocate modes a FALLOCATE may carry: they replay to the same bytes
# and size (collapse and insert shift data: replayed twice they would not).
FALLOCATE_MODES = frozenset({0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                             FALLOC_FL_ZERO_RANGE, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE})
_U32 = (1 << 32) - 1
_FALLOCATE = struct.Struct(">QI")


def pack_owner(uid: int, gid: int) -> int:
    """A CHOWN's ``value``: ``uid << 32 | gid`` as a signed 64-bit integer
    (both u32: the full range round-trips)."""
    if not (0 <= uid <= _U32 and 0 <= gid <= _U32):
        raise ValueError(f"owner {uid}:{gid} is not two 32-bit ids")
    v = (uid << 32) | gid
    return v - (1 << 64) if v >= 1 << 63 else v


def unpack_owner(value: int) -> tuple[int, int]:
    v = value & ((1 << 64) - 1)
    return v >> 32, v & _U32


def pack_fallocate(length: int, mode: int) -> bytes:
    """A FALLOCATE's ``data``: ``>QI`` (length, mode)."""
    return _FALLOCATE.pack(length, mode)


def unpack_fallocate(data: bytes) -> tuple[int, int]:
    """(length, mode) of a FALLOCATE's ``data``; RecordCorrupt if malformed."""
    if len(data) != _FALLOCATE.size:
        raise RecordCorrupt("FALLOCATE data must be 12 bytes (length, mode)")
    length, mode = _FALLOCATE.unpack(data)
    return int(length), int(mode)


@dataclass(frozen=True, slots=True)
class Op:
    kind: OpKind
    tree: int
    path: str
    target: str = ""
    value: int = 0
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Record:
    lsn: int
    term: int
    op: Op

    @property
    def size(self) -> int:
        """Encoded size in bytes (what lag in bytes counts)."""
        op = self.op
        return (
            _OVERHEAD + len(_enc(op.path)) + len(_enc(op.target)) + len(op.data)
        )


class RecordCorrupt(ValueError):
    """A record failed its length or checksum test, or does not parse."""


HEADER = struct.Struct(">II")  # body length, crc32(body)
_FIXED = struct.Struct(">QQBH")  # lsn, term, op, tree
_LEN16 = struct.Struct(">H")
_VALUE = struct.Struct(">q")
_DATA_LEN = struct.Struct(">I")
_OVERHEAD = HEADER.size + _FIXED.size + 2 * _LEN16.size + _VALUE.size + _DATA_LEN.size
# A record carries at most one block of file data plus two paths; anything
# larger in a header is corruption, not a record.
MAX_RECORD_BYTES = 16 * 1024 * 1024


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def encode_record(record: Record) -> bytes:
    op = record.op
    path = _enc(op.path)
    target = _enc(op.target)
    body = b"".join(
        (
            _FIXED.pack(record.lsn, record.term, int(op.kind), op.tree),
            _LEN16.pack(len(path)),
            path,
            _LEN16.pack(len(target)),
            target,
            _VALUE.pack(op.value),
            _DATA_LEN.pack(len(op.data)),
            op.data,
        )
    )
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def decode_body(body: bytes, crc: int) -> Record:
    """Decode a body whose header (length, crc) was already read."""
    if zlib.crc32(body) != crc:
        raise RecordCorrupt("checksum mismatch")
    try:
        lsn, term, kind, tree = _FIXED.unpack_from(body, 0)
        pos = _FIXED.size
        (plen,) = _LEN16.unpack_from(body, pos)
        pos += _LEN16.size
        path = body[pos : pos + plen].decode("utf-8", "surrogateescape")
        pos += plen
        (tlen,) = _LEN16.unpack_from(body, pos)
        pos += _LEN16.size
        target = body[pos : pos + tlen].decode("utf-8", "surrogateescape")
        pos += tlen
        (value,) = _VALUE.unpack_from(body, pos)
        pos += _VALUE.size
        (dlen,) = _DATA_LEN.unpack_from(body, pos)
        pos += _DATA_LEN.size
        data = bytes(body[pos : pos + dlen])
        if pos + dlen != len(body):
            raise RecordCorrupt("trailing or missing bytes in record body")
        op_kind = OpKind(kind)
    except (struct.error, ValueError) as exc:
        if isinstance(exc, RecordCorrupt):
            raise
        raise RecordCorrupt(f"malformed record: {exc}") from exc
    return Record(lsn, term, Op(op_kind, tree, path, target, value, data))


def decode_record(buf: bytes) -> tuple[Record, int]:
    """Decode one record from the start of ``buf``; return it and its length.

    Raises :class:`RecordCorrupt` on a bad header, checksum or layout, and
    ``EOFError`` when ``buf`` holds only part of a record (a torn tail).
    """
    if len(buf) < HEADER.size:
        raise EOFError("partial record header")
    length, crc = HEADER.unpack_from(buf, 0)
    if length > MAX_RECORD_BYTES:
        raise RecordCorrupt(f"record length {length} exceeds {MAX_RECORD_BYTES}")
    end = HEADER.size + length
    if len(buf) < end:
        raise EOFError("partial record body")
    return decode_body(bytes(buf[HEADER.size : end]), crc), end
