"""The one path sanitiser (util.fs.safe_parts): every hostile case once, and
every caller refusing through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorkit.agent.apply.applier import Applier, RecordFailed
from mirrorkit.agent.log.records import Op, OpKind, Record
from mirrorkit.agent.resync.compare import quarantine_path
from mirrorkit.agent.util.fs import NAME_MAX, PATH_MAX, UnsafePath, open_dir_nofollow, safe_parts
from mirrorkit.agent.verify.manifest import ManifestError, manifest_entry
from mirrorkit.agent.verify.repair import locate


@pytest.mark.parametrize(("path", "says"), [
    ("", "empty path"),
    ("/etc/passwd", "absolute path"),
    ("a\0b", "NUL byte"),
    ("a//b", "empty component"),
    ("a/", "empty component"),
    ("./a", "'.' component"),
    ("..", "'..' component"),
    ("a/../../etc", "'..' component"),
    ("x" * (NAME_MAX + 1), f"name of {NAME_MAX + 1} bytes"),
    ("é" * 128, "name of 256 bytes"),  # bytes, not characters
    ("d/" * (PATH_MAX // 2 - 1) + "ff", f"{PATH_MAX} bytes long"),
    ("a\ud800", "unpaired surrogate"),
])
def test_hostile_paths_are_refused_saying_why(path: str, says: str) -> None:
    with pytest.raises(UnsafePath, match=says):
        safe_parts(path)


def test_safe_paths_give_their_parts() -> None:
    assert safe_parts("a/b c/d.txt") == ("a", "b c", "d.txt")
    assert safe_parts("na\udcffme") == ("na\udcffme",)  # undecodable bytes survive
    assert safe_parts("..a/b..") == ("..a", "b..")
    assert safe_parts("", allow_root=True) == ()
    assert safe_parts("x" * NAME_MAX)
    longest = "d/" * (PATH_MAX // 2 - 1) + "f"  # PATH_MAX - 1 bytes
    assert len(longest) == PATH_MAX - 1 and safe_parts(longest)


def test_long_paths_are_shortened_in_the_message() -> None:
    with pytest.raises(UnsafePath) as info:
        safe_parts("/" + "x" * 5000)
    assert len(str(info.value)) < 120


def test_every_caller_refuses_through_it(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (outside / "secret").write_text("s")
    for bad in ("../outside/secret", "a//b"):
        with pytest.raises(UnsafePath):
            quarantine_path(root, 0, bad, tmp_path / "q")
        with pytest.raises(UnsafePath):
            open_dir_nofollow(root, bad)
        with pytest.raises(ManifestError, match="refused path"):
            manifest_entry(str(root), 0, bad, [])
        applier = Applier([root])
        with pytest.raises(RecordFailed) as info:
            applier.apply_batch([Record(1, 1, Op(OpKind.UNLINK, 0, bad))])
        assert info.value.refused and applier.refused == 1
        applier.close()
    assert (outside / "secret").exists()
    for bad in ("a\0b", "x" * (NAME_MAX + 1)):  # ".." and "//" are normalised away first
        assert locate(f"{root}/{bad}", [str(root)]) is None
