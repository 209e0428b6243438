"""Protocol framing: round trips, and every malformed frame is a ProtocolError."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest

from mirrorkit.agent.log.records import Op, OpKind, Record, encode_record
from mirrorkit.agent.transport.frames import (
    FRAME,
    MAGIC,
    MAX_CONTROL,
    Ack,
    ApplyFailed,
    Error,
    Heartbeat,
    Hello,
    Message,
    MsgType,
    ProtocolError,
    Records,
    ResyncBegin,
    ResyncEnd,
    decode_frame,
    encode_message,
    read_message,
)

RECS = [Record(1, 2, Op(OpKind.WRITE, 0, "a", value=5, data=b"xyz")),
        Record(2, 2, Op(OpKind.RENAME, 0, "a", target="b"))]


@pytest.mark.parametrize("msg", [
    Hello("records", "node2", "backup", 3, 17),
    Ack(10, 12),
    Heartbeat(3, 10, "primary", 100, 2, 0.5),
    Error("nope"),
    ResyncBegin(5),
    ResyncEnd(5),
    ApplyFailed(7, "cannot apply record LSN 7 (RENAME 'a' -> 'a/b'): Invalid argument", 1),
])
def test_roundtrip(msg: Message) -> None:
    data = encode_message(msg)
    assert decode_frame(data) == (msg, len(data))


def test_records_roundtrip_from_raw_log_bytes() -> None:
    raw = b"".join(encode_record(r) for r in RECS)
    got, _ = decode_frame(encode_message(Records(raw=raw)))
    assert isinstance(got, Records) and got.records == RECS


def frame(mtype: int, payload: bytes, version: int = 1, magic: bytes = MAGIC) -> bytes:
    return FRAME.pack(magic, version, mtype, len(payload)) + payload


@pytest.mark.parametrize(("data", "reason"), [
    (frame(1, b"{}", magic=b"XX"), "magic"),
    (frame(1, b"{}", version=9), "version"),
    (frame(99, b"{}"), "unknown message type"),
    (frame(1, b"\xff\xfe"), "not JSON"),
    (frame(1, b"[1, 2]"), "not a JSON object"),
    (frame(1, json.dumps({"mirror": "r", "member": "m", "role": "backup", "term": 1}).encode()),
     "lacks field 'last_lsn'"),
    (frame(3, json.dumps({"lsn": "1", "received": 1}).encode()), "wrong type"),
    (frame(3, json.dumps({"lsn": True, "received": 1}).encode()), "wrong type"),
    (frame(3, json.dumps({"lsn": -1, "received": 1}).encode()), "negative"),
    (frame(2, encode_record(RECS[0])[:-1]), "corrupt record"),
    (frame(2, encode_record(RECS[0])[:-1] + b"\x00"), "corrupt record"),
    (FRAME.pack(MAGIC, 1, 1, MAX_CONTROL + 1), "exceeds"),
    (FRAME.pack(MAGIC, 1, 2, 1 << 31), "exceeds"),
    (frame(1, b"{}")[:-1], "truncated"),
    (b"MK\x01", "truncated frame header"),
])
def test_malformed_frames(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_frame(data)


def test_read_message_from_stream() -> None:
    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(encode_message(Ack(1, 1)) + frame(5, b"{\"reason\": 3}"))
        reader.feed_data(struct.pack(">2sBB", MAGIC, 1, 3))
        reader.feed_eof()
        assert await read_message(reader) == Ack(1, 1)
        with pytest.raises(ProtocolError):
            await read_message(reader)
        with pytest.raises(asyncio.IncompleteReadError):
            await read_message(reader)

    asyncio.run(go())


def test_frame_type_values_are_stable() -> None:
    # The wire format is a contract between agent versions.
    assert [t.value for t in MsgType] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
