"""Fuzzing the applier's path handling (hypothesis): random records whose
paths mix ``..``, ``.``, empty and absolute components, NUL bytes, names at
and past NAME_MAX, depths at and past the path bounds, and symlinks inside
the replica pointing out of it. Every record either applies inside the
replica root or is refused with the applier's own error
(:class:`RecordFailed`); nothing else is raised, and nothing appears or
changes outside the root."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirrorkit.agent.apply.applier import Applier, RecordFailed
from mirrorkit.agent.log.records import Op, OpKind, Record
from mirrorkit.agent.util.fs import NAME_MAX, PATH_MAX
from mirrorkit.agent.util.walk import remove_tree

_NAMES = st.sampled_from([
    "a", "b", "d", "..", ".", "", "out", "rel", "x\0y", "\0", "é",
    "n" * NAME_MAX, "n" * (NAME_MAX + 1), "..a", "a..", " ", "\n",
])


@st.composite
def paths(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 29))
    if kind == 0:  # deep: at, just under or just past the byte bound
        depth = draw(st.sampled_from([1200, PATH_MAX // 2 - 1, PATH_MAX // 2]))
        return "/".join(["d"] * depth) + draw(st.sampled_from(["/f", "/ff", ""]))
    parts = draw(st.lists(_NAMES, min_size=1, max_size=6))
    path = "/".join(parts)
    if kind == 1:
        path = "/" + path
    return path


_KINDS = [OpKind.WRITE, OpKind.CREATE, OpKind.MKDIR, OpKind.SYMLINK, OpKind.RENAME,
          OpKind.UNLINK, OpKind.RMDIR, OpKind.CHMOD, OpKind.UTIME, OpKind.TRUNCATE]


@st.composite
def ops(draw: st.DrawFn) -> Op:
    kind = draw(st.sampled_from(_KINDS))
    tree = draw(st.sampled_from([0, 0, 0, 1]))
    path = draw(paths())
    if kind is OpKind.RENAME:
        return Op(kind, tree, path, target=draw(paths()))
    if kind is OpKind.SYMLINK:
        return Op(kind, tree, path, target=draw(st.sampled_from(
            ["../outside", "/", "../../outside/f", "a", ""])) or "t")
    if kind in (OpKind.CREATE, OpKind.MKDIR, OpKind.CHMOD):
        return Op(kind, tree, path, value=draw(st.sampled_from([0o644, 0o755, 0o4755, 0o1777])))
    if kind is OpKind.WRITE:
        return Op(kind, tree, path, value=draw(st.integers(0, 4096)), data=b"evil")
    return Op(kind, tree, path, value=draw(st.integers(0, 4096)))


def _listing(top: Path) -> list[tuple[str, int, int]]:
    """Every entry below ``top`` with its mode and size (shallow trees only)."""
    out = []
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            st_ = os.lstat(os.path.join(dirpath, name))
            out.append((os.path.join(dirpath, name), st_.st_mode, st_.st_size))
    return sorted(out)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    shm = Path("/dev/shm")
    top = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else None))
    yield top
    fd = os.open(top.parent, os.O_RDONLY)
    try:
        remove_tree(fd, top.name)
    finally:
        os.close(fd)


@pytest.mark.fuzz
# An example builds a replica and syncs it per record: a quarter of the
# profile's count (50 in make test's ci profile, 5,000 in make fuzz).
@settings(max_examples=max(1, settings.default.max_examples // 4))
@given(st.lists(ops(), min_size=1, max_size=8))
def test_every_record_applies_inside_the_root_or_is_refused(scratch: Path,
                                                             batch: list[Op]) -> None:
    case = Path(tempfile.mkdtemp(dir=scratch))
    root, outside = case / "replica", case / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"secret")
    root.mkdir()
    os.symlink(str(outside), root / "out")  # escapes inside the replica
    os.symlink("../outside", root / "rel")
    before = _listing(outside)
    applier = Applier([root])
    try:
        for i, op in enumerate(batch):
            try:
                applier.apply_batch([Record(i + 1, 1, op)])
            except RecordFailed as exc:
                assert exc.lsn == i + 1 and str(exc)
    finally:
        applier.close()
    assert sorted(os.listdir(case)) == ["outside", "replica"]
    assert _listing(outside) == before
    assert (outside / "f").read_bytes() == b"secret"
    fd = os.open(scratch, os.O_RDONLY)
    try:
        remove_tree(fd, case.name)
    finally:
        os.close(fd)
