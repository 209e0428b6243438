"""Repair: the primary re-sends chosen paths, in full, through its mirror log.

``POST /repair?mirror=M`` (body ``{"paths": ["/abs/path", ...]}``) on the
primary's root-only control socket ends here. Each path is turned into the
ops that set its whole state absolutely, whatever the replica holds now:

* regular file: ``CREATE`` (empties it, sets the mode), every block as
  ``WRITE``, ``UTIME``;
* directory: ``MKDIR`` (replaces a non-directory, sets the mode); its
  contents are not re-sent (verify lists each differing path itself);
* symlink: ``SYMLINK`` (replaces whatever is there).

The ops go through the running primary's ``emit`` (durable in its log, then
shipped to every member in LSN order), so a repair reaches every member the
same way any change does and survives restarts. Paths are re-sent parents
first. A path no longer on the primary, excluded, or outside the mirror's
trees is not touched and is reported. Orphans (replica-only files) are never
touched here.

Capture emits into the same log: a repair holds the primary's ``emit_lock``
for all of its batches (``PrimaryMirror.emit_held``) so capture's ops never
interleave with a half-sent file.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mirrorkit.agent.capture.filespec import is_excluded
from mirrorkit.agent.capture.reconcile import diff_file
from mirrorkit.agent.log.records import Op, OpKind
from mirrorkit.agent.util.fs import UnsafePath, safe_parts
from mirrorkit.agent.util.walk import DIR, LINK, WalkEntry, lookup

if TYPE_CHECKING:
    from mirrorkit.agent.stream.sender import PrimaryMirror

__all__ = ["RepairResult", "locate", "repair_ops", "resend"]

BATCH_BYTES = 4 << 20


@dataclass
class RepairResult:
    resent: list[str] = field(default_factory=list)
    not_on_primary: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    ops: int = 0
    lsn: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"resent": self.resent, "not_on_primary": self.not_on_primary,
                "refused": self.refused, "ops": self.ops, "lsn": self.lsn}


def locate(path: str, roots: Sequence[str]) -> tuple[int, str] | None:
    """(tree, relative path) of absolute ``path`` under one of ``roots``
    (normalised first: ``/srv/a/x/../y`` is ``y`` of ``/srv/a``); None when
    it is under none of them, or its relative part fails
    :func:`~mirrorkit.agent.util.fs.safe_parts`."""
    norm = os.path.normpath(path)
    for tree, root in enumerate(roots):
        root = os.path.normpath(root)
        if norm.startswith(root + "/"):
            rel = norm[len(root) + 1:]
            try:
                safe_parts(rel)
            except UnsafePath:
                return None
            return tree, rel
    return None


def _path_ops(found: WalkEntry) -> Iterator[Op]:
    """Full-state ops of one path, read from its parent's descriptor (the
    walker's :func:`~mirrorkit.agent.util.walk.lookup`: never through a
    symlink)."""
    assert found.st is not None
    tree, rel = found.tree, found.rel
    if found.kind == DIR:
        yield Op(OpKind.MKDIR, tree, rel, value=stat.S_IMODE(found.st.st_mode))
    elif found.kind == LINK:
        yield Op(OpKind.SYMLINK, tree, rel, target=os.readlink(found.name, dir_fd=found.dir_fd))
    else:
        for op in diff_file(tree, rel, found.name, None, 64 * 1024, dir_fd=found.dir_fd):
            if op is not None:
                yield op


def repair_ops(roots: Sequence[str], exclude: Sequence[str], paths: Sequence[str],
               result: RepairResult) -> Iterator[Op]:
    """Ops re-sending ``paths`` (absolute, on the primary), parents first;
    fills ``result``'s path lists as it goes."""
    located: list[tuple[int, int, str, str]] = []
    for path in paths:
        where = locate(path, roots)
        if where is None or is_excluded(where[1], exclude):
            result.refused.append(path)
            continue
        located.append((where[0], where[1].count("/"), where[1], path))
    for tree, _, rel, path in sorted(set(located)):
        with lookup(roots[tree], rel, tree=tree) as found:
            if found is None:
                result.not_on_primary.append(path)
                continue
            result.resent.append(path)
            yield from _path_ops(found)


def _take(ops: Iterator[Op], limit: int) -> list[Op]:
    batch: list[Op] = []
    size = 0
    for op in ops:
        batch.append(op)
        size += len(op.data) + len(op.path) + len(op.target) + 32
        if size >= limit:
            break
    return batch


async def resend(primary: PrimaryMirror, roots: Sequence[str], exclude: Sequence[str],
                 paths: Sequence[str]) -> RepairResult:
    """Re-send ``paths`` through ``emit``; ``lsn`` in the result is the log
    position after the last repair op (wait for it before re-verifying)."""
    result = RepairResult()
    ops = repair_ops(roots, exclude, paths, result)
    async with primary.emit_lock:
        while batch := await asyncio.to_thread(_take, ops, BATCH_BYTES):
            result.ops += len(batch)
            await primary.emit_held(batch)
        result.lsn = primary.log.last_lsn
    return result
