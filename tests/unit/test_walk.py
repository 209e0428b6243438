"""The one tree walker (util.walk) and the one block-hash loop (util.hashing),
and the walker's callers on trees too deep for recursion."""

from __future__ import annotations

import logging
import os
import random
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrorkit.agent.apply.applier import Applier
from mirrorkit.agent.capture.base import scan_full
from mirrorkit.agent.log.records import Op, OpKind, Record
from mirrorkit.agent.resync.compare import count_tree
from mirrorkit.agent.resync.manifest import walk_replica
from mirrorkit.agent.util.hashing import block_digest, read_blocks
from mirrorkit.agent.util.walk import DIR, END, FILE, LINK, lookup, walk
from mirrorkit.agent.verify.manifest import build_manifest


def rels(root: Path, top: str = "", **kw: Any) -> list[str]:
    return [e.rel for e in walk(root, top, **kw)]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for d in ("a/b", "a/c", "z"):
        (root / d).mkdir(parents=True)
    for f in ("a/b/f1", "a/f2", "top", "z/skip.tmp"):
        (root / f).write_text(f)
    return root


def test_depth_first_sorted_parents_first(tree: Path) -> None:
    assert rels(tree) == ["a", "a/b", "a/b/f1", "a/c", "a/f2", "top", "z", "z/skip.tmp"]
    assert rels(tree, top="a") == ["a/b", "a/b/f1", "a/c", "a/f2"]
    kinds = {e.rel: e.kind for e in walk(tree)}
    assert kinds["a"] == DIR and kinds["top"] == FILE


def test_order_does_not_depend_on_creation_order(tmp_path: Path) -> None:
    names = [f"n{i:03d}" for i in range(200)]
    orders = []
    for attempt in range(2):
        root = tmp_path / str(attempt)
        root.mkdir()
        random.Random(attempt).shuffle(names)
        for name in names:
            if name.endswith("7"):
                (root / name).mkdir()
                (root / name / "inner").write_text("x")
            else:
                (root / name).write_text(name)
        orders.append(rels(root))
    assert orders[0] == orders[1]
    assert orders[0][:3] == ["n000", "n001", "n002"] and orders[0][8] == "n007/inner"


def test_symlinks_are_entries_never_followed(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink(outside, tree / "a" / "to-dir")
    os.symlink(outside / "secret", tree / "to-file")
    entries = {e.rel: e for e in walk(tree)}
    assert entries["a/to-dir"].kind == LINK and entries["to-file"].kind == LINK
    assert not any("secret" in rel for rel in entries)
    # A root that is itself a symlink is not entered, nor a top through one.
    os.symlink(tree, tmp_path / "alias")
    assert rels(tmp_path / "alias") == [] and rels(tree, top="a/to-dir") == []
    with lookup(tree, "a/to-dir/secret") as found:
        assert found is None


def test_fifos_sockets_and_devices_are_skipped(tree: Path) -> None:
    os.mkfifo(tree / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tree / "sock"))
    if os.geteuid() == 0:
        os.mknod(tree / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    try:
        assert not {"fifo", "sock", "null"} & set(rels(tree))
        with lookup(tree, "fifo") as found:
            assert found is None
    finally:
        sock.close()


def test_skip_prunes_a_path_and_everything_below(tree: Path) -> None:
    got = rels(tree, skip=lambda rel: rel == "a" or rel.endswith(".tmp"))
    assert got == ["top", "z"]


def test_descend_false_and_listing_ends(tree: Path) -> None:
    out = []
    for e in walk(tree, listing=True):
        out.append((e.kind, e.rel, sorted(e.names)))
        if e.rel == "a/b":
            e.descend = False
    assert (END, "a/c", []) in out and (END, "z", ["skip.tmp"]) in out
    assert not any(rel == "a/b" and kind == END for kind, rel, _ in out)
    assert "a/b/f1" not in [rel for _, rel, _ in out]
    assert out[-1] == (END, "", ["a", "top", "z"])


def test_a_directory_replaced_by_a_symlink_is_not_entered(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    (outside / "b" / "secret").write_text("s")
    (outside / "b" / "f1").write_text("s")
    got = []
    for e in walk(tree):
        got.append(e.rel)
        if e.rel == "a/b":  # listed, not yet entered
            os.rename(tree / "a" / "b", tmp_path / "old-b")
            os.symlink(outside / "b", tree / "a" / "b")
    assert "a/b/secret" not in got and "a/b/f1" not in got
    assert got[-3:] == ["top", "z", "z/skip.tmp"]  # the rest of the walk goes on


@pytest.mark.parametrize("swap", ["symlink", "directory"])
def test_an_ancestor_swapped_while_its_fd_was_closed_is_abandoned(
        tmp_path: Path, swap: str) -> None:
    root = tmp_path / "tree"
    (root / "a/b/c/d").mkdir(parents=True)
    (root / "a/z").write_text("z")
    (root / "b").write_text("after")
    outside = tmp_path / "outside"
    (outside / "b/c/d").mkdir(parents=True)
    (outside / "z").write_text("secret")  # the name the old "a" listed
    got = []
    for e in walk(root, max_fds=1):  # "a" is closed once the walk is deeper
        got.append(e.rel)
        if e.rel == "a/b/c/d":
            os.rename(root / "a", tmp_path / "old-a")
            if swap == "symlink":
                os.symlink(outside, root / "a")
            else:
                os.rename(outside, root / "a")  # a real directory, but not the one listed
    assert got == ["a", "a/b", "a/b/c", "a/b/c/d", "b"]  # never a/z, old or new


def make_chain(top: Path, name: str, depth: int) -> None:
    """``top/name/name/...`` (``depth`` levels) with a file ``f`` at the bottom,
    made from directory descriptors: paths that long are slow, or refused."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def remove_chain(top: Path, name: str) -> None:
    """Remove what :func:`make_chain` made one level at a time with short
    paths (shutil.rmtree recurses, and the paths may be too long for it)."""
    spare = top / "spare"
    while (top / name).exists():
        if (top / name / "f").exists():
            os.unlink(top / name / "f")
        if (top / name / name).exists():
            os.rename(top / name / name, spare)
            os.rmdir(top / name)
            os.rename(spare, top / name)
        else:
            os.rmdir(top / name)
    top.rmdir()


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    depth = 1500
    root = tmp_path_factory.mktemp("walk") / "deep"
    make_chain(root, "d", depth)
    yield root, depth
    remove_chain(root, "d")


def test_a_tree_1500_deep_walks_without_recursion_and_few_fds(deep: tuple[Path, int]) -> None:
    root, depth = deep
    before = open_fds()
    most = 0
    count = 0
    for _ in walk(root, listing=True, max_fds=8):
        count += 1
        most = max(most, open_fds() - before)
    assert count == 2 * depth + 1 + 1  # every directory, its END, the file, the root's END
    assert most <= 8 + 1
    assert open_fds() == before


def test_levels_reopened_on_the_way_back_up_keep_the_fd_bound(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    path = root
    for _ in range(60):  # every level: a directory "a", then a file "z" listed after it
        path = path / "a"
        path.mkdir(parents=True)
        (path.parent / "z").write_text("z")
    before = open_fds()
    got, most = [], 0
    for e in walk(root, max_fds=4):
        got.append(e.rel)
        most = max(most, open_fds() - before)
    expected_z = ["a/" * k + "z" for k in range(60)]
    assert [r for r in got if r.endswith("z")] == expected_z[::-1]  # deepest first
    assert len(got) == 120 and most <= 4 + 1 and open_fds() == before


def test_every_caller_walks_a_tree_too_deep_for_recursion(deep: tuple[Path, int]) -> None:
    root, depth = deep
    ops = list(scan_full([root], []))
    assert [op.kind for op in ops].count(OpKind.MKDIR) == depth
    assert sum(1 for _ in walk_replica([root], 4096, True)) == depth + 1
    assert sum(1 for _ in build_manifest([str(root)], [])) == depth + 1
    assert count_tree([str(root)], []) == (1, 0)


def test_apply_removes_a_tree_too_deep_for_shutil_rmtree(tmp_path: Path) -> None:
    replica, outside = tmp_path / "replica", tmp_path / "outside"
    make_chain(replica, "d", 1200)
    outside.mkdir()
    (outside / "keep").write_text("k")
    os.symlink(outside, replica / "d" / "d" / "link")
    os.mkfifo(replica / "d" / "fifo")
    applier = Applier([replica])
    applier.apply_batch([Record(1, 1, Op(OpKind.RMDIR, 0, "d"))])
    applier.close()
    assert applier.conflicts == 0 and os.listdir(replica) == []
    assert (outside / "keep").exists()


def test_a_path_no_record_can_carry_is_skipped_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, name = tmp_path / "long", "n" * 255
    make_chain(root, name, 17)  # 17 * 256 bytes: past PATH_MAX below the root
    try:
        with caplog.at_level(logging.ERROR):
            got = rels(root)
        assert len(got) == 16 and all(len(r.encode()) < 4096 for r in got)
        assert "PATH_MAX" in caplog.text
    finally:
        remove_chain(root, name)


def test_read_blocks_aligned_with_a_reused_buffer(tmp_path: Path) -> None:
    data = os.urandom(3 * 1000 + 17)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        seen = [(off, bytes(block), digest) for off, block, digest in read_blocks(fd, 1000)]
    finally:
        os.close(fd)
    assert [off for off, _, _ in seen] == [0, 1000, 2000, 3000]
    assert b"".join(block for _, block, _ in seen) == data
    assert all(digest == block_digest(block) for _, block, digest in seen)
    empty = os.open(tmp_path / "empty", os.O_RDONLY | os.O_CREAT)
    try:
        assert list(read_blocks(empty, 1000)) == []
    finally:
        os.close(empty)
