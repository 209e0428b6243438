"""The one path sanitiser (util.fs.safe_parts): every hostile case once."""

from __future__ import annotations

import pytest

from mirrorkit.agent.util.fs import NAME_MAX, PATH_MAX, UnsafePath, safe_parts


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
