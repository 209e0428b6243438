"""Undoing a receiver's divergent tail (docs/architecture.md, "Divergence").

When a member connects, it and the primary compare term histories
(:func:`mirrorkit.agent.log.terms.last_shared`). Whatever the member's log
holds past the last shared LSN was never received by the current primary: a
former primary's writes in its old term, or records a backup received from
it. Nothing of it is kept silently and nothing dropped silently:

1. every path those records touched is moved, as it is now on the member,
   into ``<state_dir>/<mirror>/quarantine/diverged-<time>-<lsn>/<tree>/<path>``
   (a directory only when the tail created it; a pre-existing directory's
   mode change is left for the resync), and ``REPORT.txt`` there lists the
   files, the LSN range, the terms, the primary and the time;
2. the member's log restarts after the shared LSN, its term history forgets
   the later terms, and its applied LSN goes back to the shared one;
3. the primary, which found the same point from the member's HELLO, then
   brings every path back to its own version by a checksum difference resync.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mirrorkit.agent.log.records import OpKind, Record
from mirrorkit.agent.log.segments import MirrorLog
from mirrorkit.agent.log.terms import TermHistory
from mirrorkit.agent.resync.compare import quarantine_dir, quarantine_path
from mirrorkit.agent.util.fs import UnsafePath, safe_parts
from mirrorkit.agent.util.walk import DIR, lookup

__all__ = ["DivergenceUnknown", "Undone", "undo_divergent_tail"]

log = logging.getLogger(__name__)

MAX_TOUCHED = 200_000  # distinct paths one undo may move (memory bound)


class DivergenceUnknown(Exception):
    """The divergent tail is no longer (all) in the log: what it changed
    cannot be told. The mirror stops on this member; the message says how to
    recover."""


@dataclass
class Undone:
    shared: int
    first: int
    last: int
    terms: list[int] = field(default_factory=list)
    moved: list[tuple[int, str, str, str]] = field(default_factory=list)  # tree, path, ops, to
    report: Path | None = None


def _touched(mirror_log: MirrorLog, first: int, last: int
             ) -> tuple[dict[tuple[int, str], set[str]], set[int]]:
    touched: dict[tuple[int, str], set[str]] = {}
    terms: set[int] = set()
    lsn = first
    while lsn <= last:
        batch: Sequence[Record] = mirror_log.read(lsn)
        if not batch:
            break
        for record in batch:
            op = record.op
            terms.add(record.term)
            if op.kind is OpKind.MARK:
                continue
            paths = [op.path, op.target] if op.kind is OpKind.RENAME else [op.path]
            for path in paths:
                touched.setdefault((op.tree, path), set()).add(op.kind.name)
            if len(touched) > MAX_TOUCHED:
                raise DivergenceUnknown(f"the divergent tail touches more than {MAX_TOUCHED} "
                                        f"paths; move the replica aside and resync")
        lsn = batch[-1].lsn + 1
    return touched, terms


def _should_move(root: Path, path: str, ops: set[str]) -> bool:
    try:
        safe_parts(path)
    except UnsafePath:
        return False  # never applied (refused): nothing of it is on disk
    # By descriptors (util.walk.lookup): a path deeper than an absolute path
    # may be spelt is found like any other, and no symlink is followed.
    with lookup(root, path) as found:
        if found is None:
            return False  # gone (or never there): the resync brings the primary's back
        if found.kind == DIR:
            return "MKDIR" in ops or "RENAME" in ops
    return True


def undo_divergent_tail(mirror_log: MirrorLog, history: TermHistory, roots: Sequence[Path],
                        quarantine: Path, shared: int, primary: str, label: str) -> Undone:
    """Quarantine what the log holds past ``shared`` and cut the log there.
    Runs in a worker thread. Raises :class:`DivergenceUnknown`."""
    last = mirror_log.last_lsn
    first = shared + 1
    if mirror_log.first_lsn > first:
        raise DivergenceUnknown(
            f"this member's log diverged from {primary}'s after LSN {shared}, but it only "
            f"holds LSN {mirror_log.first_lsn}..{last}: the changes of LSN {first}.."
            f"{mirror_log.first_lsn - 1} cannot be identified. Move the replica and "
            f"{mirror_log.directory} aside and restart the agent to resync from scratch")
    touched, terms = _touched(mirror_log, first, last)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = quarantine / f"diverged-{stamp}-{shared}"
    undone = Undone(shared, first, last, sorted(terms))
    for (tree, path), ops in sorted(touched.items()):
        if tree >= len(roots):
            continue
        kinds = ",".join(sorted(ops))
        moved = None
        if _should_move(roots[tree], path, ops):
            moved = quarantine_path(roots[tree], tree, path, dest)
        undone.moved.append((tree, path, kinds, str(moved) if moved else "-"))
    quarantine_dir(dest)
    undone.report = dest / "REPORT.txt"
    _write_report(undone, primary)
    mirror_log.reset(first)
    history.truncate_after(shared)
    log.warning("%s: divergent tail LSN %d..%d (terms %s) was never received by the primary "
                "%s: %d path(s) moved to %s; the primary resyncs them", label, first, last,
                ",".join(map(str, undone.terms)), primary,
                sum(1 for m in undone.moved if m[3] != "-"), dest)
    return undone


def _write_report(u: Undone, primary: str) -> None:
    assert u.report is not None
    lines = [
        "# mirrorkit divergent tail: changes the current primary never received",
        f"# time\t{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"# primary\t{primary}",
        f"# shared up to LSN\t{u.shared}",
        f"# undone LSN range\t{u.first}..{u.last}",
        f"# terms of those records\t{','.join(map(str, u.terms))}",
        "# tree\tpath\tops in the tail\tmoved to ('-': nothing there now; the primary's "
        "version comes back by resync)",
    ]
    lines += [f"{tree}\t{path}\t{ops}\t{to}" for tree, path, ops, to in u.moved]
    u.report.write_text("\n".join(lines) + "\n", encoding="utf-8")
