"""The block-hash index (sqlite) and diffing files against it."""

from __future__ import annotations

import os
from pathlib import Path

from mirrorkit.agent.capture.index import DIR, FILE, LINK, BlockIndex, Entry
from mirrorkit.agent.capture.reconcile import How, Reconciler, diff_file
from mirrorkit.agent.log.records import Op, OpKind
from mirrorkit.agent.util.hashing import DIGEST_SIZE

BS = 1024


def run_diff(path: Path, old: Entry | None) -> tuple[list[Op], Entry | None]:
    gen = diff_file(0, "f", str(path), old, BS)
    ops: list[Op] = []
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return ops, stop.value
        if item is not None:
            ops.append(item)


def test_new_file_then_changes_ship_only_changed_blocks(tmp_path: Path) -> None:
    f = tmp_path / "f"
    data = bytearray(os.urandom(10 * BS + 10))
    f.write_bytes(data)
    os.chmod(f, 0o640)
    ops, entry = run_diff(f, None)
    assert entry is not None and entry.kind == FILE and entry.size == len(data)
    assert len(entry.hashes) == 11 * DIGEST_SIZE
    assert [op.kind for op in ops] == [OpKind.CREATE] + [OpKind.WRITE] * 11 + [OpKind.UTIME]
    assert ops[0].value == 0o640
    assert b"".join(op.data for op in ops) == data

    ops, _ = run_diff(f, entry)
    assert ops == []  # unchanged content, same mtime: nothing

    data[5 * BS + 3] ^= 0xFF
    f.write_bytes(data[: 7 * BS])  # one block changed, and shrunk
    ops, entry2 = run_diff(f, entry)
    assert [(op.kind, op.value) for op in ops[:-1]] == [
        (OpKind.WRITE, 5 * BS), (OpKind.TRUNCATE, 7 * BS)
    ]
    assert ops[-1].kind == OpKind.UTIME
    assert entry2 is not None and entry2.size == 7 * BS

    os.chmod(f, 0o600)
    ops, _ = run_diff(f, entry2)
    assert (OpKind.CHMOD, 0o600) in [(op.kind, op.value) for op in ops]


def test_file_replacing_a_directory_removes_it_first(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    ops, _ = run_diff(f, Entry(DIR, 0o755))
    assert [op.kind for op in ops[:2]] == [OpKind.RMDIR, OpKind.CREATE]


def test_vanished_or_not_a_file_returns_none(tmp_path: Path) -> None:
    assert run_diff(tmp_path / "missing", None) == ([], None)
    (tmp_path / "d").mkdir()
    assert run_diff(tmp_path / "d", None) == ([], None)
    os.symlink("d", tmp_path / "l")
    assert run_diff(tmp_path / "l", None) == ([], None)


def test_index_store_rename_delete_children_persist(tmp_path: Path) -> None:
    db = tmp_path / "state" / "index.sqlite"
    index = BlockIndex(db, BS)
    index.put(0, "a", Entry(DIR, 0o755))
    index.put(0, "a/x", Entry(FILE, 0o644, 3, hashes=b"h" * DIGEST_SIZE))
    index.put(0, "a/sub", Entry(DIR, 0o700))
    index.put(0, "a/sub/y", Entry(LINK, target="../x"))
    index.put(0, "a-b", Entry(FILE))  # sorts between "a" and "a/": must not be touched
    index.put(1, "a", Entry(FILE))  # another tree
    assert set(index.children(0, "a")) == {"x", "sub"}
    assert set(index.children(0, "")) == {"a", "a-b"}
    index.rename(0, "a", "b")
    assert index.get(0, "a") is None and index.get(0, "a/sub/y") is None
    assert index.get(0, "b/sub/y") == Entry(LINK, target="../x")
    assert set(index.children(0, "b")) == {"x", "sub"}
    assert index.get(0, "a-b") is not None and index.get(1, "a") is not None
    index.commit()
    index.put(0, "uncommitted", Entry(FILE))
    index.close()  # uncommitted changes are discarded

    index = BlockIndex(db, BS)
    assert index.get(0, "uncommitted") is None
    assert index.get(0, "b/x") == Entry(FILE, 0o644, 3, hashes=b"h" * DIGEST_SIZE)
    index.delete_subtree(0, "b")
    assert index.get(0, "b/sub/y") is None and index.get(0, "a-b") is not None
    name = os.fsdecode(b"\xff\xfe")
    index.put(0, name, Entry(FILE))
    assert name in index.children(0, "")
    index.commit()
    index.close()

    index = BlockIndex(db, 2 * BS)  # another block size: hashes forgotten, entries kept
    entry = index.get(0, "a-b")
    assert entry is not None and entry.hashes == b""
    index.close()


def test_bind_roots_resets_a_tree_whose_root_changed(tmp_path: Path) -> None:
    index = BlockIndex(tmp_path / "i.sqlite", BS)
    assert index.bind_roots(["/srv/a", "/srv/b"]) == []
    index.put(0, "x", Entry(FILE))
    index.put(1, "y", Entry(FILE))
    index.commit()
    assert index.bind_roots(["/srv/a", "/srv/c"]) == [1]
    assert index.get(0, "x") is not None and index.get(1, "y") is None
    index.close()


def test_reconciler_never_follows_a_symlink_in_the_middle_of_a_path(tmp_path: Path) -> None:
    """An event names ``d/f``; by the time it is processed ``d`` is a symlink
    to a directory outside the tree. Nothing from outside may be read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"SECRET")
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(outside, src / "d")
    index = BlockIndex(":memory:", BS)
    index.put(0, "d", Entry(DIR, 0o755))  # the index still knows d as a directory
    index.put(0, "d/f", Entry(FILE, 0o644, 6))
    rec = Reconciler([str(src)], [], index, lambda tree, rel, fd: None)
    ops = [op for op in rec.reconcile(0, "d/f", How.CONTENT) if op is not None]
    assert ops == [Op(OpKind.UNLINK, 0, "d/f")]  # d/f is gone from the tree
    ops = [op for op in rec.reconcile(0, "d", How.SCAN) if op is not None]
    assert ops == [Op(OpKind.RMDIR, 0, "d"), Op(OpKind.SYMLINK, 0, "d", target=str(outside))]
    assert index.get(0, "d/f") is None
