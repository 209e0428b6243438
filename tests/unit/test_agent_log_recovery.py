"""Mirror log recovery: a torn tail is truncated, corruption in the middle
refuses to open with an error naming file, byte offset and LSN (and keeps
refusing: nothing on disk changes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirrorkit.agent.log.records import Op, OpKind, Record, encode_record
from mirrorkit.agent.log.segments import LogCorrupt, MirrorLog, valid_record_after


def ops(n: int, size: int = 100) -> list[Op]:
    return [Op(OpKind.WRITE, 0, f"f{i}", value=i, data=bytes([i % 256]) * size)
            for i in range(n)]


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.log"))


def written(d: Path, n: int = 5, **kw: int) -> list[Record]:
    lg = MirrorLog(d, **kw)
    recs = lg.append_ops(ops(n), 1)
    lg.close()
    return recs


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def offset_of(recs: list[Record], index: int) -> int:
    return sum(r.size for r in recs[:index])


def test_partial_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    recs = written(tmp_path)
    seg = segments(tmp_path)[-1]
    good = seg.stat().st_size
    with open(seg, "ab") as f:  # the first half of record 6, then the crash
        f.write(encode_record(Record(6, 1, ops(1)[0]))[:60])
    lg = MirrorLog(tmp_path)
    assert lg.last_lsn == 5 and lg.read(1) == recs
    assert seg.stat().st_size == good
    assert not (tmp_path / "quarantine").exists()  # a partial record is nothing to keep
    lg.append_ops(ops(1), 1)
    assert lg.last_lsn == 6


@pytest.mark.parametrize("garbage", [b"\0" * 4096, os.urandom(3000)],
                         ids=["zeros", "random"])
def test_garbage_after_the_last_record_is_a_torn_tail(tmp_path: Path, garbage: bytes) -> None:
    """Power loss: the file grew but the last pages hold zeros or junk."""
    recs = written(tmp_path)
    seg = segments(tmp_path)[-1]
    with open(seg, "ab") as f:
        f.write(garbage)
    lg = MirrorLog(tmp_path)
    assert lg.last_lsn == 5 and lg.read(1) == recs
    kept = list((tmp_path / "quarantine").iterdir())
    assert len(kept) == 1 and ".torn." in kept[0].name
    assert kept[0].read_bytes() == garbage


def test_damaged_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    recs = written(tmp_path)
    flip(segments(tmp_path)[-1], offset_of(recs, 4) + 20)
    lg = MirrorLog(tmp_path)
    assert lg.last_lsn == 4


def test_corrupt_record_in_the_middle_refuses_to_open(tmp_path: Path) -> None:
    recs = written(tmp_path)
    seg = segments(tmp_path)[-1]
    at = offset_of(recs, 2)
    flip(seg, at + recs[2].size - 5)  # inside record 3's data; 4 and 5 are intact
    before = seg.read_bytes()
    for _attempt in range(2):  # the agent retries a failed mirror: same answer
        with pytest.raises(LogCorrupt) as err:
            MirrorLog(tmp_path)
        assert (err.value.path, err.value.offset, err.value.lsn) == (seg, at, 3)
        message = str(err.value)
        assert str(seg) in message and f"byte {at}" in message and "LSN 3" in message
        assert "LSN 4" in message and "move" in message  # what follows; what to do
    assert seg.read_bytes() == before  # nothing truncated, nothing moved
    assert not (tmp_path / "quarantine").exists()


def test_damaged_length_field_with_records_after_it_is_middle(tmp_path: Path) -> None:
    """A length that points past the end looks partial, but valid records follow."""
    recs = written(tmp_path)
    seg = segments(tmp_path)[-1]
    data = bytearray(seg.read_bytes())
    at = offset_of(recs, 1)
    data[at:at + 4] = (1 << 23).to_bytes(4, "big")
    seg.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt) as err:
        MirrorLog(tmp_path)
    assert err.value.lsn == 2 and err.value.offset == at


def test_corruption_in_an_earlier_segment_refuses_to_open(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path, segment_bytes=300)
    for _ in range(6):
        lg.append_ops(ops(2), 1)
    lg.close()
    segs = segments(tmp_path)
    assert len(segs) >= 3
    # the *last* record of a non-last segment: still middle, later segments follow
    size = segs[1].stat().st_size
    flip(segs[1], size - 3)
    with pytest.raises(LogCorrupt) as err:
        MirrorLog(tmp_path, segment_bytes=300)
    assert err.value.path == segs[1] and "later segments follow" in str(err.value)


def test_missing_segment_refuses_to_open(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path, segment_bytes=300)
    for _ in range(6):
        lg.append_ops(ops(2), 1)
    lg.close()
    segs = segments(tmp_path)
    segs[1].unlink()
    with pytest.raises(LogCorrupt, match="missing") as err:
        MirrorLog(tmp_path, segment_bytes=300)
    assert err.value.lsn == int(segs[1].name[:-4])


def test_valid_record_with_wrong_lsn_refuses_to_open(tmp_path: Path) -> None:
    written(tmp_path, 3)
    with open(segments(tmp_path)[-1], "ab") as f:  # LSN 9 where 4 belongs
        f.write(encode_record(Record(9, 1, ops(1)[0])))
    with pytest.raises(LogCorrupt, match="wrong sequence"):
        MirrorLog(tmp_path)


def test_search_for_valid_records_is_cheap_on_a_large_tail(tmp_path: Path) -> None:
    """16 MiB of zeros or junk after the last record (a quarter of a default segment)
    is classified without a per-byte Python loop; no timing is asserted, the
    test just must not take minutes."""
    recs = [Record(i + 1, 1, op) for i, op in enumerate(ops(3))]
    head = b"".join(encode_record(r) for r in recs)
    for tail in (b"\0" * (16 << 20), os.urandom(16 << 20)):
        assert valid_record_after(head + tail, len(head), 3) is None
    more = encode_record(Record(4, 1, ops(1)[0]))
    junk = os.urandom(1 << 20)
    found = valid_record_after(head + junk + more, len(head), 3)
    assert found == (len(head) + len(junk), 4)


def test_corrupt_log_closes_its_descriptors(tmp_path: Path) -> None:
    recs = written(tmp_path)
    flip(segments(tmp_path)[-1], offset_of(recs, 1) + 20)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(LogCorrupt):
            MirrorLog(tmp_path)
    assert len(os.listdir("/proc/self/fd")) == before

