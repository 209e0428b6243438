"""Mirror log: append, read, segments, retention. Recovery from torn tails and
corruption: tests/unit/test_agent_log_recovery.py."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mirrorkit.agent.api.metrics import metrics_text
from mirrorkit.agent.log.records import Op, OpKind, Record
from mirrorkit.agent.log.segments import LogError, MirrorLog
from mirrorkit.agent.util.stats import AgentMetrics


def ops(n: int, size: int = 10) -> list[Op]:
    return [Op(OpKind.WRITE, 0, f"f{i}", value=i, data=bytes([i % 256]) * size)
            for i in range(n)]


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.log"))


def test_empty_log_starts_at_one(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path)
    assert (lg.first_lsn, lg.last_lsn) == (1, 0)
    assert lg.read_raw(1) == (b"", 0)


def test_append_read_reopen(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path)
    recs = lg.append_ops(ops(5), term=3)
    assert [r.lsn for r in recs] == [1, 2, 3, 4, 5]
    assert lg.read(3) == recs[2:]
    lg.close()
    lg = MirrorLog(tmp_path)
    assert lg.last_lsn == 5
    assert lg.read(1) == recs
    assert all(r.term == 3 for r in lg.read(1))


def test_append_rejects_lsn_gap(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path)
    lg.append_ops(ops(2), 1)
    with pytest.raises(LogError):
        lg.append([Record(4, 1, ops(1)[0])])


def test_torn_tail_is_truncated(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path)
    lg.append_ops(ops(3), 1)
    lg.close()
    seg = segments(tmp_path)[-1]
    size = seg.stat().st_size
    with open(seg, "ab") as f:  # a crash in the middle of writing record 4
        f.write(b"\x00\x00\x01\x00\x12\x34")
    lg = MirrorLog(tmp_path)
    assert lg.last_lsn == 3
    assert seg.stat().st_size == size
    assert not (tmp_path / "quarantine").exists()
    # and appending continues right after the last good record
    lg.append_ops(ops(1), 1)
    assert lg.last_lsn == 4
    assert lg.read(4)[0].op.path == "f0"


def test_segment_roll_and_read_across(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path, segment_bytes=500)
    recs: list[Record] = []
    for _ in range(10):
        recs += lg.append_ops(ops(2, size=100), 1)
    assert len(segments(tmp_path)) > 3
    lg.close()
    lg = MirrorLog(tmp_path, segment_bytes=500)
    assert lg.last_lsn == 20
    got: list[Record] = []
    lsn = 7
    while lsn <= lg.last_lsn:
        batch = lg.read(lsn, max_bytes=250)
        assert batch
        got += batch
        lsn = batch[-1].lsn + 1
    assert got == recs[6:]
    assert lg.bytes_between(1, 20) == sum(r.size for r in recs)
    assert lg.bytes_between(5, 5) == recs[4].size


def test_read_before_start_raises(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path, segment_bytes=300, max_bytes=600)
    for _ in range(10):
        lg.append_ops(ops(2, size=100), 1)
    lg.trim(min_acked_lsn=20)
    assert lg.first_lsn > 1
    with pytest.raises(LogError):
        lg.read(1)


def test_retention_respects_acks_until_over_limit(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path, segment_bytes=300, max_bytes=10_000)
    for _ in range(10):
        lg.append_ops(ops(2, size=100), 1)
    assert lg.trim(min_acked_lsn=20) == 0  # under the limit: keep history
    lg.max_bytes = 1000
    assert lg.trim(min_acked_lsn=0, drop_unacked=False) == 0
    dropped = lg.trim(min_acked_lsn=10)
    assert dropped > 0
    assert lg.size <= 1000 or len(segments(tmp_path)) == 1
    assert lg.read(lg.first_lsn)[0].lsn == lg.first_lsn
    assert lg.last_lsn == 20


def test_reset_restarts_at_lsn(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path)
    lg.append_ops(ops(3), 1)
    lg.reset(100)
    assert (lg.first_lsn, lg.last_lsn) == (100, 99)
    lg.append_ops(ops(1), 2)
    lg.close()
    lg = MirrorLog(tmp_path)
    assert (lg.first_lsn, lg.last_lsn) == (100, 100)


def test_segment_files_are_private(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path)
    lg.append_ops(ops(1), 1)
    assert os.stat(segments(tmp_path)[0]).st_mode & 0o077 == 0


# -- metrics and thread safety (readers on other threads) ----------------------


def _samples(metrics: AgentMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics_text(metrics.registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_appends_report_fsync_time_records_and_bytes(tmp_path: Path) -> None:
    metrics = AgentMetrics("node1")
    lg = MirrorLog(tmp_path, stats=metrics.mirror("m"))
    lg.append_ops(ops(3), 1)
    lg.append_ops(ops(2), 1)
    own = frozenset({("mirror", "m"), ("member", "node1")})
    s = _samples(metrics)
    assert s[("mirrorkit_log_fsync_seconds_count", own)] == 2
    assert s[("mirrorkit_log_records_total", own)] == 5
    assert s[("mirrorkit_log_bytes_total", own)] == lg.size


def test_a_quarantined_torn_tail_is_counted(tmp_path: Path) -> None:
    MirrorLog(tmp_path).append_ops(ops(3), 1)
    with open(segments(tmp_path)[-1], "ab") as f:
        f.write(b"\xff" * 64)  # garbage, not merely a partial record: kept
    metrics = AgentMetrics("node1")
    MirrorLog(tmp_path, stats=metrics.mirror("m"))
    labels = frozenset({("mirror", "m"), ("member", "node1"), ("reason", "torn_tail")})
    assert _samples(metrics)[("mirrorkit_quarantined_files_total", labels)] == 1


def test_readers_on_another_thread_survive_appends_and_trims(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path, segment_bytes=2000, max_bytes=6000)
    lg.append_ops(ops(5, size=100), 1)
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            lsn = lg.first_lsn
            try:
                records = lg.read(lsn, 3000)
            except LogError as exc:  # trimmed between first_lsn and the read
                if "before the log start" not in str(exc):
                    errors.append(exc)
                continue
            except BaseException as exc:
                errors.append(exc)
                return
            if [r.lsn for r in records] != list(range(lsn, lsn + len(records))):
                errors.append(AssertionError(f"wrong records from {lsn}"))
            reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(300):  # segments roll and are trimmed under the reader
            lg.append_ops(ops(4, size=100), 1)
            lg.trim(lg.last_lsn)
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors[:3]
    assert reads > 0 and lg.first_lsn > 1


def test_reset_never_shows_another_thread_an_empty_log(tmp_path: Path) -> None:
    lg = MirrorLog(tmp_path)
    stop = threading.Event()
    errors: list[BaseException] = []

    def status() -> None:
        while not stop.is_set():
            try:
                lg.first_lsn, lg.last_lsn, lg.size  # noqa: B018 - what /status reads
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=status)
    thread.start()
    try:
        for i in range(200):
            lg.append_ops(ops(1), 1)
            lg.reset(lg.last_lsn + 1 + i % 2)
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors[:3]
