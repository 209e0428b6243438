"""Frames between ``mirrorkit-mountd`` and the agent, on the mount's Unix socket.

Each frame is ``u8 kind, u32 length, payload`` (``length`` bounded by
:data:`MAX_PAYLOAD`). mountd sends:

* ``HELLO``   JSON ``{"session", "first_seq", "next_seq"}``: who it is (a
  random id per mountd process) and which sequence numbers it still holds.
* ``OPS``     records in the mirror-log encoding (``records.encode_record``),
  the mountd's sequence number in the LSN field, term 0; consecutive.
* ``FENCED``  u64: mountd is read-only now; every change up to that sequence
  number is in an OPS frame already sent (the answer to ``MODE ro``).

The agent sends:

* ``RESUME``  JSON ``{"session", "durable_seq"}``: the last sequence number of
  that session it holds durably; mountd sends everything after it (all it
  holds when the session is not its own).
* ``DURABLE`` u64: changes up to there are durable in the primary's log.
* ``ACKED``   u64: ... and on the active backup (what ``sync`` waits for).
* ``MODE``    ``u8 writable, f64 deadline``: writable until ``deadline``
  (CLOCK_BOOTTIME seconds: the host's one clock for both processes, and it
  keeps running through a suspend, as the primary's lease does), unless
  renewed; ``writable = 0`` fences at once. Absolute, so a frame that waited
  in a buffer cannot extend the grant.

Nothing here does I/O: both ends frame and parse with these functions.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_PAYLOAD", "Frame", "Kind", "WireError", "decode_header", "encode",
           "hello", "mode", "parse_hello", "parse_mode", "parse_resume", "parse_seq",
           "resume", "seq_frame"]

HEADER = struct.Struct(">BI")
_U64 = struct.Struct(">Q")
_MODE = struct.Struct(">Bd")
# One OPS frame carries at most a few MiB of records (the sender cuts there);
# a single record may be up to records.MAX_RECORD_BYTES (16 MiB) plus overhead.
MAX_PAYLOAD = 32 * 1024 * 1024
_MAX_JSON = 4096


class Kind(enum.IntEnum):
    HELLO = 1
    OPS = 2
    FENCED = 3
    RESUME = 17
    DURABLE = 18
    ACKED = 19
    MODE = 20


class WireError(ValueError):
    """A frame that does not parse: the connection is dropped."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    payload: bytes


def encode(kind: Kind, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise WireError(f"{kind.name} payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(int(kind), len(payload)) + payload


def decode_header(header: bytes) -> tuple[Kind, int]:
    """The kind and payload length of a frame header (``HEADER.size`` bytes)."""
    raw, length = HEADER.unpack(header)
    try:
        kind = Kind(raw)
    except ValueError:
        raise WireError(f"unknown frame kind {raw}") from None
    if length > MAX_PAYLOAD:
        raise WireError(f"frame of {length} bytes exceeds {MAX_PAYLOAD}")
    return kind, length


def _json(payload: bytes, fields: dict[str, type]) -> dict[str, Any]:
    if len(payload) > _MAX_JSON:
        raise WireError("control frame too large")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"control frame is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != set(fields):
        raise WireError(f"control frame must have exactly the fields {sorted(fields)}")
    for name, typ in fields.items():
        value: Any = doc[name]
        if not isinstance(value, typ) or isinstance(value, bool):
            raise WireError(f"field {name!r} must be {typ.__name__}")
        if isinstance(value, int) and not 0 <= value < 2**63:
            raise WireError(f"field {name!r} out of range")
    return doc


def hello(session: str, first_seq: int, next_seq: int) -> bytes:
    body = json.dumps({"session": session, "first_seq": first_seq, "next_seq": next_seq})
    return encode(Kind.HELLO, body.encode())


def parse_hello(payload: bytes) -> tuple[str, int, int]:
    doc = _json(payload, {"session": str, "first_seq": int, "next_seq": int})
    return str(doc["session"]), int(doc["first_seq"]), int(doc["next_seq"])


def resume(session: str, durable_seq: int) -> bytes:
    return encode(Kind.RESUME, json.dumps({"session": session,
                                           "durable_seq": durable_seq}).encode())


def parse_resume(payload: bytes) -> tuple[str, int]:
    doc = _json(payload, {"session": str, "durable_seq": int})
    return str(doc["session"]), int(doc["durable_seq"])


def seq_frame(kind: Kind, seq: int) -> bytes:
    return encode(kind, _U64.pack(seq))


def parse_seq(payload: bytes) -> int:
    if len(payload) != _U64.size:
        raise WireError("a sequence frame carries exactly 8 bytes")
    (seq,) = _U64.unpack(payload)
    if seq >= 2**63:
        raise WireError("sequence number out of range")
    return int(seq)


def mode(writable: bool, deadline: float) -> bytes:
    return encode(Kind.MODE, _MODE.pack(1 if writable else 0, deadline if writable else 0.0))


def parse_mode(payload: bytes) -> tuple[bool, float]:
    """(writable, deadline in CLOCK_BOOTTIME seconds)."""
    if len(payload) != _MODE.size:
        raise WireError("a MODE frame carries exactly 9 bytes")
    writable, deadline = _MODE.unpack(payload)
    if writable not in (0, 1) or not 0.0 <= deadline < 2.0**53:
        raise WireError("MODE out of range")
    return bool(writable), float(deadline)
