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
import dataclasses
import enum
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mirrorkit.agent.log.records import Record, RecordCorrupt, encode_record
from mirrorkit.agent.log.segments import decode_all
from mirrorkit.agent.log.terms import valid_history
from mirrorkit.agent.transport.manifest_items import (
    MAX_ITEMS_PER_FRAME,
    ManifestCorrupt,
    ManifestItem,
    decode_items,
    encode_item,
)
from mirrorkit.agent.util import boundedjson

__all__ = [
    "MAX_FRAME",
    "MAX_RECORDS_PER_FRAME",
    "PROTOCOL_VERSION",
    "TERM",
    "Ack",
    "ApplyFailed",
    "Error",
    "Handover",
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
    "VersionMismatch",
    "decode_frame",
    "encode_message",
    "read_message",
]

# 2: every message carries the sender's term and HELLO its term history.
# Agents of one mirror run the same version (the role ships one wheel); a
# member speaking another version is refused with that reason.
# 3: HEARTBEAT carries stamp/echo (the primary's lease) and the arbiter's
# view of the primary; HANDOVER (switchover).
# Fields added since (``ADDED_FIELDS``) keep version 3: they are optional and
# sent only when set, so a member of the previous release reads every frame
# that does not use them; one that does is refused there as an unknown
# field, and each such refusal is the safe outcome (see ADDED_FIELDS).
PROTOCOL_VERSION = 3
MAGIC = b"MK"
FRAME = struct.Struct(">2sBBI")
TERM = struct.Struct(">Q")  # binary payloads (RECORDS, MANIFEST) start with it
# One batch of at most ~1 MiB, or a single record of up to 16 MiB, plus slack.
MAX_FRAME = 20 << 20
# Decoding costs per record (~9 us each), not per byte: a 20 MiB frame of
# 43-byte records was 487,709 of them and 4.2 s of CPU. Senders cut their
# batches at this count (stream/sender, resync/primary); a frame over it is
# refused before the record past the bound is decoded.
MAX_RECORDS_PER_FRAME = 4096
MAX_CONTROL = 64 << 10
THREAD_DECODE_BYTES = 64 << 10  # RECORDS/MANIFEST payloads above this decode in a thread


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame or message."""


class VersionMismatch(ProtocolError):
    """The peer speaks another protocol version (a rolling upgrade under way)."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(f"unsupported protocol version {version} (we speak "
                         f"{PROTOCOL_VERSION})")


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
    HANDOVER = 12


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
    # The sender's own clock (seconds, CLOCK_BOOTTIME) when it sent this, and
    # the latest ``stamp`` it has received from us (0: none yet). A primary's
    # lease is renewed by the echo of its own stamp (ha/lease.py): proof that
    # the peer heard it then, whichever way the network fails.
    stamp: float = 0.0
    echo: float = 0.0
    # Sent by the arbiter only: the member it holds to be the primary of its
    # term ("" none) and how long it has not heard that primary claim it
    # while the arbiter was listening (arbiter/witness.py).
    primary: str = ""
    primary_silence: float = 0.0
    # Sync mode (stream/sync_ack.py). From the primary: "I ask to run
    # without my backup in term ``backup_out``" (``backup_out_lsn``: the
    # backup's received LSN then; it lacks what follows), or "my backup has
    # everything again: clear it" (``backup_back``, a term). From the arbiter:
    # "the primary of term ``backup_out`` runs without its backup, persisted
    # here" (0: it does not), which makes the backup not active.
    backup_out: int = 0
    backup_out_lsn: int = 0
    backup_back: int = 0
    # From a backup: 1 = it would not promote itself now (not active,
    # maintenance): the arbiter may tell it the primary is lost without
    # ruling out ``backup_out`` for the term (witness.py). 0 (also: a
    # backup of the previous release) = it might.
    no_promote: int = 0
    # From a primary in sync mode to its backup: the LSN through which it has
    # acknowledged fsyncs to applications (its sync_acked_lsn; 0: not said,
    # also a primary of the previous release or in async mode). A backup
    # counts itself active by sync mode's rule only once it holds that much
    # (ha/failover.py `active`); without it the lag rule applies, whatever
    # the backup's own configuration says.
    sync_acked: int = 0


@dataclass(frozen=True, slots=True)
class Error:
    reason: str
    term: int


@dataclass(frozen=True, slots=True)
class Handover:
    """Switchover, primary -> its backup: "I stepped down; you are the primary
    of ``term``". The old primary has persisted itself as backup of ``term``
    before sending it; the backup accepts only when it has applied everything
    up to ``lsn`` (the old primary's last LSN) and ``term`` is ours + 1."""

    term: int
    lsn: int
    member: str  # the new primary (the backup this was sent to)


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
           | ManifestEnd | ResyncProgress | ApplyFailed | Handover)

# Field checks. A peer's value is checked for type *and* range before any
# message object exists, so nothing downstream sees a name with a newline,
# a negative or NaN lag, or an LSN that does not fit the log's u64.
U64_MAX = (1 << 64) - 1
MAX_REASON = 4096  # ERROR/APPLY_FAILED reasons (senders cut at 500 and 4000)
MAX_MODE = 16  # a resync mode name (the receiver checks it against MODES)
# Same shape as the agent config's mirror names (config._NAME).
MIRROR_NAME = re.compile(r"[a-z][a-z0-9_-]{0,30}")
# Member names are inventory host names: a DNS name or an Ansible-safe name.
MEMBER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")
ROLES = ("primary", "backup", "arbiter", "async")
Check = Callable[[str, Any], Any]


def _u64(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{where} has the wrong type ({type(value).__name__}; expected "
                            f"an integer)")
    if value < 0:
        raise ProtocolError(f"{where} is negative ({value})")
    if value > U64_MAX:
        raise ProtocolError(f"{where} is {value}, over the u64 range")
    return value


def _flag(where: str, value: Any) -> int:
    if _u64(where, value) > 1:
        raise ProtocolError(f"{where} is {value} (expected 0 or 1)")
    return int(value)


def _seconds(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{where} has the wrong type ({type(value).__name__}; expected "
                            f"a number)")
    # An int beyond a float's range (10**400) makes isfinite() raise
    # OverflowError: compare it as an int first.
    if (isinstance(value, int) and not 0 <= value <= _MAX_SECONDS) or not (
            math.isfinite(value) and 0 <= value <= _MAX_SECONDS):
        raise ProtocolError(f"{where} is {_short_number(value)} (expected a finite number of "
                            f"seconds, 0 to {_MAX_SECONDS})")
    return float(value) if isinstance(value, float) else value


_MAX_SECONDS = 10**12  # about 31,700 years: any lag beyond is garbage


def _short_number(value: float) -> str:
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)


def _text(limit: int) -> Check:
    def check(where: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ProtocolError(f"{where} has the wrong type ({type(value).__name__}; "
                                f"expected a string)")
        if len(value) > limit:
            raise ProtocolError(f"{where} is {len(value)} characters long (at most {limit})")
        return value
    return check


def _shaped(pattern: re.Pattern[str], expected: str) -> Check:
    text = _text(256)

    def check(where: str, value: Any) -> str:
        name = str(text(where, value))
        if not pattern.fullmatch(name):
            raise ProtocolError(f"{where} {name[:80]!r} is not {expected}")
        return name
    return check


def _one_of(choices: tuple[str, ...]) -> Check:
    text = _text(16)

    def check(where: str, value: Any) -> str:
        if text(where, value) not in choices:
            raise ProtocolError(f"{where} {value!r} is not one of {', '.join(choices)}")
        return str(value)
    return check


def _history(where: str, value: Any) -> list[list[int]]:
    if not isinstance(value, list) or not all(isinstance(e, list) for e in value):
        raise ProtocolError(f"{where} has the wrong type (expected a list of [term, first "
                            f"LSN] pairs)")
    problem = valid_history(value)
    if problem is not None:
        raise ProtocolError(f"{where}: {problem}")
    for entry in value:
        for x in entry:
            _u64(where, x)
    return value


_MIRROR = _shaped(MIRROR_NAME, "a mirror name ([a-z][a-z0-9_-]{0,30})")
_MEMBER = _shaped(MEMBER_NAME, "a member name ([A-Za-z0-9_][A-Za-z0-9_.-]{0,252})")
_ROLE = _one_of(ROLES)
_REASON = _text(MAX_REASON)


def _member_or_empty(where: str, value: Any) -> str:
    return "" if value == "" else str(_MEMBER(where, value))


# Per message type: its class and a check per field. A field is optional
# exactly when the class gives it a default (HEARTBEAT's role is, HELLO's
# is not). Unknown fields are refused: agents of a mirror speak one
# protocol version, so a field we do not know is a peer we do not understand.
_FIELDS: dict[MsgType, tuple[type[Any], dict[str, Check]]] = {
    MsgType.HELLO: (Hello, {"mirror": _MIRROR, "member": _MEMBER, "role": _ROLE, "term": _u64,
                            "last_lsn": _u64, "history": _history}),
    MsgType.ACK: (Ack, {"lsn": _u64, "received": _u64, "term": _u64}),
    MsgType.HEARTBEAT: (Heartbeat, {"term": _u64, "lsn": _u64, "role": _one_of(("", *ROLES)),
                                    "lag_bytes": _u64, "lag_records": _u64,
                                    "lag_seconds": _seconds, "stamp": _seconds,
                                    "echo": _seconds, "primary": _member_or_empty,
                                    "primary_silence": _seconds, "backup_out": _u64,
                                    "backup_out_lsn": _u64, "backup_back": _u64,
                                    "no_promote": _flag, "sync_acked": _u64}),
    MsgType.HANDOVER: (Handover, {"term": _u64, "lsn": _u64, "member": _MEMBER}),
    MsgType.ERROR: (Error, {"reason": _REASON, "term": _u64}),
    MsgType.RESYNC_BEGIN: (ResyncBegin, {"lsn": _u64, "term": _u64, "mode": _text(MAX_MODE),
                                         "keep_orphans": _flag, "block_size": _u64,
                                         "id": _u64}),
    MsgType.RESYNC_END: (ResyncEnd, {"lsn": _u64, "term": _u64}),
    MsgType.MANIFEST_END: (ManifestEnd, {"entries": _u64, "term": _u64}),
    MsgType.RESYNC_PROGRESS: (ResyncProgress, {
        "files_total": _u64, "files_done": _u64, "bytes_total": _u64, "bytes_done": _u64,
        "bytes_sent": _u64, "orphans": _u64, "term": _u64}),
    MsgType.APPLY_FAILED: (ApplyFailed, {"lsn": _u64, "reason": _REASON, "resync": _flag,
                                         "term": _u64}),
}
_TYPES: dict[type[Any], MsgType] = {cls: t for t, (cls, _) in _FIELDS.items()}
# Fields added after their message's version was fixed: sent only when not
# at their default. A previous-release peer refuses a frame that carries one
# (unknown field: the connection closes). For the sync flags that is safe
# by construction: an old arbiter never confirms (the primary keeps waiting
# for its backup), and a backup that cannot read the arbiter's flag loses
# the arbiter, so it does not fail over automatically.
ADDED_FIELDS: dict[MsgType, frozenset[str]] = {
    MsgType.HEARTBEAT: frozenset({"backup_out", "backup_out_lsn", "backup_back",
                                  "no_promote", "sync_acked"}),
}
_REQUIRED: dict[MsgType, frozenset[str]] = {
    t: frozenset(f.name for f in dataclasses.fields(cls)
                 if f.default is dataclasses.MISSING
                 and f.default_factory is dataclasses.MISSING)
    for t, (cls, _) in _FIELDS.items()}
_BINARY = (MsgType.RECORDS, MsgType.MANIFEST)


def encode_message(msg: Message) -> bytes:
    """The frame of ``msg``. A RECORDS or MANIFEST message given as objects
    is held to the per-frame count its receiver enforces; already-encoded
    ``raw`` batches are cut at that count by their producers."""
    if isinstance(msg, Records) and len(msg.records) > MAX_RECORDS_PER_FRAME:
        raise ProtocolError(f"{len(msg.records)} records exceed the {MAX_RECORDS_PER_FRAME} "
                            f"of one RECORDS frame")
    if isinstance(msg, Manifest) and len(msg.items) > MAX_ITEMS_PER_FRAME:
        raise ProtocolError(f"{len(msg.items)} manifest items exceed the {MAX_ITEMS_PER_FRAME} "
                            f"of one MANIFEST frame")
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
        added = ADDED_FIELDS.get(mtype, frozenset())
        payload = json.dumps({k: getattr(msg, k) for k in fields
                              if k not in added or getattr(msg, k)}).encode()
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds {MAX_FRAME}")
    return FRAME.pack(MAGIC, PROTOCOL_VERSION, int(mtype), len(payload)) + payload


def _check_header(header: bytes) -> tuple[MsgType, int]:
    magic, version, mtype, length = FRAME.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r}")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(version)
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
            records = decode_all(body, max_records=MAX_RECORDS_PER_FRAME)
        except RecordCorrupt as exc:
            raise ProtocolError(f"corrupt record in RECORDS: {exc}") from None
        return Records(term, records=records)
    if kind is MsgType.MANIFEST:
        try:
            return Manifest(term, decode_items(body, max_items=MAX_ITEMS_PER_FRAME))
        except ManifestCorrupt as exc:
            raise ProtocolError(f"corrupt MANIFEST: {exc}") from None
    try:
        obj = boundedjson.loads(payload, max_bytes=MAX_CONTROL, what=f"{kind.name} payload")
    except boundedjson.JsonRefused as exc:
        raise ProtocolError(f"{kind.name} payload is not JSON within bounds: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{kind.name} payload is not a JSON object")
    cls, fields = _FIELDS[kind]
    unknown = obj.keys() - fields.keys()
    if unknown:
        names = ", ".join(repr(k[:40]) for k in sorted(unknown)[:5])
        raise ProtocolError(f"{kind.name} has unknown field(s) {names} (known: "
                            f"{', '.join(fields)})")
    args: dict[str, Any] = {}
    for name, check in fields.items():
        if name not in obj:
            if name in _REQUIRED[kind]:
                raise ProtocolError(f"{kind.name} lacks field {name!r}")
            continue
        args[name] = check(f"{kind.name}.{name}", obj[name])
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


async def read_message(reader: asyncio.StreamReader, control_only: bool = False) -> Message:
    """Read one message. ``asyncio.IncompleteReadError`` means the peer closed
    (possibly mid-frame); :class:`ProtocolError` means it sent garbage.
    ``control_only`` (the handshake): a RECORDS or MANIFEST header is refused
    before its payload is read, so a peer not yet past HELLO makes us buffer
    at most ``MAX_CONTROL`` bytes, not ``MAX_FRAME``."""
    header = await reader.readexactly(FRAME.size)
    kind, length = _check_header(header)
    if control_only and kind in _BINARY:
        raise ProtocolError(f"{kind.name} frame before the HELLO exchange is done")
    payload = await reader.readexactly(length)
    if kind in _BINARY and length > THREAD_DECODE_BYTES:
        # Checking and decoding 1 MiB of small records takes tens of ms of
        # CPU: not on the event loop.
        return await asyncio.to_thread(_decode_payload, kind, payload)
    return _decode_payload(kind, payload)
