"""mountd <-> agent frames and mountd's journal (issue 9): bounds, fence, order."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from mirrorkit.agent.capture.mount import wire
from mirrorkit.agent.capture.mount.journal import Journal
from mirrorkit.agent.log.records import Op, OpKind, decode_record
from mirrorkit.agent.util import clock


def test_control_frames_round_trip() -> None:
    kind, n = wire.decode_header(wire.hello("ab12", 3, 9)[: wire.HEADER.size])
    assert kind is wire.Kind.HELLO
    assert wire.parse_hello(wire.hello("ab12", 3, 9)[wire.HEADER.size:]) == ("ab12", 3, 9)
    assert wire.parse_resume(wire.resume("s", 7)[wire.HEADER.size:]) == ("s", 7)
    assert wire.parse_seq(wire.seq_frame(wire.Kind.DURABLE, 2**40)[wire.HEADER.size:]) == 2**40
    assert wire.parse_mode(wire.mode(True, 1.25)[wire.HEADER.size:]) == (True, 1.25)
    assert wire.parse_mode(wire.mode(False, 9.0)[wire.HEADER.size:]) == (False, 0.0)
    assert n > 0


@pytest.mark.parametrize("payload", [b"", b"[]", b"{\"session\": 1, \"durable_seq\": 0}",
                                     b"{\"session\": \"s\", \"durable_seq\": -1}",
                                     b"{\"session\": \"s\", \"durable_seq\": true}",
                                     b"{\"session\": \"s\", \"durable_seq\": 1, \"x\": 1}",
                                     b"x" * 5000])
def test_bad_control_frames_are_refused_with_a_reason(payload: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.parse_resume(payload)


def test_frame_headers_are_bounded() -> None:
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.decode_header(wire.HEADER.pack(int(wire.Kind.OPS), wire.MAX_PAYLOAD + 1))
    with pytest.raises(wire.WireError, match="unknown frame kind"):
        wire.decode_header(wire.HEADER.pack(99, 0))
    with pytest.raises(wire.WireError):
        wire.parse_mode(b"\x02" + bytes(8))


def test_the_journal_is_read_only_until_leased_and_after_the_lease() -> None:
    j = Journal()
    with pytest.raises(OSError) as err, j.mutation():
        pass
    assert err.value.errno == errno.EROFS
    j.set_writable(clock.now() + 0.2)
    with j.mutation() as m:
        m.log(Op(OpKind.CREATE, 0, "a", value=0o644))
    time.sleep(0.3)
    with pytest.raises(OSError) as err, j.mutation():
        pass
    assert err.value.errno == errno.EROFS


def test_records_are_numbered_in_order_and_freed_when_durable() -> None:
    j = Journal()
    j.set_writable(clock.now() + 30)
    for i in range(5):
        with j.mutation() as m:
            m.log(Op(OpKind.WRITE, 0, "f", value=i, data=b"x"))
    held = j.held_after(0, 1 << 20)
    assert [seq for seq, _ in held] == [1, 2, 3, 4, 5]
    assert [decode_record(data)[0].op.value for _, data in held] == [0, 1, 2, 3, 4]
    j.set_durable(3)
    assert [seq for seq, _ in j.held_after(0, 1 << 20)] == [4, 5]
    assert j.first_held() == 4
    j.set_durable(99)  # beyond what was numbered: capped
    assert j.durable == 5


def test_fence_waits_for_a_mutation_in_flight_and_stops_later_ones() -> None:
    j = Journal()
    j.set_writable(clock.now() + 30)
    inside, release = threading.Event(), threading.Event()

    def slow() -> None:
        with j.mutation() as m:
            inside.set()
            release.wait(5)
            m.log(Op(OpKind.UNLINK, 0, "x"))

    t = threading.Thread(target=slow)
    t.start()
    inside.wait(5)
    got: list[int] = []
    fencer = threading.Thread(target=lambda: got.append(j.fence()))
    fencer.start()
    time.sleep(0.1)
    assert not got  # the fence waits for the change in flight ...
    release.set()
    fencer.join(5)
    t.join(5)
    assert got == [1]  # ... and reports it as the last one
    with pytest.raises(OSError), j.mutation():
        pass


def test_a_full_journal_holds_writers_back_until_the_agent_catches_up() -> None:
    j = Journal(max_bytes=200)
    j.set_writable(clock.now() + 30)
    with j.mutation(100) as m:
        m.log(Op(OpKind.WRITE, 0, "f", data=b"x" * 100))
    done = threading.Event()

    def second() -> None:
        with j.mutation(100) as m:
            m.log(Op(OpKind.WRITE, 0, "f", value=100, data=b"y" * 100))
        done.set()

    threading.Thread(target=second).start()
    assert not done.wait(0.3)  # no room: the application waits
    j.set_durable(1)
    assert done.wait(5)


def test_fsync_waits_for_durable_or_fails_when_fenced() -> None:
    j = Journal()
    j.set_writable(clock.now() + 30)
    with j.mutation() as m:
        seq = m.log(Op(OpKind.CREATE, 0, "a"))
    threading.Timer(0.1, j.set_durable, args=(seq,)).start()
    j.wait(seq, acked=False)  # returns once durable
    with j.mutation() as m:
        seq = m.log(Op(OpKind.CREATE, 0, "b"))
    threading.Timer(0.1, j.fence).start()
    with pytest.raises(OSError) as err:
        j.wait(seq, acked=False)
    assert err.value.errno == errno.EIO
