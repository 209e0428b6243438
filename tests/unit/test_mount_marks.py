"""The mount capture's marks and its start decision (capture/mount/marks.py,
MountCapture._decide): a torn batch resumes after what the log kept, never
before it; what the log cannot vouch for is a "lost" start (peers resynced)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirrorkit.agent.capture.mount.capture import MountCapture
from mirrorkit.agent.capture.mount.marks import (
    LoggedMark,
    MountMark,
    UnreadableMark,
    find_last_mark,
    parse_mark,
)
from mirrorkit.agent.log.records import Op, OpKind
from mirrorkit.agent.log.segments import MirrorLog


def _write(path: str) -> Op:
    return Op(OpKind.WRITE, 0, path, value=0, data=b"x")


def test_marks_round_trip() -> None:
    for mark in (MountMark("node1", "abc", 5, 9), MountMark("node1", "abc", 5, 4),
                 MountMark("node2", "s", 8, 7, fenced=True)):
        assert parse_mark(mark.op().target) == mark


@pytest.mark.parametrize("target", [
    "mount node1 abc 9",  # the trailing format of an earlier build: rescan, never guess
    "mount node1 abc x 3", "mount node1 abc 0 3", "mount node1 abc 5 3",
    "mount-fenced node1 abc", "scan-complete", "mount node1 abc 1 2 3"])
def test_malformed_marks_are_not_marks(target: str) -> None:
    assert parse_mark(target) is None


def test_a_torn_batch_resumes_after_what_the_log_kept(tmp_path: Path) -> None:
    log = MirrorLog(tmp_path / "log")
    log.append_ops([MountMark("node1", "s", 1, 2).op(), _write("a"), _write("b")], 1)
    # The next batch, changes 3..6, torn after two of its four changes.
    log.append_ops([MountMark("node1", "s", 3, 6).op(), _write("c"), _write("d")], 1)
    found = find_last_mark(log)
    assert found is not None and found.mark.first == 3 and found.lsn == 4
    assert found.after == 4 and found.torn
    log.append_ops([_write("e"), _write("f"), Op(OpKind.MARK, 0, "", target="x")], 1)
    whole = find_last_mark(log)
    assert whole is not None and whole.after == 6 and not whole.torn
    log.close()


def test_a_torn_tail_truncated_by_recovery_resumes_exactly(tmp_path: Path) -> None:
    """The real torn write: the batch's bytes cut mid-record; the log's
    recovery truncates there; the mark says how much survived."""
    log = MirrorLog(tmp_path / "log")
    log.append_ops([MountMark("node1", "s", 1, 3).op(), _write("a"), _write("b"),
                    _write("c")], 1)
    log.close()
    seg = next((tmp_path / "log").glob("*.log"))
    size = seg.stat().st_size
    os.truncate(seg, size - 5)  # the last change's record is partial
    log = MirrorLog(tmp_path / "log")
    found = find_last_mark(log)
    assert found is not None and found.after == 2 and found.torn
    log.close()


def test_no_mark_in_an_empty_log(tmp_path: Path) -> None:
    log = MirrorLog(tmp_path / "log")
    assert find_last_mark(log) is None
    log.close()


def _capture() -> MountCapture:
    async def last() -> None:
        return None
    return MountCapture(Path("/nonexistent.sock"), Path("/nonexistent"), [], "node1", last,
                        lease_left=lambda: 0.0, renew_seconds=1.0)


def _logged(mark: MountMark, records_after: int) -> LoggedMark:
    return LoggedMark.at(mark, 10, records_after)


@pytest.mark.parametrize(("last", "session", "held", "want"), [
    (None, "s", (1, 1), ("initial", 0)),
    # our session: resume after what the log holds, torn or whole
    (_logged(MountMark("node1", "s", 5, 9), 5), "s", (6, 12), ("resume", 9)),
    (_logged(MountMark("node1", "s", 5, 9), 2), "s", (5, 12), ("resume", 6)),
    # ... but mountd no longer holds what follows: lost
    (_logged(MountMark("node1", "s", 5, 9), 5), "s", (11, 12), ("lost", 0)),
    # mountd restarted while we were primary: lost
    (_logged(MountMark("node1", "old", 5, 9), 5), "s", (1, 1), ("lost", 0)),
    # our clean stop, mountd restarted since, holds nothing: exact
    (_logged(MountMark("node1", "old", 10, 9, fenced=True), 0), "s", (1, 1), ("resume", 0)),
    # we were a replica, mountd holds nothing: exact
    (_logged(MountMark("node2", "x", 3, 4), 2), "s", (7, 7), ("resume", 6)),
    # ... but holds changes anyway: lost
    (_logged(MountMark("node2", "x", 3, 4), 2), "s", (7, 9), ("lost", 0)),
])
def test_start_decision(last: LoggedMark | None, session: str, held: tuple[int, int],
                        want: tuple[str, int]) -> None:
    how, after, why = _capture()._decide(last, session, *held)
    assert (how, after) == want
    assert why


class _Writer:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.frames.append(data)


def test_acknowledged_lsns_map_to_the_mountd_changes_they_cover() -> None:
    from mirrorkit.agent.capture.mount import wire

    c = _capture()
    w = _Writer()
    c._writer = w  # type: ignore[assignment]
    c._ack_map.extend([(10, 4), (20, 9), (30, 15)])  # (last LSN of a batch, its last change)
    c.on_acked(5)  # inside the first batch: covers nothing whole
    assert w.frames == []
    c.on_acked(25)
    assert w.frames == [wire.seq_frame(wire.Kind.ACKED, 9)]
    c.on_acked(25)  # no news, no frame
    c.on_acked(30)
    assert w.frames[-1] == wire.seq_frame(wire.Kind.ACKED, 15) and len(w.frames) == 2


def test_an_unreadable_newest_mark_is_said_only_when_asked(tmp_path: Path) -> None:
    """strict (the capture's start): the newest MARK with a mount prefix that
    this version cannot read raises UnreadableMark rather than falling back to
    an older mark or to "no mark"; a readable mark after it wins."""
    log = MirrorLog(tmp_path / "log")
    log.append_ops([MountMark("node1", "s", 1, 1).op(), _write("a")], 1)
    log.append_ops([Op(OpKind.MARK, 0, "", target="mount node1 s2 7"), _write("b")], 1)
    older = find_last_mark(log)
    assert older is not None and older.mark.session == "s"  # lenient: the older one
    with pytest.raises(UnreadableMark, match="not one this version reads"):
        find_last_mark(log, strict=True)
    log.append_ops([MountMark("node1", "s3", 1, 1).op(), _write("c")], 1)
    newest = find_last_mark(log, strict=True)
    assert newest is not None and newest.mark.session == "s3"
    log.close()
