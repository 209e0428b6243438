"""Resync pieces without agents: the manifest wire codec and walk, the
block-index hash version, the compare modes' ops, quarantine path safety,
and the controller command's argument handling."""

from __future__ import annotations

import argparse
import os
import sqlite3
from pathlib import Path

import pytest

from mirrorkit.agent.capture.index import FILE, BlockIndex, Entry
from mirrorkit.agent.log.records import OpKind
from mirrorkit.agent.resync.compare import (
    ManifestStore,
    ResyncProgress,
    ResyncReconciler,
    diff_ops,
    quarantine_path,
)
from mirrorkit.agent.resync.manifest import walk_replica
from mirrorkit.agent.transport.frames import Manifest, decode_frame, encode_message
from mirrorkit.agent.transport.manifest_items import (
    MAX_HASHES_PER_ITEM,
    ManifestItem,
    decode_items,
    encode_item,
)
from mirrorkit.agent.util.hashing import DIGEST_SIZE, HASH_NAME
from mirrorkit.commands.resync import agent_command, resync_views

BLOCK = 4096


def test_manifest_items_round_trip_through_a_frame() -> None:
    items = [ManifestItem(0, "d", "d", 0o755), ManifestItem(1, "d/l", "l", target="../x"),
             ManifestItem(0, "d/f\udcff", "f", 0o600, 9, 123, hashes=b"h" * DIGEST_SIZE * 2)]
    assert decode_items(b"".join(encode_item(i) for i in items)) == items
    msg, _ = decode_frame(encode_message(Manifest(4, items)))
    assert msg == Manifest(4, items)


def test_walk_lists_parents_first_and_splits_huge_hash_lists(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             ) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(os.urandom(5 * BLOCK + 1))
    os.symlink("/etc/passwd", tmp_path / "a" / "l")
    monkeypatch.setattr("mirrorkit.agent.resync.manifest.MAX_HASHES_PER_ITEM", 4)
    items = list(walk_replica([tmp_path], BLOCK, with_hashes=True))
    assert [(i.path, i.kind, i.first_block) for i in items] == [
        ("a", "d", 0), ("a/f", "f", 0), ("a/f", "f", 4), ("a/l", "l", 0)]
    assert len(items[1].hashes) == 4 * DIGEST_SIZE and len(items[2].hashes) == 2 * DIGEST_SIZE
    assert MAX_HASHES_PER_ITEM > 4
    assert all(not i.hashes for i in walk_replica([tmp_path], BLOCK, with_hashes=False))


def test_an_index_from_another_hash_is_rehashed_not_misread(tmp_path: Path) -> None:
    db = tmp_path / "blockindex.db"
    index = BlockIndex(db, BLOCK)
    index.put(0, "f", Entry(FILE, 0o644, 3, hashes=b"h" * DIGEST_SIZE))
    index.commit()
    index.close()
    with sqlite3.connect(db) as con:  # as written by the blake2b version
        con.execute("DELETE FROM meta WHERE key = 'hash'")
    index = BlockIndex(db, BLOCK)
    entry = index.get(0, "f")
    assert entry is not None and entry.hashes == b"" and entry.size == 3
    index.close()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'hash'").fetchone() == (HASH_NAME,)


def _diff(primary: Path, replica: Path, mode: str) -> list[tuple[OpKind, str, str]]:
    store = ManifestStore(primary.parent / f"m-{mode}.db", BLOCK)
    for item in walk_replica([replica], BLOCK, with_hashes=mode == "checksum"):
        store.add(item)
    progress = ResyncProgress(mode)
    ops = [op for op in diff_ops(ResyncReconciler([str(primary)], [], store, mode, progress))
           if op is not None]
    store.discard()
    return [(op.kind, op.path, op.target) for op in ops]


def test_compare_modes_choose_what_moves(tmp_path: Path) -> None:
    primary, replica = tmp_path / "p", tmp_path / "r"
    primary.mkdir(), replica.mkdir()
    data = os.urandom(4 * BLOCK)
    (primary / "same").write_bytes(data)
    (replica / "same").write_bytes(data[:BLOCK] + b"x" * BLOCK + data[2 * BLOCK:])
    st = os.stat(primary / "same")
    os.utime(replica / "same", ns=(st.st_atime_ns, st.st_mtime_ns))
    (replica / "orphan").write_text("x")
    (replica / "kind").mkdir()
    (primary / "kind").write_text("now a file")

    checksum = _diff(primary, replica, "checksum")
    assert [k for k, p, _ in checksum if p == "same"] == [OpKind.WRITE, OpKind.UTIME]
    assert (OpKind.UNLINK, "orphan", "orphan") in checksum
    assert (OpKind.RMDIR, "kind", "replace") in checksum
    different = _diff(primary, replica, "different")
    assert [k for k, p, _ in different if p == "same"] == []  # same size and mtime
    newer = _diff(primary, replica, "newer")
    assert [k for k, p, _ in newer if p == "same"] == []
    every = _diff(primary, replica, "all")
    assert [k for k, p, _ in every if p == "same"].count(OpKind.WRITE) == 4


def test_quarantine_never_follows_a_symlink(tmp_path: Path) -> None:
    root, outside, dest = tmp_path / "root", tmp_path / "outside", tmp_path / "q"
    root.mkdir(), outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink(outside, root / "link")
    assert quarantine_path(root, 0, "link/secret", dest) is None
    assert (outside / "secret").exists()
    for bad in ("../x", "/etc/passwd", "a//b", ""):
        with pytest.raises(ValueError):
            quarantine_path(root, 0, bad, dest)
    moved = quarantine_path(root, 0, "link", dest)
    assert moved == dest / "0" / "link" and moved.is_symlink()


def test_agent_command_and_progress_views() -> None:
    args = argparse.Namespace(mirror="records", member="dr1", mode="newer", keep_orphans=True)
    assert agent_command(args, "agent") == (
        "agent resync --mirror records --mode newer --json --member dr1 --keep-orphans")
    status = {"mirrors": {"records": {"peers": {
        "dr1": {"resync": {"id": 3, "state": "done"}},
        "node2": {"resync": {"id": 1, "state": "done"}}}}}}
    views = resync_views(status, "records", {"dr1": 3, "node2": 4})
    assert views == {"dr1": {"id": 3, "state": "done"}, "node2": None}
