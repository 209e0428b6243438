"""The receiver's half of a difference resync (protocol and convergence
argument: :mod:`mirrorkit.agent.resync.compare`): send the manifest of the replica,
apply the LSN-0 records, and handle orphans (quarantine with a report, or
only report them when the operator asked to keep them)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mirrorkit.agent.apply.applier import Applier, RecordFailed
from mirrorkit.agent.apply.held_modes import LogicalMode
from mirrorkit.agent.log.records import Op, OpKind, Record
from mirrorkit.agent.resync.compare import (
    MODES,
    REPLACE,
    ResyncProgress,
    quarantine_dir,
    quarantine_path,
)
from mirrorkit.agent.resync.manifest import walk_replica
from mirrorkit.agent.transport.conn import Connection
from mirrorkit.agent.transport.frames import Manifest, ManifestEnd, ResyncBegin
from mirrorkit.agent.transport.frames import ResyncProgress as ProgressMsg
from mirrorkit.agent.transport.manifest_items import (
    MAX_ITEMS_PER_FRAME,
    ManifestItem,
    encode_item,
)
from mirrorkit.agent.util.walk import lookup

__all__ = ["ReceiverResync"]

log = logging.getLogger(__name__)

MANIFEST_FRAME_BYTES = 1 << 20


class QuarantineStats(Protocol):
    """The agent's metrics (util.stats.MirrorMetrics): a file quarantined."""

    def quarantined(self, reason: str, files: int = 1) -> None: ...


def _take_items(items: Any, max_bytes: int,
                max_items: int = MAX_ITEMS_PER_FRAME) -> tuple[list[ManifestItem], bytes]:
    """(worker thread) The next items of about ``max_bytes``, at most
    ``max_items`` (the primary refuses a MANIFEST frame with more), and their
    encoding."""
    batch: list[ManifestItem] = []
    encoded: list[bytes] = []
    size = 0
    for item in items:
        batch.append(item)
        encoded.append(encode_item(item))
        size += len(encoded[-1])
        if size >= max_bytes or len(batch) >= max_items:
            break
    return batch, b"".join(encoded)


class ReceiverResync:
    """One resync in progress on a receiver."""

    def __init__(self, begin: ResyncBegin, roots: list[Path], quarantine: Path,
                 label: str, exclude: list[str] | None = None,
                 stats: QuarantineStats | None = None,
                 logical: LogicalMode | None = None) -> None:
        if begin.mode not in MODES:
            raise ValueError(f"unknown resync mode {begin.mode!r}")
        if not 4096 <= begin.block_size <= 16 << 20:
            raise ValueError(f"resync block size {begin.block_size} out of range")
        self.begin = begin
        self.roots = roots
        # Excluded paths are not mirrored: the replica's own (scratch files,
        # caches) are neither compared nor orphans, as in capture and verify.
        self.exclude = exclude or []
        self.label = label
        self.stats = stats
        self.logical = logical  # files' modes as the primary has them
        self.dest = quarantine / f"resync-{time.strftime('%Y%m%dT%H%M%S')}-{begin.lsn}"
        self.progress = ResyncProgress(begin.mode, "", bool(begin.keep_orphans), begin.id,
                                       state="manifest")
        self.bytes_received = 0
        self.records = 0
        self.orphans_moved = 0
        self.orphans_kept = 0
        self.manifest_entries = 0

    async def send_manifest(self, conn: Connection, term: Callable[[], int]) -> None:
        items = walk_replica(self.roots, self.begin.block_size, self.begin.mode == "checksum",
                             self.exclude, self.logical)
        while True:
            batch, raw = await asyncio.to_thread(_take_items, items, MANIFEST_FRAME_BYTES)
            if not batch:
                break
            self.manifest_entries += sum(1 for i in batch if i.first_block == 0)
            await conn.send(Manifest(term(), batch, raw))
        await conn.send(ManifestEnd(self.manifest_entries, term()))
        self.progress.state = "copying"
        log.info("%s: manifest sent (%d entries, mode %s)", self.label, self.manifest_entries,
                 self.begin.mode)

    def on_progress(self, msg: ProgressMsg) -> None:
        p = self.progress
        p.files_total, p.files_done = msg.files_total, msg.files_done
        p.bytes_total, p.bytes_done = msg.bytes_total, msg.bytes_done
        p.bytes_sent, p.orphans = msg.bytes_sent, msg.orphans

    def apply(self, applier: Applier, records: list[Record]) -> None:
        """Apply one batch of LSN-0 records (worker thread); removals are
        orphans or replaced entries and never deleted. Raises
        :class:`~mirrorkit.agent.apply.applier.RecordFailed` at a record it
        cannot apply."""
        run: list[Record] = []
        for r in records:
            if r.op.kind in (OpKind.UNLINK, OpKind.RMDIR):
                if run:
                    applier.apply_batch(run)
                    run = []
                self._orphan(r.op)
                applier.forget_held(r.op.tree, r.op.path)  # moved away, or refused above
                continue
            if r.op.kind is OpKind.WRITE:
                self.bytes_received += len(r.op.data)
            run.append(r)
        if run:
            applier.apply_batch(run)
        self.records += len(records)

    def _orphan(self, op: Op) -> None:
        if not 0 <= op.tree < len(self.roots):
            raise self._refuse(op, f"unknown tree {op.tree}")
        kind = "replaced" if op.target == REPLACE else "orphan"
        if kind == "orphan" and self.progress.keep_orphans:
            try:
                with lookup(self.roots[op.tree], op.path, tree=op.tree) as found:
                    present = found is not None
            except ValueError as exc:
                raise self._refuse(op, str(exc)) from None
            if present:
                self.orphans_kept += 1
                log.warning("%s: orphan %r (tree %d) is not on the primary: kept (operator "
                            "asked to keep orphans)", self.label, op.path, op.tree)
                self._report(f"kept\t{op.tree}\t{op.path}")
            return
        try:
            moved = quarantine_path(self.roots[op.tree], op.tree, op.path, self.dest)
        except ValueError as exc:
            raise self._refuse(op, str(exc)) from None
        if moved is None:
            return
        self.orphans_moved += 1
        if self.stats is not None:
            self.stats.quarantined("replaced" if kind == "replaced" else "orphan")
        what = "is not on the primary" if kind == "orphan" else "has another kind on the primary"
        log.warning("%s: orphan %r (tree %d) %s: moved to %s", self.label, op.path, op.tree,
                    what, moved)
        self._report(f"moved\t{op.tree}\t{op.path}\t{moved}\t{kind}")

    def _refuse(self, op: Op, reason: str) -> RecordFailed:
        """A hostile removal: stops the resync like any refused record."""
        failed = RecordFailed(0, f"resync {op.kind.name} {op.path!r}", reason, refused=True)
        log.error("%s: %s", self.label, failed)
        return failed

    def _report(self, line: str) -> None:
        quarantine_dir(self.dest)
        with open(self.dest / "REPORT.txt", "a", encoding="utf-8",
                  errors="surrogateescape") as f:
            f.write(line + "\n")

    def finish(self) -> None:
        self.progress.state, self.progress.finished = "done", time.time()
        if self.orphans_moved or self.orphans_kept:
            log.warning("%s: resync found %d orphan(s): %d moved, %d kept; report %s",
                        self.label, self.orphans_moved + self.orphans_kept,
                        self.orphans_moved, self.orphans_kept, self.dest / "REPORT.txt")

    def fail(self, reason: str) -> None:
        if self.progress.state != "done":
            self.progress.state, self.progress.finished = "failed", time.time()
            self.progress.error = reason

    def status(self) -> dict[str, Any]:
        out = self.progress.as_dict()
        del out["requested_by"]
        out.update({"bytes_received": self.bytes_received, "records": self.records,
                    "manifest_entries": self.manifest_entries,
                    "orphans_moved": self.orphans_moved, "orphans_kept": self.orphans_kept,
                    "report": str(self.dest / "REPORT.txt")
                    if self.orphans_moved or self.orphans_kept else None})
        return out
