"""Exclude patterns: which paths of a mirror tree are not mirrored.

One function, :func:`is_excluded`, used by capture, the full scan, resync and
verify (through :func:`excluder`, the tree walker's ``skip``), so that every
part agrees on what belongs to the mirror.

Pattern rules (paths are relative to the tree root, ``/``-separated):

* A pattern without ``/`` matches a single name at any depth: ``*.tmp``
  excludes ``a.tmp`` and ``x/y/b.tmp``; ``cache`` excludes every entry named
  ``cache``.
* A pattern containing ``/`` is anchored at the tree root (a leading ``/`` is
  allowed and means the same): ``logs/*.log`` matches ``logs/a.log`` but not
  ``logs/old/a.log`` — ``*`` and ``?`` never cross a ``/``, ``**`` does
  (``**/x`` is ``x`` in any directory, ``a/**/b`` has zero or more directories
  between).
* ``dir/**`` matches the directory ``dir`` at the root and everything below
  it; a trailing ``/`` alone (``tmp/``) is ignored (``tmp`` at any depth).
* Excluding a directory excludes everything below it: a path is excluded when
  it or any of its ancestors matches. This keeps the mirrored set closed
  under "parent exists", which apply relies on.
* ``[abc]``, ``[!abc]`` character classes as in :mod:`fnmatch`; matching is
  case-sensitive (Linux file names are).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Sequence

__all__ = ["excluder", "is_excluded"]


def _translate_anchored(pattern: str) -> str:
    """Glob with ``/``-aware ``*``, ``?`` and ``**`` to a regex."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < n and pattern[i] == "/":
                    out.append("(?:.*/)?")  # zero or more whole directories
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))  # unclosed: a literal '['
            else:
                body = pattern[i + 1 : j].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                elif body.startswith("^"):
                    body = "\\" + body
                out.append(f"(?!/)[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> Callable[[list[str]], bool] | None:
    p = pattern
    # Any '/' other than a trailing one anchors the pattern at the tree root.
    anchored = "/" in p.rstrip("/")
    p = p.strip("/")
    while p.endswith("/**"):
        p = p[:-3].rstrip("/")
    if not p or p == "**":
        # "" never matches; "**" or "/**" would exclude the whole tree, which
        # the inventory validation refuses; treat it as matching everything.
        return None if not p else (lambda parts: True)
    if "/" not in p and not anchored:
        return lambda parts: any(fnmatch.fnmatchcase(part, p) for part in parts)
    rx = re.compile(_translate_anchored(p), re.DOTALL)

    def match(parts: list[str]) -> bool:
        return any(rx.fullmatch("/".join(parts[: k + 1])) for k in range(len(parts)))

    return match


def is_excluded(relpath: str, patterns: Sequence[str]) -> bool:
    """True when ``relpath`` (relative to a tree root, canonical: ``a/b``, as
    the walker and :func:`~mirrorkit.agent.util.fs.safe_parts` give it) or
    one of its ancestor directories matches one of ``patterns``. The tree
    root itself (``""``) is never excluded."""
    if not patterns or not relpath:
        return False
    parts = relpath.split("/")
    for pattern in patterns:
        matcher = _compile(pattern)
        if matcher is not None and matcher(parts):
            return True
    return False


def excluder(patterns: Sequence[str]) -> Callable[[str], bool] | None:
    """``patterns`` as the walker's ``skip`` predicate (None: nothing excluded)."""
    if not patterns:
        return None
    frozen = tuple(patterns)
    return lambda relpath: is_excluded(relpath, frozen)
