"""Senders never build a frame the receiver refuses: RECORDS batches from
the log and from a resync, and MANIFEST batches, stop at the per-frame
bounds (frames.MAX_RECORDS_PER_FRAME, manifest_items.MAX_ITEMS_PER_FRAME)
even when the byte budget would take many more small entries."""

from __future__ import annotations

from pathlib import Path

from mirrorkit.agent.log.records import Op, OpKind
from mirrorkit.agent.log.segments import MirrorLog
from mirrorkit.agent.resync import primary as resync_primary
from mirrorkit.agent.resync import receiver as resync_receiver
from mirrorkit.agent.stream import sender
from mirrorkit.agent.transport.frames import (
    MAX_RECORDS_PER_FRAME,
    Manifest,
    Records,
    decode_frame,
    encode_message,
)
from mirrorkit.agent.transport.manifest_items import MAX_ITEMS_PER_FRAME, ManifestItem

TINY = [Op(OpKind.UTIME, 0, f"f{i}", value=i) for i in range(MAX_RECORDS_PER_FRAME + 500)]


def test_log_batches_stop_at_the_records_bound(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path)
    lg.append_ops(TINY, term=1)
    # What the primary's send loop reads (stream/sender._read): the byte
    # budget alone would take every record (they are ~45 bytes each).
    assert lg.bytes_between(1, lg.last_lsn) < sender.BATCH_BYTES
    data, count = lg.read_raw(1, sender.BATCH_BYTES, MAX_RECORDS_PER_FRAME)
    assert count == MAX_RECORDS_PER_FRAME
    msg, _ = decode_frame(encode_message(Records(1, raw=data)))
    assert isinstance(msg, Records) and len(msg.records) == MAX_RECORDS_PER_FRAME
    rest, more = lg.read_raw(1 + count, sender.BATCH_BYTES, MAX_RECORDS_PER_FRAME)
    assert more == 500 and decode_frame(encode_message(Records(1, raw=rest)))
    lg.close()


def test_resync_batches_stop_at_the_records_bound() -> None:
    ops = iter([*TINY, None])
    data, done = resync_primary._take(ops, resync_primary.BATCH_BYTES, 600.0, 1)
    assert not done
    msg, _ = decode_frame(encode_message(Records(1, raw=data)))
    assert isinstance(msg, Records) and len(msg.records) == MAX_RECORDS_PER_FRAME
    data, done = resync_primary._take(ops, resync_primary.BATCH_BYTES, 600.0, 1)
    assert done and len(decode_frame(encode_message(Records(1, raw=data)))[0].records) == 500  # type: ignore[union-attr]


def test_manifest_batches_stop_at_the_items_bound() -> None:
    items = iter([ManifestItem(0, f"d{i}", "d", 0o755) for i in range(MAX_ITEMS_PER_FRAME + 9)])
    batch, raw = resync_receiver._take_items(items, resync_receiver.MANIFEST_FRAME_BYTES)
    assert len(batch) == MAX_ITEMS_PER_FRAME and len(raw) < resync_receiver.MANIFEST_FRAME_BYTES
    msg, _ = decode_frame(encode_message(Manifest(1, batch, raw)))
    assert isinstance(msg, Manifest) and msg.items == batch
    batch, _ = resync_receiver._take_items(items, resync_receiver.MANIFEST_FRAME_BYTES)
    assert len(batch) == 9
