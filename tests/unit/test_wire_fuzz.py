"""Property tests (hypothesis) of every wire decoder: whatever bytes a peer
sends, the decoder answers with its own error (or a message), never another
exception. A case a fuzz run finds becomes a regular test in
test_agent_protocol.py.

``ci`` profile: fixed seed, 200 examples per test; ``make fuzz``: 20,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrorkit.agent.log.records import (
    Op,
    OpKind,
    Record,
    RecordCorrupt,
    decode_record,
    encode_record,
)
from mirrorkit.agent.log.segments import decode_all
from mirrorkit.agent.transport.frames import (
    FRAME,
    MAGIC,
    PROTOCOL_VERSION,
    Ack,
    ApplyFailed,
    Error,
    Heartbeat,
    Hello,
    Manifest,
    ManifestEnd,
    Message,
    MsgType,
    ProtocolError,
    Records,
    ResyncBegin,
    ResyncEnd,
    ResyncProgress,
    decode_frame,
    encode_message,
    read_message,
)
from mirrorkit.agent.transport.manifest_items import (
    ManifestCorrupt,
    ManifestItem,
    decode_items,
    encode_item,
)

pytestmark = pytest.mark.fuzz

U64 = st.integers(0, (1 << 64) - 1)
SMALL = st.integers(0, 1 << 40)
# Lone surrogates do not encode (the agent's own names come from os.fsdecode).
CHARS = st.characters(blacklist_categories=("Cs",))
TEXT = st.text(CHARS, max_size=40)
NAMES_TEXT = st.text(CHARS, max_size=20)
PATHS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                min_size=1, max_size=30)

ops = st.builds(Op, st.sampled_from(list(OpKind)), st.integers(0, 65535), PATHS,
                NAMES_TEXT, st.integers(-(1 << 63), (1 << 63) - 1),
                st.binary(max_size=64))
records = st.builds(Record, U64, U64, ops)
items = st.builds(ManifestItem, st.integers(0, 65535), PATHS, st.sampled_from("fdl"),
                  st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 64) - 1),
                  st.integers(-(1 << 63), (1 << 63) - 1), NAMES_TEXT,
                  st.integers(0, (1 << 32) - 1), st.binary(max_size=4).map(lambda b: b * 16))
names = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)
roles = st.sampled_from(["primary", "backup", "arbiter", "async"])
history = st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), max_size=4).map(
    lambda steps: [[sum(t for t, _ in steps[:i + 1]), sum(f for _, f in steps[:i + 1])]
                   for i in range(len(steps))])
control_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, names, names, roles, SMALL, SMALL, history),
    st.builds(Ack, SMALL, SMALL, SMALL),
    st.builds(Heartbeat, SMALL, SMALL, roles, SMALL, SMALL,
              st.floats(0, 1e6, allow_nan=False)),
    st.builds(Error, TEXT, SMALL),
    st.builds(ResyncBegin, SMALL, SMALL, st.sampled_from(["all", "checksum"]),
              st.integers(0, 1), st.integers(4096, 1 << 20), SMALL),
    st.builds(ManifestEnd, SMALL, SMALL),
    st.builds(ResyncProgress, SMALL, SMALL, SMALL, SMALL, SMALL, SMALL, SMALL),
    st.builds(ResyncEnd, SMALL, SMALL),
    st.builds(ApplyFailed, SMALL, TEXT, st.integers(0, 1), SMALL),
)
messages: st.SearchStrategy[Message] = st.one_of(
    control_messages,
    st.builds(Records, SMALL, st.lists(records, max_size=4)),
    st.builds(Manifest, SMALL, st.lists(items, max_size=3)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8)


def _frame(mtype: int, payload: bytes) -> bytes:
    return FRAME.pack(MAGIC, PROTOCOL_VERSION, mtype, len(payload)) + payload


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with bit flips, a cut, an insertion or a changed length field."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["flip", "cut", "insert", "length", "byte"]))
        if what == "flip" and buf:
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif what == "byte" and buf:
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        elif what == "cut":
            del buf[draw(st.integers(0, len(buf))):]
        elif what == "insert":
            i = draw(st.integers(0, len(buf)))
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif what == "length" and len(buf) >= FRAME.size:
            struct.pack_into(">I", buf, 4, draw(st.integers(0, (1 << 32) - 1)))
    return bytes(buf)


@st.composite
def mutated_json(draw: st.DrawFn) -> bytes:
    """A valid control frame whose JSON had fields dropped, retyped, added
    or nested deep."""
    msg = draw(control_messages)
    frame = encode_message(msg)
    mtype = frame[3]
    body: dict[str, Any] = json.loads(frame[FRAME.size:])
    nest = b""
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(body) or ["x"]))
        what = draw(st.sampled_from(["drop", "retype", "add", "nest"]))
        if what == "drop":
            body.pop(key, None)
        elif what == "retype":
            body[key] = draw(json_values)
        elif what == "add":
            body[draw(TEXT)] = draw(json_values)
        else:  # spliced in as text: cheap to build at any depth
            depth = draw(st.integers(1, 40) | st.sampled_from([999, 1000, 1200]))
            nest = b"[" * depth + b"1" + b"]" * depth
            body[key] = "@nest@"
    payload = json.dumps(body).encode().replace(b'"@nest@"', nest or b'"@nest@"')
    return _frame(mtype, payload)


def _decodes_or_refuses(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_frame(data)


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    _decodes_or_refuses(data)


@given(st.binary(max_size=200), st.sampled_from(list(MsgType)))
def test_random_payload_of_every_type(payload: bytes, mtype: MsgType) -> None:
    _decodes_or_refuses(_frame(int(mtype), payload))


@given(messages.flatmap(lambda m: mutated(encode_message(m))))
def test_mutated_frames_of_every_type(data: bytes) -> None:
    _decodes_or_refuses(data)


@given(mutated_json())
def test_mutated_control_json(data: bytes) -> None:
    _decodes_or_refuses(data)


@given(messages)
def test_every_message_roundtrips(msg: Message) -> None:
    data = encode_message(msg)
    got, used = decode_frame(data)
    assert used == len(data)
    if isinstance(msg, Records):
        assert isinstance(got, Records) and got.records == msg.records
    else:
        assert got == msg


@given(st.lists(records, max_size=4).flatmap(
    lambda rs: mutated(b"".join(encode_record(r) for r in rs))))
def test_decode_all_raises_only_record_corrupt(data: bytes) -> None:
    with contextlib.suppress(RecordCorrupt):
        decode_all(data)


@given(records.flatmap(lambda r: mutated(encode_record(r))) | st.binary(max_size=100))
def test_decode_record_raises_only_its_errors(data: bytes) -> None:
    # EOFError is its documented "partial record" (a torn tail).
    with contextlib.suppress(RecordCorrupt, EOFError):
        decode_record(data)


@given(st.lists(items, max_size=3).flatmap(
    lambda its: mutated(b"".join(encode_item(i) for i in its))) | st.binary(max_size=100))
def test_decode_items_raises_only_manifest_corrupt(data: bytes) -> None:
    with contextlib.suppress(ManifestCorrupt):
        decode_items(data)


@given(st.lists(messages.flatmap(lambda m: mutated(encode_message(m))) | mutated_json(),
                min_size=1, max_size=3))
def test_read_message_from_a_real_stream(chunks: list[bytes]) -> None:
    """A real asyncio StreamReader fed the bytes then EOF: each read is a
    message, a ProtocolError, or IncompleteReadError (the peer closed)."""

    async def go() -> None:
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        for _ in range(8):
            try:
                await read_message(reader)
            except ProtocolError:
                return  # the connection is closed at the first one
            except asyncio.IncompleteReadError:
                return

    asyncio.run(go())

