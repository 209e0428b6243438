"""Apply of the mount capture's record kinds (issue 9): LINK, CHOWN, xattrs,
FALLOCATE — replay-safe, confined, and withheld on reporting copies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirrorkit.agent.apply.applier import Applier, RecordFailed
from mirrorkit.agent.log.records import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    Op,
    OpKind,
    Record,
    decode_record,
    encode_record,
    pack_fallocate,
    pack_owner,
    unpack_owner,
)


def apply(root: Path, *ops: Op, read_only: bool = False, checkpoints: list[int] | None = None
          ) -> None:
    a = Applier([root], checkpoint=(checkpoints.append if checkpoints is not None else None),
                read_only=read_only)
    try:
        a.apply_batch([Record(i + 1, 1, op) for i, op in enumerate(ops)])
    finally:
        a.close()


@pytest.mark.parametrize(("uid", "gid"), [(0, 0), (65534, 65534), (2**31, 7),
                                          (2**32 - 1, 2**32 - 1)])
def test_owner_packing_round_trips_the_full_u32_range(uid: int, gid: int) -> None:
    value = pack_owner(uid, gid)
    assert unpack_owner(value) == (uid, gid)
    rec, _ = decode_record(encode_record(Record(1, 1, Op(OpKind.CHOWN, 0, "f", value=value))))
    assert unpack_owner(rec.op.value) == (uid, gid)


def test_link_is_one_inode_and_replays_harmlessly(tmp_path: Path) -> None:
    ops = (Op(OpKind.CREATE, 0, "a", value=0o644), Op(OpKind.WRITE, 0, "a", data=b"hi"),
           Op(OpKind.LINK, 0, "b", target="a"))
    checkpoints: list[int] = []
    apply(tmp_path, *ops, checkpoints=checkpoints)
    apply(tmp_path, ops[2])  # replayed after a crash
    assert (tmp_path / "a").stat().st_ino == (tmp_path / "b").stat().st_ino
    assert checkpoints == [3]  # never replayed past a checkpoint


def test_link_of_a_directory_or_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(RecordFailed, match="not a regular file"):
        apply(tmp_path, Op(OpKind.LINK, 0, "x", target="d"))
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink(outside, tmp_path / "link")
    with pytest.raises(RecordFailed):
        apply(tmp_path, Op(OpKind.LINK, 0, "y", target="link/secret"))
    assert not (tmp_path / "y").exists()


def test_chown_and_xattrs_apply_but_not_on_a_reporting_copy(tmp_path: Path) -> None:
    ops = (Op(OpKind.CREATE, 0, "f", value=0o644),
           Op(OpKind.CHOWN, 0, "f", value=pack_owner(1000, 1001)),
           Op(OpKind.SETXATTR, 0, "f", target="user.a", data=b"1"),
           Op(OpKind.SETXATTR, 0, "f", target="trusted.t", data=b"2"),
           Op(OpKind.REMOVEXATTR, 0, "f", target="user.absent"))
    backup, report = tmp_path / "backup", tmp_path / "report"
    apply(backup, *ops)
    apply(report, *ops, read_only=True)
    st = (backup / "f").stat()
    assert (st.st_uid, st.st_gid) == (1000, 1001)
    assert os.getxattr(backup / "f", "trusted.t") == b"2"
    assert (report / "f").stat().st_uid == 0
    assert os.listxattr(report / "f") == ["user.a"]


def test_a_bad_xattr_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecordFailed, match="REFUSED"):
        apply(tmp_path, Op(OpKind.CREATE, 0, "f"),
              Op(OpKind.SETXATTR, 0, "f", target="bogus.name", data=b""))


def test_fallocate_punches_holes_and_refuses_modes_it_cannot_replay(tmp_path: Path) -> None:
    apply(tmp_path, Op(OpKind.CREATE, 0, "f"), Op(OpKind.WRITE, 0, "f", data=b"x" * 100_000),
          Op(OpKind.FALLOCATE, 0, "f", value=8192,
             data=pack_fallocate(16384, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)))
    body = (tmp_path / "f").read_bytes()
    assert len(body) == 100_000 and body[8192:8192 + 16384] == bytes(16384)
    with pytest.raises(RecordFailed, match="cannot be replayed"):
        apply(tmp_path, Op(OpKind.FALLOCATE, 0, "f", data=pack_fallocate(10, 0x08)))  # collapse


def test_rename_noreplace_refuses_to_replace_and_renames_otherwise(tmp_path: Path) -> None:
    from mirrorkit.agent.util.fs import rename_noreplace

    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            rename_noreplace(fd, "a", fd, "b")
        assert (tmp_path / "b").read_text() == "b"
        rename_noreplace(fd, "a", fd, "c")
    finally:
        os.close(fd)
    assert (tmp_path / "c").read_text() == "a" and not (tmp_path / "a").exists()
