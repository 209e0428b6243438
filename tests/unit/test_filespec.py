"""Exclude patterns."""

from __future__ import annotations

import pytest

from mirrorkit.agent.capture.filespec import excluder, is_excluded


@pytest.mark.parametrize(
    ("path", "patterns", "excluded"),
    [
        ("a.tmp", ["*.tmp"], True),
        ("x/y/b.tmp", ["*.tmp"], True),
        ("x/y/b.tmpl", ["*.tmp"], False),
        ("d.tmp/inside", ["*.tmp"], True),  # a matching directory takes its contents
        ("cache", ["cache/**"], True),
        ("cache/a/b", ["cache/**"], True),
        ("sub/cache/a", ["cache/**"], False),  # anchored: only the top-level cache
        ("sub/cache/a", ["**/cache/**"], True),
        ("cachet", ["cache/**"], False),
        ("logs/a.log", ["logs/*.log"], True),
        ("logs/old/a.log", ["logs/*.log"], False),  # '*' does not cross '/'
        ("logs/old/a.log", ["logs/**/*.log"], True),
        ("logs/a.log", ["logs/**/*.log"], True),  # '**/' is zero or more directories
        ("a/b", ["/a"], True),  # leading '/' anchors
        ("x/a", ["/a"], False),
        ("x/a", ["a"], True),  # no '/': any depth
        ("tmp", ["tmp/"], True),
        ("f1", ["f?"], True),
        ("f12", ["f?"], False),
        ("fa", ["f[abc]"], True),
        ("fd", ["f[!abc]"], True),
        ("fa", ["f[!abc]"], False),
        ("x/f[", ["x/f["], True),  # unclosed class is a literal
        ("File.TMP", ["*.tmp"], False),  # case-sensitive
        ("", ["*"], False),  # the root is never excluded
        ("anything", [], False),
        ("anything", [""], False),
        ("na\udcffme.tmp", ["*.tmp"], True),  # undecodable bytes survive
    ],
)
def test_is_excluded(path: str, patterns: list[str], excluded: bool) -> None:
    assert is_excluded(path, patterns) is excluded


def test_excluder_is_the_walkers_skip() -> None:
    assert excluder([]) is None
    skip = excluder(["*.tmp"])
    assert skip is not None and skip("x/a.tmp") and not skip("x/a")
