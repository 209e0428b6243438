"""Apply: each op kind, durability hooks, and refusal of paths escaping the root."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from mirrorkit.agent.apply.applier import Applier, RecordFailed
from mirrorkit.agent.log.records import Op, OpKind, Record


@pytest.fixture
def env(tmp_path: Path) -> tuple[Applier, Path, Path]:
    root = tmp_path / "replica"
    outside = tmp_path / "outside"
    outside.mkdir()
    return Applier([root]), root, outside


def apply(a: Applier, *ops: Op) -> None:
    a.apply_batch([Record(i + 1, 1, op) for i, op in enumerate(ops)])


def refused(a: Applier, *ops: Op) -> RecordFailed:
    """Apply ``ops``; the batch must stop at a refused record."""
    with pytest.raises(RecordFailed) as info:
        apply(a, *ops)
    assert info.value.refused
    return info.value


def test_create_write_truncate(env: tuple[Applier, Path, Path]) -> None:
    a, root, _ = env
    apply(a, Op(OpKind.MKDIR, 0, "d", value=0o750),
          Op(OpKind.CREATE, 0, "d/f", value=0o640),
          Op(OpKind.WRITE, 0, "d/f", value=0, data=b"hello world"),
          Op(OpKind.WRITE, 0, "d/f", value=6, data=b"WORLD"))
    assert (root / "d/f").read_bytes() == b"hello WORLD"
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "d/f").stat().st_mode) == 0o640
    apply(a, Op(OpKind.TRUNCATE, 0, "d/f", value=5))
    assert (root / "d/f").read_bytes() == b"hello"
    apply(a, Op(OpKind.CREATE, 0, "d/f", value=0o600))
    assert (root / "d/f").read_bytes() == b""


def test_write_creates_missing_parents(env: tuple[Applier, Path, Path]) -> None:
    a, root, _ = env
    apply(a, Op(OpKind.WRITE, 0, "x/y/z", value=3, data=b"abc"))
    assert (root / "x/y/z").read_bytes() == b"\0\0\0abc"


def test_rename_unlink_rmdir(env: tuple[Applier, Path, Path]) -> None:
    a, root, _ = env
    lsns: list[int] = []
    a.checkpoint = lsns.append
    apply(a, Op(OpKind.WRITE, 0, "a", data=b"1"), Op(OpKind.WRITE, 0, "b", data=b"2"),
          Op(OpKind.RENAME, 0, "a", target="b"))
    assert (root / "b").read_bytes() == b"1" and not (root / "a").exists()
    assert lsns == [3]  # a RENAME is checkpointed so it is never replayed
    apply(a, Op(OpKind.MKDIR, 0, "d", value=0o755), Op(OpKind.WRITE, 0, "d/e/f", data=b"x"),
          Op(OpKind.RENAME, 0, "d", target="d2"))
    assert (root / "d2/e/f").read_bytes() == b"x"
    apply(a, Op(OpKind.UNLINK, 0, "b"), Op(OpKind.RMDIR, 0, "d2"),
          Op(OpKind.UNLINK, 0, "absent"), Op(OpKind.RMDIR, 0, "absent"))
    assert sorted(os.listdir(root)) == []


def test_rename_of_absent_source_is_a_noop(env: tuple[Applier, Path, Path]) -> None:
    a, root, _ = env
    apply(a, Op(OpKind.WRITE, 0, "b", data=b"keep"), Op(OpKind.RENAME, 0, "a", target="b"))
    assert (root / "b").read_bytes() == b"keep"


def test_rename_replaces_directory_target(env: tuple[Applier, Path, Path]) -> None:
    a, root, _ = env
    apply(a, Op(OpKind.WRITE, 0, "t/old", data=b"o"), Op(OpKind.WRITE, 0, "s/new", data=b"n"),
          Op(OpKind.RENAME, 0, "s", target="t"))
    assert os.listdir(root / "t") == ["new"] and not (root / "s").exists()


def test_symlink_chmod_utime(env: tuple[Applier, Path, Path]) -> None:
    a, root, _ = env
    ns = 1_600_000_000_123_456_789
    apply(a, Op(OpKind.WRITE, 0, "f", data=b"x"),
          Op(OpKind.SYMLINK, 0, "l", target="/etc/passwd"),
          Op(OpKind.CHMOD, 0, "f", value=0o604),
          Op(OpKind.UTIME, 0, "f", value=ns),
          Op(OpKind.UTIME, 0, "l", value=ns),
          Op(OpKind.CHMOD, 0, "l", value=0o777))  # a symlink's mode: ignored
    assert os.readlink(root / "l") == "/etc/passwd"
    assert stat.S_IMODE((root / "f").stat().st_mode) == 0o604
    assert (root / "f").stat().st_mtime_ns == ns
    assert os.lstat(root / "l").st_mtime_ns == ns
    # replacing a file by a symlink and a symlink by a file
    apply(a, Op(OpKind.SYMLINK, 0, "f", target="l"), Op(OpKind.CREATE, 0, "l", value=0o644))
    assert os.readlink(root / "f") == "l"
    assert (root / "l").is_file() and not (root / "l").is_symlink()


def test_root_metadata_and_mark(env: tuple[Applier, Path, Path]) -> None:
    a, root, _ = env
    apply(a, Op(OpKind.CHMOD, 0, "", value=0o700), Op(OpKind.MARK, 0, "", target="scan-complete"))
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert a.refused == 0


@pytest.mark.parametrize("path", ["../x", "/etc/x", "a/../../x", "a/..", "x\0y"])
def test_escaping_paths_are_refused(env: tuple[Applier, Path, Path], path: str) -> None:
    a, root, outside = env
    before = sorted(os.listdir(root.parent))
    exc = refused(a, Op(OpKind.WRITE, 0, "first", data=b"1"),
                  Op(OpKind.WRITE, 0, path, data=b"evil"), Op(OpKind.WRITE, 0, "ok", data=b"2"))
    assert a.refused == 1 and exc.lsn == 2 and "REFUSED record LSN 2 (WRITE" in str(exc)
    assert (root / "first").read_bytes() == b"1"  # what came before is applied
    assert not (root / "ok").exists()  # nothing after it: never skipped past
    assert sorted(os.listdir(root.parent)) == before
    assert os.listdir(outside) == []


def test_symlinked_directory_pointing_out_is_refused(env: tuple[Applier, Path, Path]) -> None:
    a, root, outside = env
    mode = outside.stat().st_mode
    apply(a, Op(OpKind.SYMLINK, 0, "out", target=str(outside)))
    for op in (Op(OpKind.WRITE, 0, "out/f", data=b"evil"),
               Op(OpKind.CREATE, 0, "out/f", value=0o644),
               Op(OpKind.MKDIR, 0, "out/d", value=0o755),
               Op(OpKind.SYMLINK, 0, "out/l", target="/"),
               Op(OpKind.RENAME, 0, "ok", target="out/f")):
        refused(a, Op(OpKind.WRITE, 0, "ok", data=b"x"), op)
    apply(a, Op(OpKind.CHMOD, 0, "out", value=0o777))
    assert os.listdir(outside) == []
    assert a.refused == 5  # CHMOD on the symlink itself is a harmless no-op
    assert outside.stat().st_mode == mode  # never chmod'ed through the link
    assert (root / "out").is_symlink()


def test_rename_target_escaping_is_refused(env: tuple[Applier, Path, Path]) -> None:
    a, root, outside = env
    refused(a, Op(OpKind.WRITE, 0, "f", data=b"x"),
            Op(OpKind.RENAME, 0, "f", target="../outside/f"))
    assert a.refused == 1 and (root / "f").exists() and os.listdir(outside) == []


def test_unknown_tree_is_refused(env: tuple[Applier, Path, Path]) -> None:
    a, _, _ = env
    refused(a, Op(OpKind.WRITE, 3, "f", data=b"x"))
    assert a.refused == 1


def test_unlink_of_root_is_refused(env: tuple[Applier, Path, Path]) -> None:
    a, root, _ = env
    refused(a, Op(OpKind.RMDIR, 0, "."))
    refused(a, Op(OpKind.UNLINK, 0, ""))
    assert a.refused == 2 and root.is_dir()


@pytest.mark.parametrize("path", ["a//b", "./a", "a/", "a/./b", "x" * 256, "d/" * 2048 + "f"])
def test_non_canonical_or_too_long_paths_are_refused(env: tuple[Applier, Path, Path],
                                                     path: str) -> None:
    """One spelling per path (util.fs.safe_parts): no alias of another entry."""
    a, root, _ = env
    apply(a, Op(OpKind.MKDIR, 0, "ok", value=0o755))
    refused(a, Op(OpKind.CREATE, 0, path, value=0o644))
    assert a.refused == 1 and os.listdir(root) == ["ok"]


def test_conflicting_record_stops_the_batch_and_is_never_skipped(
        env: tuple[Applier, Path, Path]) -> None:
    a, root, _ = env
    with pytest.raises(RecordFailed) as info:
        apply(a, Op(OpKind.MKDIR, 0, "d", value=0o755),
              Op(OpKind.RENAME, 0, "d", target="d/inside"),  # EINVAL: into itself
              Op(OpKind.WRITE, 0, "after", data=b"x"))
    exc = info.value
    assert not exc.refused and exc.lsn == 2 and a.conflicts == 1
    assert "cannot apply record LSN 2 (RENAME 'd' -> 'd/inside')" in str(exc)
    assert (root / "d").is_dir() and not (root / "after").exists()


def test_a_fifo_where_the_primary_has_a_file_is_a_conflict_not_a_hang(
        env: tuple[Applier, Path, Path]) -> None:
    a, root, _ = env
    root.mkdir(exist_ok=True)
    os.mkfifo(root / "f")
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            apply(a, Op(OpKind.WRITE, 0, "f", data=b"x"))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the applier blocked opening a fifo"
    assert isinstance(outcome[0], RecordFailed) and not outcome[0].refused
