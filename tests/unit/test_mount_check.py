"""The role's refusal to hide data under a mirror's FUSE mount
(roles/mirrorkit_agent/library/mirrorkit_mount_check.py): switching a watch
mirror whose path holds data to `capture: mount` names the manual move and
changes nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).parents[2]


def module() -> ModuleType:
    path = ROOT / "roles" / "mirrorkit_agent" / "library" / "mirrorkit_mount_check.py"
    spec = importlib.util.spec_from_file_location("mirrorkit_mount_check", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def mounts_file(tmp: Path, *lines: str) -> str:
    f = tmp / "mounts"
    f.write_text("".join(line + "\n" for line in lines))
    return str(f)


def test_absent_or_empty_paths_are_fine(tmp_path: Path) -> None:
    m, none = module(), mounts_file(tmp_path)
    point, back = tmp_path / "records", tmp_path / ".records.mirrorkit"
    assert m.check_one("records", str(point), str(back), none) == ("absent", "absent", None)
    point.mkdir()
    assert m.check_one("records", str(point), str(back), none) == ("empty", "absent", None)
    back.mkdir()
    (back / "kept").write_text("x")
    assert m.check_one("records", str(point), str(back), none) == ("empty", "data", None)


def test_a_path_with_data_is_refused_with_the_move_named(tmp_path: Path) -> None:
    m, none = module(), mounts_file(tmp_path)
    point, back = tmp_path / "records", tmp_path / ".records.mirrorkit"
    point.mkdir()
    (point / "db.sqlite").write_text("rows")
    state, backing, problem = m.check_one("records", str(point), str(back), none)
    assert (state, backing) == ("data", "absent")
    assert f"mv {point} {back}" in problem and "systemctl stop mirrorkit-agent" in problem
    assert "db.sqlite" in problem and "every member" in problem
    back.mkdir()  # an empty backing directory (an earlier run made it): rmdir first
    problem = m.check_one("records", str(point), str(back), none)[2]
    assert f"rmdir {back} && mv {point} {back}" in problem
    (back / "other").write_text("y")
    problem = m.check_one("records", str(point), str(back), none)[2]
    assert "both" in problem and "decide which one" in problem
    assert (point / "db.sqlite").read_text() == "rows"  # nothing moved


def test_our_mount_is_fine_and_a_foreign_one_is_refused(tmp_path: Path) -> None:
    m = module()
    point, back = tmp_path / "my records", tmp_path / ".records.mirrorkit"
    point.mkdir()
    (point / "seen-through-the-mount").write_text("x")
    escaped = str(point).replace(" ", "\\040")
    ours = mounts_file(tmp_path, f"mirrorkit-records {escaped} fuse.mirrorkit rw 0 0")
    assert m.check_one("records", str(point), str(back), ours) == ("mounted", "absent", None)
    disk = mounts_file(tmp_path, f"/dev/sdb1 {escaped} ext4 rw 0 0")
    state, _, problem = m.check_one("records", str(point), str(back), disk)
    assert state == "mounted" and "/dev/sdb1 (ext4)" in problem and "would mount over" in problem
    other = mounts_file(tmp_path, f"mirrorkit-orders {escaped} fuse.mirrorkit rw 0 0")
    assert m.check_one("records", str(point), str(back), other)[2] is not None


def test_files_where_directories_belong(tmp_path: Path) -> None:
    m, none = module(), mounts_file(tmp_path)
    point, back = tmp_path / "records", tmp_path / ".records.mirrorkit"
    point.write_text("a file")
    assert "is not a directory" in m.check_one("records", str(point), str(back), none)[2]
    point.unlink()
    back.write_text("a file")
    assert "must be a directory" in m.check_one("records", str(point), str(back), none)[2]
