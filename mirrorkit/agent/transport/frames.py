"""Wire protocol between agents: framed, versioned messages.

Frame: ``b"MK"``, u8 protocol version, u8 message type, u32 payload length,
payload. Control messages carry a UTF-8 JSON object; ``RECORDS`` carries
records encoded exactly as in the log (:mod:`mirrorkit.agent.log.records`), so the
primary ships log bytes unchanged and the receiver re-checks every CRC.

Any frame that is not exactly right (magic, version, type, length bound, JSON
shape, field types, record CRC) raises :class:`ProtocolError`; the transport
closes the connection and logs the reason. Nothing here trusts the peer.

Conversation (client = the member that dials):

1. client -> ``HELLO``; server checks the certificate against the claim and
   answers ``HELLO`` (or ``ERROR`` and closes);
2. replication (server = primary, client = backup/async): server sends
   ``RECORDS`` and ``HEARTBEAT`` when idle; client answers ``ACK`` and
   ``HEARTBEAT``. A resync (:mod:`mirrorkit.agent.resync.compare`) is
   ``RESYNC_BEGIN`` from the server, ``MANIFEST``... ``MANIFEST_END`` from
   the client, then ``RECORDS`` with LSN 0 and ``RESYNC_PROGRESS`` from the
   server, ``RESYNC_END``, and the log after it. A client that cannot apply
   a record sends ``APPLY_FAILED`` (and no ACK past it);
3. arbiter (server = arbiter, client = primary/backup): both sides send
   ``HEARTBEAT`` every heartbeat interval.
"""

from __future__ import annotations

import asyncio
import enum
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from mirrorkit.agent.log.records import Record, RecordCorrupt, encode_record
from mirrorkit.agent.log.segments import decode_all
from mirrorkit.agent.log.terms import valid_history
from mirrorkit.agent.transport.manifest_items import (
    ManifestCorrupt,
    ManifestItem,
    decode_items,
    encode_item,
)

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "TERM",
    "Ack",
    "ApplyFailed",
    "Error",
    "Heartbeat",
    "Hello",
    "Manifest",
    "ManifestEnd",
    "Message",
    "MsgType",
    "ProtocolError",
    "Records",
    "ResyncBegin",
    "ResyncEnd",
    "ResyncProgress",
    "decode_frame",
    "encode_message",
    "read_message",
]

# 2: every message carries the sender's term and HELLO its term history.
# Agents of one mirror run the same version (the role ships one wheel); a
# member speaking another version is refused with that reason.
PROTOCOL_VERSION = 2
MAGIC = b"MK"
FRAME = struct.Struct(">2sBBI")
TERM = struct.Struct(">Q")  # binary payloads (RECORDS, MANIFEST) start with it
# One batch of at most ~1 MiB, or a single record of up to 16 MiB, plus slack.
MAX_FRAME = 20 << 20
MAX_CONTROL = 64 << 10
THREAD_DECODE_BYTES = 64 << 10  # RECORDS/MANIFEST payloads above this decode in a thread


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame or message."""


class MsgType(enum.IntEnum):
    HELLO = 1
    RECORDS = 2
    ACK = 3
    HEARTBEAT = 4
    ERROR = 5
    RESYNC_BEGIN = 6
    RESYNC_END = 7
    MANIFEST = 8
    MANIFEST_END = 9
    RESYNC_PROGRESS = 10
    APPLY_FAILED = 11


@dataclass(frozen=True, slots=True)
class Hello:
    mirror: str
    member: str
    role: str
    term: int
    last_lsn: int
    # The sender's term history (log/terms.py): [[term, first LSN], ...].
    history: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Records:
    term: int
    records: list[Record] = field(default_factory=list)
    raw: bytes = b""  # already-encoded records (primary ships log bytes as-is)


@dataclass(frozen=True, slots=True)
class Ack:
    lsn: int  # durably applied
    received: int  # durably logged
    term: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    term: int
    lsn: int
    role: str = ""
    lag_bytes: int = 0
    lag_records: int = 0
    lag_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Error:
    reason: str
    term: int


@dataclass(frozen=True, slots=True)
class ResyncBegin:
    lsn: int  # the log position the snapshot starts from
    term: int
    mode: str = "checksum"  # all | different | newer | checksum
    keep_orphans: int = 0  # 1: report replica-only files, do not move them
    block_size: int = 64 * 1024  # for the manifest's block hashes
    id: int = 0  # the primary's resync id (status correlates with it)


@dataclass(frozen=True, slots=True)
class Manifest:
    term: int
    items: list[ManifestItem] = field(default_factory=list)
    raw: bytes = b""  # ``items`` already encoded (built off the event loop)


@dataclass(frozen=True, slots=True)
class ManifestEnd:
    entries: int
    term: int


@dataclass(frozen=True, slots=True)
class ResyncProgress:
    files_total: int
    files_done: int
    bytes_total: int
    bytes_done: int
    bytes_sent: int
    orphans: int
    term: int


@dataclass(frozen=True, slots=True)
class ResyncEnd:
    lsn: int  # after applying the snapshot the receiver is at this LSN
    term: int


@dataclass(frozen=True, slots=True)
class ApplyFailed:
    """Receiver -> primary: record ``lsn`` (0: a resync record) cannot be
    applied; nothing after ``lsn - 1`` is acknowledged. ``resync`` 1 asks the
    primary for a checksum resync, 0 says the member stopped (it waits for an
    operator's resync)."""

    lsn: int
    reason: str
    resync: int
    term: int


Message = (Hello | Records | Ack | Heartbeat | Error | ResyncBegin | ResyncEnd | Manifest
           | ManifestEnd | ResyncProgress | ApplyFailed)

_FIELDS: dict[MsgType, tuple[type[Any], dict[str, type | tuple[type, ...]]]] = {
    MsgType.HELLO: (Hello, {"mirror": str, "member": str, "role": str, "term": int,
                            "last_lsn": int, "history": list}),
    MsgType.ACK: (Ack, {"lsn": int, "received": int, "term": int}),
    MsgType.HEARTBEAT: (Heartbeat, {"term": int, "lsn": int, "role": str, "lag_bytes": int,
                                    "lag_records": int, "lag_seconds": (int, float)}),
    MsgType.ERROR: (Error, {"reason": str, "term": int}),
    MsgType.RESYNC_BEGIN: (ResyncBegin, {"lsn": int, "term": int, "mode": str,
                                         "keep_orphans": int, "block_size": int, "id": int}),
    MsgType.RESYNC_END: (ResyncEnd, {"lsn": int, "term": int}),
    MsgType.MANIFEST_END: (ManifestEnd, {"entries": int, "term": int}),
    MsgType.RESYNC_PROGRESS: (ResyncProgress, {
        "files_total": int, "files_done": int, "bytes_total": int, "bytes_done": int,
        "bytes_sent": int, "orphans": int, "term": int}),
    MsgType.APPLY_FAILED: (ApplyFailed, {"lsn": int, "reason": str, "resync": int,
                                         "term": int}),
}
_TYPES: dict[type[Any], MsgType] = {cls: t for t, (cls, _) in _FIELDS.items()}
_BINARY = (MsgType.RECORDS, MsgType.MANIFEST)
_OPTIONAL = {"role", "lag_bytes", "lag_records", "lag_seconds", "mode", "keep_orphans",
             "block_size", "id", "history"}


def encode_message(msg: Message) -> bytes:
    if isinstance(msg, Records):
        payload = TERM.pack(msg.term) + (msg.raw or b"".join(encode_record(r)
                                                             for r in msg.records))
        mtype = MsgType.RECORDS
    elif isinstance(msg, Manifest):
        payload = TERM.pack(msg.term) + (msg.raw or b"".join(encode_item(i) for i in msg.items))
        mtype = MsgType.MANIFEST
    else:
        mtype = _TYPES[type(msg)]
        fields = _FIELDS[mtype][1]
        payload = json.dumps({k: getattr(msg, k) for k in fields}).encode()
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds {MAX_FRAME}")
    return FRAME.pack(MAGIC, PROTOCOL_VERSION, int(mtype), len(payload)) + payload


def _check_header(header: bytes) -> tuple[MsgType, int]:
    magic, version, mtype, length = FRAME.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (we speak "
                            f"{PROTOCOL_VERSION})")
    try:
        kind = MsgType(mtype)
    except ValueError:
        raise ProtocolError(f"unknown message type {mtype}") from None
    limit = MAX_FRAME if kind in _BINARY else MAX_CONTROL
    if length > limit:
        raise ProtocolError(f"{kind.name} frame of {length} bytes exceeds {limit}")
    return kind, length


def _decode_payload(kind: MsgType, payload: bytes) -> Message:
    if kind in _BINARY:
        if len(payload) < TERM.size:
            raise ProtocolError(f"{kind.name} payload lacks the sender's term")
        (term,) = TERM.unpack_from(payload)
        body = payload[TERM.size:]
    if kind is MsgType.RECORDS:
        try:
            records = decode_all(body)
        except RecordCorrupt as exc:
            raise ProtocolError(f"corrupt record in RECORDS: {exc}") from None
        return Records(term, records=records)
    if kind is MsgType.MANIFEST:
        try:
            return Manifest(term, decode_items(body))
        except ManifestCorrupt as exc:
            raise ProtocolError(f"corrupt MANIFEST: {exc}") from None
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{kind.name} payload is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{kind.name} payload is not a JSON object")
    cls, fields = _FIELDS[kind]
    args: dict[str, Any] = {}
    for name, ftype in fields.items():
        if name not in obj:
            if name in _OPTIONAL:
                continue
            raise ProtocolError(f"{kind.name} lacks field {name!r}")
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, ftype):
            raise ProtocolError(f"{kind.name}.{name} has the wrong type")
        if isinstance(value, int) and value < 0:
            raise ProtocolError(f"{kind.name}.{name} is negative")
        args[name] = value
    if kind is MsgType.HELLO and "history" in args:
        problem = valid_history(args["history"])
        if problem is not None:
            raise ProtocolError(f"HELLO.history: {problem}")
    msg: Message = cls(**args)
    return msg


def decode_frame(buf: bytes) -> tuple[Message, int]:
    """Decode one whole frame from ``buf``; return it and the bytes used."""
    if len(buf) < FRAME.size:
        raise ProtocolError("truncated frame header")
    kind, length = _check_header(buf[: FRAME.size])
    end = FRAME.size + length
    if len(buf) < end:
        raise ProtocolError("truncated frame payload")
    return _decode_payload(kind, buf[FRAME.size : end]), end


async def read_message(reader: asyncio.StreamReader) -> Message:
    """Read one message. ``asyncio.IncompleteReadError`` means the peer closed
    (possibly mid-frame); :class:`ProtocolError` means it sent garbage."""
    header = await reader.readexactly(FRAME.size)
    kind, length = _check_header(header)
    payload = await reader.readexactly(length)
    if kind in _BINARY and length > THREAD_DECODE_BYTES:
        # Checking and decoding 1 MiB of small records takes tens of ms of
        # CPU: not on the event loop.
        return await asyncio.to_thread(_decode_payload, kind, payload)
    return _decode_payload(kind, payload)
