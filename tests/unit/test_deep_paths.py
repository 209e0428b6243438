"""Deep and long paths (docs/architecture.md, "Paths and apply"): a path of up
to PATH_MAX - 1 bytes below its tree root (at most 2,048 components) is
applied, captured, quarantined and looked up without recursion and with a
bounded number of descriptors, even where its absolute spelling is longer
than Linux allows; one byte more is refused, by capture (WARNING, counted)
and by apply (REFUSED), never with a traceback."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrorkit.agent.apply.applier import Applier, RecordFailed
from mirrorkit.agent.capture.index import NullIndex
from mirrorkit.agent.capture.reconcile import How, Reconciler
from mirrorkit.agent.capture.unmirrorable import Unmirrorable
from mirrorkit.agent.capture.watch import WatchCapture
from mirrorkit.agent.log.records import Op, OpKind, Record
from mirrorkit.agent.resync.compare import quarantine_path
from mirrorkit.agent.util.fs import NAME_MAX, PATH_MAX
from mirrorkit.agent.util.move import make_dirs
from mirrorkit.agent.util.walk import lookup, remove_tree

DEEP = "/".join(["d"] * 1200)  # the case: 1,200 directories
AT_BOUND = "/".join(["d"] * (PATH_MAX // 2 - 1)) + "/f"  # PATH_MAX - 1 bytes, 2,048 parts
PAST_BOUND = AT_BOUND + "f"  # PATH_MAX bytes: no room for the NUL


def remove_all(top: Path) -> None:
    """Remove ``top`` by descriptors (shutil.rmtree, and so pytest's own
    cleanup, recurses once per level)."""
    fd = os.open(top.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_tree(fd, top.name)
    finally:
        os.close(fd)


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory for trees thousands of levels deep: on tmpfs when
    there is one (rmdir(2) costs milliseconds on some disks), removed after."""
    shm = Path("/dev/shm")
    top = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) \
        else tmp_path / "deep"
    top.mkdir(exist_ok=True)
    yield top
    remove_all(top)


def test_the_bounds() -> None:
    assert len(AT_BOUND.encode()) == PATH_MAX - 1 == 4095
    assert AT_BOUND.count("/") + 1 == 2048  # the most components 4,095 bytes can hold
    assert len(PAST_BOUND.encode()) == PATH_MAX


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def dir_at(root: Path, parts: list[str], mode: int = 0o755) -> int:
    """A descriptor of ``root/parts...`` (made if missing), by descriptors."""
    base = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return make_dirs(base, parts, mode)
    finally:
        os.close(base)


def read_at(root: Path, rel: str) -> bytes:
    """Read ``root/rel`` by descriptors (its absolute path may be too long)."""
    parent, _, name = rel.rpartition("/")
    dfd = dir_at(root, parent.split("/") if parent else [])
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
        try:
            return os.read(fd, 1 << 16)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


def apply(a: Applier, *ops: Op, stage: object = None) -> None:
    a.apply_batch([Record(i + 1, 1, op) for i, op in enumerate(ops)],
                  stage=stage)  # type: ignore[arg-type]


@pytest.mark.parametrize("rel", [DEEP + "/f", AT_BOUND])
def test_a_deep_path_is_applied_without_recursion(deep_tmp: Path, rel: str) -> None:
    root = deep_tmp / "replica"
    a = Applier([root])
    seen: list[int] = []

    def stage() -> int:  # called after the last record, before the durability point
        seen.append(open_fds())
        return os.open(deep_tmp / "staged", os.O_WRONLY | os.O_CREAT, 0o600)

    before = open_fds()
    apply(a, Op(OpKind.WRITE, 0, rel, data=b"deep"), Op(OpKind.CHMOD, 0, rel, value=0o640),
          stage=stage)
    assert read_at(root, rel) == b"deep"
    assert seen[0] - before < 70  # the dir cache (64) and the file, not one per level
    # Later records in the same directory, a rename and a removal still work.
    parent = rel.rpartition("/")[0]
    apply(a, Op(OpKind.WRITE, 0, f"{parent}/g", data=b"later"),
          Op(OpKind.RENAME, 0, f"{parent}/g", target=f"{parent}/h"))
    assert read_at(root, f"{parent}/h") == b"later"
    apply(a, Op(OpKind.RMDIR, 0, "d"))
    assert os.listdir(root) == []
    a.close()
    assert a.refused == 0


def test_one_past_the_bound_is_refused_by_apply(tmp_path: Path) -> None:
    a = Applier([tmp_path / "replica"])
    for bad in (PAST_BOUND, "d/" + "n" * (NAME_MAX + 1)):
        with pytest.raises(RecordFailed) as info:
            apply(a, Op(OpKind.WRITE, 0, bad, data=b"x"))
        assert info.value.refused and "REFUSED record LSN 1" in str(info.value)
    assert a.refused == 2 and os.listdir(tmp_path / "replica") == []
    apply(a, Op(OpKind.WRITE, 0, "d/" + "n" * NAME_MAX, data=b"x"))  # at NAME_MAX: fine


def test_one_batch_into_many_directories_holds_bounded_descriptors(tmp_path: Path) -> None:
    a = Applier([tmp_path / "replica"])
    seen: list[int] = []

    def stage() -> int:
        seen.append(open_fds())
        return os.open(tmp_path / "staged", os.O_WRONLY | os.O_CREAT, 0o600)

    before = open_fds()
    ops = [Op(OpKind.WRITE, 0, f"d{i}/e/f", data=b"x") for i in range(600)]
    ops += [Op(OpKind.CHMOD, 0, f"d{i}/e/f", value=0o600) for i in range(600)]
    apply(a, *ops, stage=stage)
    assert seen[0] - before <= 64 + 2 * 256 + 4  # not 600 directories + 1,200 files
    assert all((tmp_path / f"replica/d{i}/e/f").read_bytes() == b"x" for i in range(600))
    assert open_fds() == before  # everything of the batch closed at its durability point
    a.close()


def deep_tree(root: Path, rel: str, data: bytes = b"x") -> None:
    parent, _, name = rel.rpartition("/")
    dfd = dir_at(root, parent.split("/"))
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd)
        os.write(fd, data)
        os.close(fd)
    finally:
        os.close(dfd)


def test_capture_mirrors_at_the_bound_and_refuses_past_it_with_a_warning(
        deep_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = deep_tmp / "primary"
    root.mkdir()
    deep_tree(root, AT_BOUND)
    deep_tree(root, PAST_BOUND)
    (root / "ok").write_text("ok")
    counted = Unmirrorable()
    rec = Reconciler([str(root)], [], NullIndex(64 * 1024), unmirrorable=counted)
    with caplog.at_level(logging.WARNING):
        ops = [op for op in rec.reconcile(0, "", How.SCAN) if op is not None]
    paths = {op.path for op in ops}
    assert AT_BOUND in paths and "ok" in paths and PAST_BOUND not in paths
    assert all(len(p.encode()) < PATH_MAX for p in paths)
    assert counted.paths == 1 and counted.last is not None
    assert f"is {PATH_MAX} bytes long" in counted.last["reason"]
    warned = [r for r in caplog.records if "not mirrored" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "4095 bytes below its tree root" in warned[0].getMessage()
    # A rescan does not count (or warn about) the same path again.
    list(rec.reconcile(0, "", How.SCAN))
    assert counted.paths == 1
    # The one-path form refuses it the same way, without a traceback.
    assert [op for op in rec.reconcile(0, PAST_BOUND, How.CONTENT) if op] == []


def test_a_deep_path_moves_into_quarantine_by_descriptors(deep_tmp: Path) -> None:
    root = deep_tmp / "replica"
    root.mkdir()
    rel = DEEP + "/f"
    deep_tree(root, rel, b"orphan")
    moved = quarantine_path(root, 0, rel, deep_tmp / "q" / "resync-1")
    assert moved is not None
    assert read_at(deep_tmp / "q" / "resync-1", "0/" + rel) == b"orphan"
    with lookup(root, rel) as found:
        assert found is None
    # A whole deep directory too.
    deep_tree(root, rel, b"again")
    assert quarantine_path(root, 0, "d", deep_tmp / "q" / "resync-2") is not None
    assert not (root / "d").exists()
    assert read_at(deep_tmp / "q" / "resync-2", "0/" + rel) == b"again"
    assert stat.S_IMODE((deep_tmp / "q").stat().st_mode) == 0o700


def test_quarantine_across_file_systems_copies_by_descriptors(tmp_path: Path) -> None:
    """The state directory (quarantine) is often not the replica's file
    system: rename fails with EXDEV and the entry is copied, then removed."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's tmp_path")
    root = tmp_path / "replica"
    root.mkdir()
    rel = "/".join(["d"] * 1100) + "/f"  # deeper than shutil.copytree could go
    deep_tree(root, rel, b"far")
    (root / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "suid", 0o4755)
    os.symlink("target", root / "d" / "link")
    q = Path(tempfile.mkdtemp(dir=shm))
    try:
        assert quarantine_path(root, 0, "d", q / "resync-1") is not None
        assert quarantine_path(root, 0, "suid", q / "resync-1") is not None
        assert not (root / "d").exists() and not (root / "suid").exists()
        assert read_at(q / "resync-1", "0/" + rel) == b"far"
        assert os.readlink(q / "resync-1" / "0" / "d" / "link") == "target"
        assert stat.S_IMODE((q / "resync-1" / "0" / "suid").stat().st_mode) == 0o755
    finally:
        remove_all(q)


def test_a_rename_that_would_push_paths_past_the_bound_is_not_replayed_as_a_rename(
        deep_tmp: Path) -> None:
    """Renaming a directory to a longer name can make what is below it too
    long for a record: capture sends a removal and a scan instead (which
    skips and counts the path that no longer fits), never a RENAME the
    replicas would follow into paths no record can name."""
    src = deep_tmp / "src"
    src.mkdir()
    chain = ["n" * 255] * 15
    deep_tree(src, "/".join(["s", *chain, "f"]), b"x")  # 3,843 bytes: fits
    ops: list[Op] = []

    async def emit(batch: list[Op]) -> None:
        ops.extend(batch)

    async def main() -> None:
        cap = WatchCapture([src], [], deep_tmp / "state" / "index.db", 4096, debounce=0.05)
        task = asyncio.create_task(cap.run(emit))
        try:
            while not any(op.kind is OpKind.MARK for op in ops):
                await asyncio.sleep(0.02)
            assert any(op.path.endswith("/f") for op in ops)
            ops.clear()
            os.rename(src / "s", src / ("t" * 255))  # f would be 4,097 bytes
            for _ in range(500):
                if cap.unmirrorable.paths:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # whatever else that change brings
        finally:
            await cap.stop()
            await task
        assert cap.unmirrorable.paths == 1
        assert not [op for op in ops if op.kind is OpKind.RENAME]
        assert ("s", OpKind.RMDIR) in [(op.path, op.kind) for op in ops]
        assert all(len(op.path.encode()) < PATH_MAX for op in ops)
        assert any(op.kind is OpKind.MKDIR and op.path.startswith("t" * 255) for op in ops)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_capture_never_batches_an_op_a_replica_would_refuse(tmp_path: Path) -> None:
    """The last guard before logging (whatever produced the op: a removal of
    an indexed path, a rename): an op whose path or target fails the
    sanitiser is dropped and counted, the others are kept."""
    cap = WatchCapture([tmp_path], [], tmp_path / "index.db")
    cap._append(Op(OpKind.UNLINK, 0, PAST_BOUND))
    cap._append(Op(OpKind.RENAME, 0, "a", target=PAST_BOUND))
    cap._append(Op(OpKind.UNLINK, 0, AT_BOUND))
    assert [op.path for op in cap._batch] == [AT_BOUND]
    assert cap.unmirrorable.paths == 1  # one path, refused twice
