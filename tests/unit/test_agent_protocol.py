"""Protocol framing: round trips, and every malformed frame is a ProtocolError."""

from __future__ import annotations

import asyncio
import json
import struct
import threading

import pytest

from mirrorkit.agent.log.records import Op, OpKind, Record, encode_record
from mirrorkit.agent.transport import frames
from mirrorkit.agent.transport.frames import (
    FRAME,
    MAGIC,
    MAX_CONTROL,
    PROTOCOL_VERSION,
    TERM,
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
    Hello("records", "node2", "backup", 3, 17, [[1, 1], [3, 12]]),
    Ack(10, 12, 3),
    Heartbeat(3, 10, "primary", 100, 2, 0.5),
    Error("nope", 3),
    ResyncBegin(5, 3),
    ResyncEnd(5, 3),
    ApplyFailed(7, "cannot apply record LSN 7 (RENAME 'a' -> 'a/b'): Invalid argument", 1, 3),
])
def test_roundtrip(msg: Message) -> None:
    data = encode_message(msg)
    assert decode_frame(data) == (msg, len(data))


def test_records_roundtrip_from_raw_log_bytes() -> None:
    raw = b"".join(encode_record(r) for r in RECS)
    got, _ = decode_frame(encode_message(Records(7, raw=raw)))
    assert isinstance(got, Records) and got.records == RECS and got.term == 7


def test_every_message_carries_the_senders_term() -> None:
    # ACK, ERROR, resync and manifest frames did not before protocol 2.
    for mtype, body in [(3, {"lsn": 1, "received": 1}), (5, {"reason": "x"}),
                        (6, {"lsn": 1}), (7, {"lsn": 1}), (9, {"entries": 0})]:
        with pytest.raises(ProtocolError, match="lacks field 'term'"):
            decode_frame(frame(mtype, json.dumps(body).encode()))
    with pytest.raises(ProtocolError, match="lacks the sender's term"):
        decode_frame(frame(2, b"\x00\x01"))


@pytest.mark.parametrize("history", [[[2, 1], [1, 5]], [[1, 5], [2, 3]], [[1]], [["1", 1]],
                                     [[i, i] for i in range(1, 1002)]])
def test_hello_history_is_checked(history: list[list[int]]) -> None:
    body = {"mirror": "r", "member": "m", "role": "backup", "term": 1, "last_lsn": 0,
            "history": history}
    with pytest.raises(ProtocolError, match="history"):
        decode_frame(frame(1, json.dumps(body).encode()))


def frame(mtype: int, payload: bytes, version: int = PROTOCOL_VERSION,
          magic: bytes = MAGIC) -> bytes:
    return FRAME.pack(magic, version, mtype, len(payload)) + payload


@pytest.mark.parametrize(("data", "reason"), [
    (frame(1, b"{}", magic=b"XX"), "magic"),
    (frame(1, b"{}", version=9), "version"),
    (frame(99, b"{}"), "unknown message type"),
    (frame(1, b"\xff\xfe"), "not JSON"),
    (frame(1, b"[1, 2]"), "not a JSON object"),
    (frame(1, json.dumps({"mirror": "r", "member": "m", "role": "backup", "term": 1}).encode()),
     "lacks field 'last_lsn'"),
    (frame(3, json.dumps({"lsn": "1", "received": 1, "term": 1}).encode()), "wrong type"),
    (frame(3, json.dumps({"lsn": True, "received": 1, "term": 1}).encode()), "wrong type"),
    (frame(3, json.dumps({"lsn": -1, "received": 1, "term": 1}).encode()), "negative"),
    (frame(2, TERM.pack(1) + encode_record(RECS[0])[:-1]), "corrupt record"),
    (frame(2, TERM.pack(1) + encode_record(RECS[0])[:-1] + b"\x00"), "corrupt record"),
    (FRAME.pack(MAGIC, PROTOCOL_VERSION, 1, MAX_CONTROL + 1), "exceeds"),
    (FRAME.pack(MAGIC, PROTOCOL_VERSION, 2, 1 << 31), "exceeds"),
    (frame(1, b"{}")[:-1], "truncated"),
    (b"MK\x01", "truncated frame header"),
])
def test_malformed_frames(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_frame(data)


def test_read_message_from_stream() -> None:
    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(encode_message(Ack(1, 1, 1)) + frame(5, b"{\"reason\": 3}"))
        reader.feed_data(struct.pack(">2sBB", MAGIC, PROTOCOL_VERSION, 3))
        reader.feed_eof()
        assert await read_message(reader) == Ack(1, 1, 1)
        with pytest.raises(ProtocolError):
            await read_message(reader)
        with pytest.raises(asyncio.IncompleteReadError):
            await read_message(reader)

    asyncio.run(go())


def test_frame_type_values_are_stable() -> None:
    # The wire format is a contract between agent versions.
    assert [t.value for t in MsgType] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]


def test_large_binary_frames_are_decoded_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checking ~1 MiB of records costs tens of ms: a big RECORDS frame is
    decoded in a worker thread, a small one (and every control frame) inline."""
    decoded_on: list[tuple[int, bool]] = []
    real = frames._decode_payload

    def spy(kind: frames.MsgType, payload: bytes) -> frames.Message:
        decoded_on.append((len(payload), threading.current_thread() is threading.main_thread()))
        return real(kind, payload)

    monkeypatch.setattr(frames, "_decode_payload", spy)
    big = frames.Records(1, records=[Record(i + 1, 1, Op(OpKind.WRITE, 0, "f", data=b"x" * 1000))
                                  for i in range(200)])
    small = frames.Records(1, records=big.records[:2])

    async def main() -> list[frames.Message]:
        reader = asyncio.StreamReader()
        for msg in (big, small, frames.Heartbeat(1, 2)):
            reader.feed_data(frames.encode_message(msg))
        return [await frames.read_message(reader) for _ in range(3)]

    got = asyncio.run(main())
    assert got[0] == big and got[1] == small
    assert [on_loop for _, on_loop in decoded_on] == [False, True, True]
    assert decoded_on[0][0] > frames.THREAD_DECODE_BYTES
