"""Per-mirror state: config role only when no state exists; atomic writes."""

from __future__ import annotations

from pathlib import Path

from mirrorkit.agent.state import MirrorState, StateStore


def test_first_start_uses_config_then_state_wins(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "records")
    assert store.load("backup", "node1") == MirrorState(1, "backup", "node1")
    store.save(MirrorState(4, "primary", "node2"))
    # a re-applied config saying "backup" does not override the runtime state
    assert StateStore(tmp_path / "records").load("backup", "node1") == MirrorState(
        4, "primary", "node2")
    assert not list((tmp_path / "records").glob(".*.tmp"))


def test_damaged_state_falls_back_to_config(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.state_path.write_text("{not json")
    assert store.load("async", "node1") == MirrorState(1, "async", "node1")
    store.state_path.write_text('{"term": "x", "role": "primary"}')
    assert store.load("async", "node1").role == "async"


def test_applied_lsn_roundtrip(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.load_applied() == 0
    store.save_applied(42)
    assert StateStore(tmp_path).load_applied() == 42
    assert (tmp_path / "applied.json").stat().st_mode & 0o077 == 0
