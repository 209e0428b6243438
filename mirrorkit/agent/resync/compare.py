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
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mirrorkit.agent.capture.filespec import excluder
from mirrorkit.agent.capture.index import FILE, LINK, BlockIndex, Entry
from mirrorkit.agent.capture.reconcile import How, Reconciler
from mirrorkit.agent.log.records import Op, OpKind
from mirrorkit.agent.transport.manifest_items import ManifestItem
from mirrorkit.agent.util.fs import NAME_MAX
from mirrorkit.agent.util.hashing import DIGEST_SIZE
from mirrorkit.agent.util.move import make_dirs, move_entry
from mirrorkit.agent.util.walk import WalkEntry, lookup, walk

__all__ = [
    "MODES",
    "ManifestStore",
    "ResyncProgress",
    "ResyncReconciler",
    "count_tree",
    "diff_ops",
    "quarantine_dir",
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


class ResyncReconciler(Reconciler):
    """The capture's reconciler, with the compare mode deciding whether a
    regular file's content is compared, and progress counted per file."""

    def __init__(self, roots: list[str], exclude: list[str], index: ManifestStore, mode: str,
                 progress: ResyncProgress) -> None:
        super().__init__(roots, exclude, index)
        self.mode = mode
        self.progress = progress

    def _file(self, entry: WalkEntry, old: Entry | None, how: How) -> Iterator[Op | None]:
        st = entry.st
        assert st is not None
        tree, rel = entry.tree, entry.rel
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
            yield from super()._file(entry, old, How.CONTENT)
        finally:
            self.progress.files_done += 1
            self.progress.bytes_done += st.st_size

    def _link(self, entry: WalkEntry, old: Entry | None) -> Iterator[Op | None]:
        yield from super()._link(entry, old)
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
    reconciler will see them (the same walk: excludes applied, symlinks not
    followed)."""
    files = size = 0
    for tree, root in enumerate(roots):
        for entry in walk(root, tree=tree, skip=excluder(exclude)):
            if entry.kind == FILE:
                assert entry.st is not None
                files += 1
                size += entry.st.st_size
            elif entry.kind == LINK:
                files += 1
    return files, size


def quarantine_dir(dest: Path) -> None:
    """Create quarantine directory ``dest`` (``<state_dir>/<mirror>/quarantine/
    <name>``) and make it and the quarantine root readable by root only:
    what lands there is the replica's data as it was, moved out of reach."""
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    for d in (dest.parent, dest):
        if stat.S_IMODE(d.stat().st_mode) != 0o700:
            os.chmod(d, 0o700)


def _free_name(dir_fd: int, name: str) -> str:
    """``name``, or ``name.N`` when that is taken (one path quarantined twice)."""
    candidate, n = name, 0
    while True:
        try:
            os.stat(candidate, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return candidate
        n += 1
        base = name
        while len(base.encode("utf-8", "surrogateescape")) > NAME_MAX - 12:
            base = base[:-1]
        candidate = f"{base}.{n}"


def quarantine_path(root: Path, tree: int, rel: str, dest: Path) -> Path | None:
    """Move ``root/rel`` (not following any symlink on the way, moving a final
    symlink as a link) to ``dest/<tree>/rel``; return where it went, or
    ``None`` if there is nothing there (or only a fifo, socket or device).
    Raises :class:`~mirrorkit.agent.util.fs.UnsafePath` (a ValueError) on an
    unsafe path.

    By descriptors at every step (``util.move``), so a path deeper than an
    absolute path may be spelt moves like any other; regular files lose
    their setuid/setgid bits on the way."""
    with lookup(root, rel, tree=tree) as found:
        if found is None:
            return None
        quarantine_dir(dest)
        parts = (str(tree), *rel.split("/"))
        base = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            parent = make_dirs(base, parts[:-1])
        finally:
            os.close(base)
        try:
            # Through the lookup's parent descriptor: an ancestor replaced by
            # a symlink since cannot redirect the move.
            name = _free_name(parent, parts[-1])
            move_entry(found.dir_fd, found.name, parent, name)
        finally:
            os.close(parent)
    return dest.joinpath(*parts[:-1], name)
