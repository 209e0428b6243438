"""Difference resync: bring a replica to the primary's tree moving only what
differs, with the compare modes ``all``, ``different``, ``newer`` and
``checksum``.

Design (the receiver sends its manifest, the primary diffs): the receiver is
the only one that knows its replica, and the primary is the only one that
knows the truth, so the primary decides and ships exactly the ops that turn
the replica into its tree. Sending the manifest upstream costs one item per
path (plus 16 B per 64 KiB block in ``checksum`` mode, 1/4096 of the data);
the reverse design (primary's manifest down, requests up, data down) moves the
same hashes plus a request per file and a round trip. Conversation::

    primary  -> RESYNC_BEGIN(S, mode, keep_orphans, block_size)   S = last LSN
    receiver -> MANIFEST ... MANIFEST_END(n)      (replica is quiet meanwhile)
    primary  -> RECORDS (LSN 0) / RESYNC_PROGRESS ... RESYNC_END(S)
    primary  -> the log from S+1

The primary stores the manifest in a temporary sqlite index on disk
(``<state_dir>/<mirror>/resync-<member>.db``), so memory stays bounded for any
tree size, then walks its own trees with :class:`ResyncReconciler` (the
capture's reconciler with the manifest as the "replica index"). Its scan
starts after ``S``, so, as for the full resync, the snapshot is fuzzy but
every op sets state absolutely and the log tail from ``S+1`` replays every
change made since: the replica converges.

Compare modes (for regular files; directories and symlinks are always
compared by kind, mode and target):

* ``all``: every file is sent whole (the manifest still finds orphans);
* ``different``: sent whole when size or mtime differ, else only a CHMOD if
  the mode differs;
* ``newer``: sent whole when the primary's mtime is newer than the replica's;
* ``checksum``: the receiver sends per-block hashes; only differing blocks
  move (plus TRUNCATE/CHMOD/UTIME). The automatic catch-up uses this mode.

Orphans (on the replica only) and entries whose kind changed arrive as
``UNLINK``/``RMDIR`` records with LSN 0 whose ``target`` is ``orphan`` or
``replace``. The receiver never deletes them: it moves them to
``<state_dir>/<mirror>/quarantine/resync-<time>/<tree>/<path>`` and writes
``REPORT.txt`` there; with ``keep_orphans`` (operator-requested resync only)
true orphans are only reported (a ``replace`` is always moved: the path is
needed).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mirrorkit.agent.capture.filespec import is_excluded
from mirrorkit.agent.capture.index import FILE, BlockIndex, Entry
from mirrorkit.agent.capture.reconcile import How, Reconciler
from mirrorkit.agent.log.records import Op, OpKind
from mirrorkit.agent.transport.manifest_items import ManifestItem
from mirrorkit.agent.util.hashing import DIGEST_SIZE

__all__ = [
    "MODES",
    "ManifestStore",
    "ResyncProgress",
    "ResyncReconciler",
    "count_tree",
    "diff_ops",
    "quarantine_path",
]

MODES = ("all", "different", "newer", "checksum")
ORPHAN, REPLACE = "orphan", "replace"


@dataclass
class ResyncProgress:
    """One resync of one member, as status shows it."""

    mode: str
    requested_by: str = "auto"  # auto (fell off the log) | operator
    keep_orphans: bool = False
    id: int = 0
    state: str = "pending"  # pending, manifest, copying, done, failed
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_sent: int = 0
    orphans: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        end = self.finished or time.time()
        elapsed = max(end - self.started, 1e-3)
        rate = self.bytes_done / elapsed
        left = max(self.bytes_total - self.bytes_done, 0)
        eta = 0.0 if self.state in ("done", "failed") else (left / rate if rate > 0 else None)
        return {
            "id": self.id, "mode": self.mode, "state": self.state,
            "requested_by": self.requested_by, "keep_orphans": self.keep_orphans,
            "files_total": self.files_total, "files_done": self.files_done,
            "bytes_total": self.bytes_total, "bytes_done": self.bytes_done,
            "bytes_sent": self.bytes_sent, "orphans": self.orphans,
            "rate": round(rate, 1), "eta_seconds": None if eta is None else round(eta, 1),
            "started": round(self.started, 3),
            "finished": None if self.finished is None else round(self.finished, 3),
            "error": self.error,
        }


class ManifestStore(BlockIndex):
    """The receiver's manifest on the primary's disk (a throw-away index)."""

    def __init__(self, path: Path, block_size: int) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        super().__init__(path, block_size)
        self.path = path
        self.count = 0

    def add(self, item: ManifestItem) -> None:
        entry = Entry(item.kind, item.mode, item.size, item.mtime_ns, target=item.target,
                      hashes=item.hashes)
        if item.first_block:
            old = self.get(item.tree, item.path)
            if old is None or len(old.hashes) != item.first_block * DIGEST_SIZE:
                raise ValueError(f"manifest continuation of {item.path!r} out of order")
            entry = replace(entry, hashes=old.hashes + item.hashes)
        else:
            self.count += 1
        self.put(item.tree, item.path, entry)

    def discard(self) -> None:
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def _no_watch(tree: int, rel: str, fd: int) -> None:
    pass


class ResyncReconciler(Reconciler):
    """The capture's reconciler, with the compare mode deciding whether a
    regular file's content is compared, and progress counted per file."""

    def __init__(self, roots: list[str], exclude: list[str], index: ManifestStore, mode: str,
                 progress: ResyncProgress) -> None:
        super().__init__(roots, exclude, index, _no_watch)
        self.mode = mode
        self.progress = progress

    def _file(self, tree: int, rel: str, pfd: int, name: str, st: os.stat_result,
              old: Entry | None, how: How) -> Iterator[Op | None]:
        try:
            if old is not None and old.kind == FILE and self.mode != "checksum":
                same = (old.size, old.mtime_ns) == (st.st_size, st.st_mtime_ns)
                newer = st.st_mtime_ns > old.mtime_ns
                skip = (self.mode == "different" and same) or (self.mode == "newer" and not newer)
                if skip:
                    mode = st.st_mode & 0o7777
                    if self.mode == "different" and mode != old.mode:
                        yield Op(OpKind.CHMOD, tree, rel, value=mode)
                    yield None
                    return
                old = replace(old, hashes=b"")  # content differs: send it whole
            yield from super()._file(tree, rel, pfd, name, st, old, How.CONTENT)
        finally:
            self.progress.files_done += 1
            self.progress.bytes_done += st.st_size

    def _link(self, tree: int, rel: str, pfd: int, name: str,
              old: Entry | None) -> Iterator[Op | None]:
        yield from super()._link(tree, rel, pfd, name, old)
        self.progress.files_done += 1


def diff_ops(rec: ResyncReconciler) -> Iterator[Op | None]:
    """Every op that turns the manifest's replica into the primary's trees.

    Removals are marked in ``target``: ``replace`` when the very next op
    recreates the same path (kind changed), else ``orphan``."""
    held: Op | None = None
    progress = rec.progress
    for tree in range(len(rec.roots)):
        for op in rec.reconcile(tree, "", How.SCAN):
            if op is None:
                yield None
                continue
            if held is not None:
                same = op.tree == held.tree and op.path == held.path
                yield replace(held, target=REPLACE if same else ORPHAN)
                if not same:
                    progress.orphans += 1
                held = None
            if op.kind in (OpKind.UNLINK, OpKind.RMDIR):
                held = op
                continue
            if op.kind is OpKind.WRITE:
                progress.bytes_sent += len(op.data)
            yield op
    if held is not None:
        progress.orphans += 1
        yield replace(held, target=ORPHAN)


def count_tree(roots: list[str], exclude: list[str]) -> tuple[int, int]:
    """(files + symlinks, bytes of regular files) below ``roots``, as the
    reconciler will see them (excludes applied, symlinks not followed)."""
    files = size = 0
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            rel_dir = "" if rel_dir == "." else rel_dir
            keep = []
            for name in dirnames:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if os.path.islink(os.path.join(dirpath, name)):
                    files += 1
                elif not is_excluded(rel, exclude):
                    keep.append(name)
            dirnames[:] = keep
            for name in filenames:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if is_excluded(rel, exclude):
                    continue
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    files += 1
                    size += st.st_size
                elif stat.S_ISLNK(st.st_mode):
                    files += 1
    return files, size


def _safe_parts(rel: str) -> list[str] | None:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\0" in rel or any(p in ("", ".", "..") for p in parts):
        return None
    return parts


def quarantine_path(root: Path, tree: int, rel: str, dest: Path) -> Path | None:
    """Move ``root/rel`` (not following any symlink on the way, moving a final
    symlink as a link) to ``dest/<tree>/rel``; return where it went, or
    ``None`` if there is nothing there. Raises ValueError on an unsafe path."""
    parts = _safe_parts(rel)
    if parts is None:
        raise ValueError(f"unsafe path {rel!r}")
    cur = str(root)
    for part in parts[:-1]:
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None  # through a symlink or a file: not ours to move
    src = os.path.join(cur, parts[-1])
    if not os.path.lexists(src):
        return None
    target = dest / str(tree) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(src, target)
    return target
