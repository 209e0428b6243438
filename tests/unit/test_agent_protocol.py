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
from mirrorkit.agent.transport.manifest_items import (
    MAX_HASHES_PER_ITEM,
    MAX_ITEMS_PER_FRAME,
    ManifestItem,
    encode_item,
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
    assert [t.value for t in MsgType] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]


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


# -- found by fuzzing (tests/unit/test_wire_fuzz.py) and by the runs --

HELLO = {"mirror": "records", "member": "node2", "role": "backup", "term": 1, "last_lsn": 0}
HEARTBEAT = {"term": 1, "lsn": 0}


def control(mtype: int, body: dict[str, object] | str) -> bytes:
    return frame(mtype, (body if isinstance(body, str) else json.dumps(body)).encode())


def test_hello_without_role_is_a_protocol_error() -> None:
    # role is optional in HEARTBEAT only; a HELLO without it was a TypeError.
    body = {k: v for k, v in HELLO.items() if k != "role"}
    with pytest.raises(ProtocolError, match="HELLO lacks field 'role'"):
        decode_frame(control(1, body))


def test_heartbeat_without_role_is_fine() -> None:
    assert decode_frame(control(4, HEARTBEAT))[0] == Heartbeat(1, 0)


@pytest.mark.parametrize("mtype", [1, 3, 4, 5, 6, 7, 9, 10, 11])
def test_json_nested_1000_deep_is_a_protocol_error(mtype: int) -> None:
    # json.loads raised RecursionError at this depth.
    with pytest.raises(ProtocolError, match="nests 1001 levels deep"):
        decode_frame(frame(mtype, b'{"x": ' + b"[" * 1000 + b"]" * 1000 + b"}"))


@pytest.mark.parametrize("history", [[None], [5], ["ab"], [{"a": 1, "b": 2}]])
def test_history_entries_that_are_not_pairs(history: list[object]) -> None:
    # [None] and [5] were a TypeError out of valid_history's len().
    with pytest.raises(ProtocolError, match="history"):
        decode_frame(control(1, {**HELLO, "history": history}))


@pytest.mark.parametrize("lag", ["NaN", "-Infinity", "Infinity", "1e999", "-1", "-0.5"])
def test_heartbeat_lag_seconds_finite_and_not_negative(lag: str) -> None:
    # NaN and the infinities are refused by the JSON parser, 1e999 (inf
    # after parsing) and negatives by the field check.
    body = f'{{"term": 1, "lsn": 0, "lag_seconds": {lag}}}'
    with pytest.raises(ProtocolError, match=r"lag_seconds|not a number JSON allows"):
        decode_frame(frame(4, body.encode()))


@pytest.mark.parametrize("lag", [10**400, -(10**400), 10**12 + 1, 1e13])
def test_heartbeat_lag_seconds_huge_integers_are_a_protocol_error(lag: float) -> None:
    # Found in review: 10**400 made math.isfinite raise OverflowError.
    with pytest.raises(ProtocolError, match=r"lag_seconds is .*expected a finite number"):
        decode_frame(control(4, {**HEARTBEAT, "lag_seconds": lag}))


@pytest.mark.parametrize("lag", [0, 0.0, 2.5, 1e9, 10**12])
def test_heartbeat_lag_seconds_accepted(lag: float) -> None:
    msg, _ = decode_frame(control(4, {**HEARTBEAT, "lag_seconds": lag}))
    assert isinstance(msg, Heartbeat) and msg.lag_seconds == lag


@pytest.mark.parametrize(("field", "value", "ok"), [
    ("term", (1 << 64) - 1, True), ("term", 1 << 64, False),
    ("last_lsn", (1 << 64) - 1, True), ("last_lsn", 1 << 64, False),
])
def test_integers_are_u64(field: str, value: int, ok: bool) -> None:
    data = control(1, {**HELLO, field: value})
    if ok:
        assert getattr(decode_frame(data)[0], field) == value
    else:
        with pytest.raises(ProtocolError, match="u64"):
            decode_frame(data)


@pytest.mark.parametrize(("field", "value"), [
    ("member", "node2\n2026-12-01 21:00:00,000 WARNING forged: line"),
    ("member", "node2\r"), ("member", "a b"), ("member", ""), ("member", "n" * 254),
    ("mirror", "Records"), ("mirror", "r\x1b[31m"), ("mirror", "r" * 32),
    ("role", "boss"), ("role", "primary\n"), ("role", 3),
])
def test_names_are_checked_before_use(field: str, value: object) -> None:
    with pytest.raises(ProtocolError, match=f"HELLO.{field}") as err:
        decode_frame(control(1, {**HELLO, field: value}))
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)


@pytest.mark.parametrize(("field", "value"), [("member", "n" * 253), ("mirror", "r" * 31),
                                              ("member", "db-1.example.org")])
def test_names_at_the_length_bound(field: str, value: str) -> None:
    assert getattr(decode_frame(control(1, {**HELLO, field: value}))[0], field) == value


@pytest.mark.parametrize(("mtype", "body"), [
    (5, {"reason": "x" * frames.MAX_REASON, "term": 1}),
    (11, {"lsn": 1, "reason": "x", "resync": 1, "term": 1}),
    (6, {"lsn": 1, "term": 1, "mode": "x" * frames.MAX_MODE, "keep_orphans": 1}),
])
def test_text_and_flags_at_the_bound(mtype: int, body: dict[str, object]) -> None:
    decode_frame(control(mtype, body))


@pytest.mark.parametrize(("mtype", "body", "reason"), [
    (5, {"reason": "x" * (frames.MAX_REASON + 1), "term": 1}, "ERROR.reason is 4097"),
    (11, {"lsn": 1, "reason": "x", "resync": 2, "term": 1}, "expected 0 or 1"),
    (6, {"lsn": 1, "term": 1, "mode": "x" * (frames.MAX_MODE + 1)}, "RESYNC_BEGIN.mode"),
    (6, {"lsn": 1, "term": 1, "keep_orphans": 2}, "expected 0 or 1"),
])
def test_text_and_flags_past_the_bound(mtype: int, body: dict[str, object],
                                       reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_frame(control(mtype, body))


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ProtocolError, match=r"HELLO has unknown field.*'colour'"):
        decode_frame(control(1, {**HELLO, "colour": "blue"}))


def _records_frame(n: int) -> bytes:
    rec = encode_record(Record(1, 1, Op(OpKind.UTIME, 0, "f", value=1)))
    return frame(2, TERM.pack(1) + rec * n)


def test_records_per_frame_at_the_bound() -> None:
    msg, _ = decode_frame(_records_frame(frames.MAX_RECORDS_PER_FRAME))
    assert isinstance(msg, Records) and len(msg.records) == frames.MAX_RECORDS_PER_FRAME


def test_records_per_frame_past_the_bound() -> None:
    with pytest.raises(ProtocolError, match=f"more than {frames.MAX_RECORDS_PER_FRAME} records"):
        decode_frame(_records_frame(frames.MAX_RECORDS_PER_FRAME + 1))


def _manifest_frame(n: int, hashes: int = 0) -> bytes:
    item = encode_item(ManifestItem(0, "f", "f", hashes=b"h" * 16 * hashes))
    return frame(8, TERM.pack(1) + item * n)


def test_manifest_items_per_frame_at_and_past_the_bound() -> None:
    msg, _ = decode_frame(_manifest_frame(MAX_ITEMS_PER_FRAME))
    assert isinstance(msg, frames.Manifest) and len(msg.items) == MAX_ITEMS_PER_FRAME
    with pytest.raises(ProtocolError, match=f"more than {MAX_ITEMS_PER_FRAME} manifest items"):
        decode_frame(_manifest_frame(MAX_ITEMS_PER_FRAME + 1))


def test_manifest_hashes_per_item_at_and_past_the_bound() -> None:
    msg, _ = decode_frame(_manifest_frame(1, MAX_HASHES_PER_ITEM))
    assert isinstance(msg, frames.Manifest) and len(msg.items[0].hashes) == 16 << 16
    with pytest.raises(ProtocolError, match="block hashes"):
        decode_frame(_manifest_frame(1, MAX_HASHES_PER_ITEM + 1))


def test_handshake_read_refuses_a_binary_frame_before_its_payload() -> None:
    """Before HELLO is done a peer gets no 20 MiB buffer: the header of a
    RECORDS frame is refused without waiting for (or reading) its payload."""

    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(FRAME.pack(MAGIC, PROTOCOL_VERSION, 2, frames.MAX_FRAME))
        with pytest.raises(ProtocolError, match="RECORDS frame before the HELLO"):
            await asyncio.wait_for(read_message(reader, control_only=True), 5)

    asyncio.run(go())


def test_term_prefix_alone_is_an_empty_batch() -> None:
    # Not a mutation: the smallest valid binary frames.
    assert decode_frame(frame(2, TERM.pack(3)))[0] == Records(3, [])
    assert decode_frame(frame(8, TERM.pack(3)))[0] == frames.Manifest(3, [])


def test_encoding_refuses_more_than_a_frame_holds() -> None:
    rec = Record(1, 1, Op(OpKind.UTIME, 0, "f"))
    encode_message(Records(1, [rec] * frames.MAX_RECORDS_PER_FRAME))
    with pytest.raises(ProtocolError, match="exceed the 4096 of one RECORDS frame"):
        encode_message(Records(1, [rec] * (frames.MAX_RECORDS_PER_FRAME + 1)))
    item = ManifestItem(0, "d", "d")
    encode_message(frames.Manifest(1, [item] * MAX_ITEMS_PER_FRAME))
    with pytest.raises(ProtocolError, match="exceed the 4096 of one MANIFEST frame"):
        encode_message(frames.Manifest(1, [item] * (MAX_ITEMS_PER_FRAME + 1)))


def test_another_protocol_version_is_its_own_error() -> None:
    # A rolling upgrade: failover must tell "speaks another version" from silence.
    import struct

    from mirrorkit.agent.transport.frames import VersionMismatch, decode_frame

    frame = struct.pack(">2sBBI", b"MK", 2, 4, 2) + b"{}"
    with pytest.raises(VersionMismatch) as err:
        decode_frame(frame)
    assert err.value.version == 2 and "we speak 3" in str(err.value)
