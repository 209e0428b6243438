"""A receiver's own copy of the mirror (:class:`Replica`): its mirror log,
its replica trees and its applied LSN, kept in step.

This is the half of :class:`~mirrorkit.agent.stream.receiver.ReceiverMirror`
that touches the disk: open and recover, apply the logged backlog, log and
apply a batch with one durability point (steps 2-5 of the receiver's
docstring), cut the log back at a record that cannot be applied, apply a
resync's records and finish it, undo a divergent tail. The methods marked
"worker thread" run off the event loop (``asyncio.to_thread``). The other
half, in :mod:`.receiver`, talks to the primary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mirrorkit.agent.apply.applier import Applier, RecordFailed
from mirrorkit.agent.apply.held_modes import HELD_MODES_FILE, HeldModes
from mirrorkit.agent.log.records import Record
from mirrorkit.agent.log.segments import MirrorLog
from mirrorkit.agent.log.terms import TermHistory
from mirrorkit.agent.resync.receiver import ReceiverResync
from mirrorkit.agent.stream.apply_failure import ApplyFailure, decide
from mirrorkit.agent.stream.divergence import DivergenceUnknown, undo_divergent_tail
from mirrorkit.agent.stream.worker import MirrorWorker

__all__ = ["Replica"]

log = logging.getLogger(__name__)


class Replica(MirrorWorker):
    """Base of :class:`~mirrorkit.agent.stream.receiver.ReceiverMirror`: the log,
    the replica and the applied LSN, and what changes them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: MirrorLog  # set by open(), with the history and the applier
        self.history: TermHistory
        self.applier: Applier
        self._refused_seen = 0  # applier.refused already counted in metrics
        self.primary_history: list[tuple[int, int]] = []  # from the primary's HELLO
        self.divergences = 0
        self.last_divergence: dict[str, Any] | None = None
        self.applied = self.store.load_applied()
        self.failure: ApplyFailure | None = None
        self._conflict_resyncs = 0  # asked for in a row, without a clean batch
        self.resyncing = False
        self.resyncs = 0
        self.resync: ReceiverResync | None = None  # the current or last resync

    def _checkpoint(self, lsn: int) -> None:
        self.store.save_applied(lsn)

    async def open(self) -> None:
        if not hasattr(self, "log"):
            await asyncio.to_thread(self._open)

    def _open(self) -> None:
        """(worker thread) The log's recovery scan, the term history, the
        applier's descriptors (a reporting copy also locks its roots down,
        with an fsync)."""
        mlog = self.open_log()
        held: HeldModes | None = None
        try:
            log_first, log_last = mlog.first_lsn, mlog.last_lsn
            if not log_first - 1 <= self.applied <= log_last:
                # The log and applied.json disagree (crash between resync steps):
                # applied.json is the truth about the replica; restart the log there.
                log.warning("%s: applied LSN %d outside log %d..%d; restarting log at %d",
                            self.name, self.applied, log_first, log_last, self.applied + 1)
                mlog.reset(self.applied + 1)
            self.history = TermHistory.load(self.mirror_dir() / "terms.json", mlog)
            reporting = self.cfg.kind == "reporting"
            if not reporting:  # reporting copies strip these bits (and more) for good
                held = HeldModes(self.mirror_dir() / HELD_MODES_FILE)
                held.sweep(list(self.cfg.targets))  # a former primary's tree, an upgrade
            self.applier = Applier(self.cfg.targets, checkpoint=self._checkpoint,
                                   label=f"{self.cfg.name}:apply",
                                   # issue #3 (reporting copies): never user-writable
                                   read_only=reporting,
                                   sync_dirs=[self.store.directory], held=held)
        except BaseException:
            if held is not None:
                held.close()
            mlog.close()
            raise
        self.log = mlog

    async def stop(self) -> None:
        await super().stop()
        if hasattr(self, "log"):
            await asyncio.to_thread(self._close)  # the applier's close syncs

    def _close(self) -> None:
        try:
            self.applier.close()
        finally:
            if self.applier.held is not None:
                self.applier.held.close()
            self.log.close()

    def last_lsn(self) -> int:
        return self.log.last_lsn if hasattr(self, "log") else 0

    def _apply_backlog(self) -> None:
        while self.failure is None and self.applied < self.log.last_lsn:
            records = self.log.read(self.applied + 1)
            started = time.perf_counter()
            try:
                self.applier.apply_batch(records)
            except RecordFailed as exc:
                self._cut_at(exc.lsn)
                self.failure = self._failure_for(exc, in_resync=False)
                return
            self.applied = records[-1].lsn
            self.store.save_applied(self.applied)
            self._count_applied(len(records), time.perf_counter() - started)
            log.info("%s: applied logged backlog up to LSN %d", self.name, self.applied)

    def _cut_at(self, lsn: int) -> None:
        """Record ``lsn`` was not applied (worker thread): the replica, the
        applied LSN and the log all end at ``lsn - 1``."""
        self.store.save_applied(lsn - 1)
        self.applied = lsn - 1
        self.log.reset(lsn)
        self.history.truncate_after(lsn - 1)  # a term that began at lsn is not ours yet

    def _failure_for(self, exc: RecordFailed, in_resync: bool) -> ApplyFailure:
        if not exc.refused and not in_resync:
            self._conflict_resyncs += 1
        failure = decide(exc, in_resync, self._conflict_resyncs, self.applied,
                         self.cfg.name, self.host)
        (log.warning if failure.resync else log.error)("%s: %s", self.name, failure.reason)
        return failure

    def alive(self) -> bool:
        return super().alive() and (self.failure is None or self.failure.resync)

    def error(self) -> str | None:
        f = self.failure
        return super().error() or (f.reason if f is not None and not f.resync else None)

    async def _undo_divergent(self, shared: int, primary: str) -> None:
        try:
            undone = await asyncio.to_thread(
                undo_divergent_tail, self.log, self.history, list(self.cfg.targets),
                self.mirror_dir() / "quarantine", shared, primary, self.name)
        except DivergenceUnknown as exc:
            self.fatal = str(exc)
            log.error("%s: %s", self.name, exc)
            raise
        for tree, path, _, moved in undone.moved:
            if moved != "-":  # in quarantine now: nothing of it is held here
                self.applier.forget_held(tree, path)
        self.applied = min(self.applied, shared)
        await asyncio.to_thread(self.store.save_applied, self.applied)
        self.divergences += 1
        self.metrics.quarantined("diverged", sum(1 for m in undone.moved if m[3] != "-"))
        self.last_divergence = {"shared_lsn": shared, "lsn_range": [undone.first, undone.last],
                                "terms": undone.terms, "paths": len(undone.moved),
                                "report": str(undone.report), "time": time.time()}

    def _apply_resync(self, resync: ReceiverResync, records: list[Record]) -> None:
        resync.apply(self.applier, records)
        self._count_applied(len(records), None)

    def _finish_resync(self, lsn: int) -> None:
        self.store.save_applied(lsn)
        self.applied = lsn
        self.log.reset(lsn + 1)
        # Our replica is now the primary's at LSN `lsn`: so is our history.
        self.history.adopt(self.primary_history, lsn)
        self.resyncing = False
        self.resyncs += 1
        self.metrics.resync(self.host, "done")
        if self.failure is not None:
            log.info("%s: the resync covers LSN %d, which we could not apply: resuming",
                     self.name, self.failure.lsn)
            self.failure = None
        if self.resync is not None:
            self.resync.finish()
        log.info("%s: resync complete at LSN %d", self.name, lsn)

    def _log_and_apply(self, records: list[Record]) -> None:
        for r in records:  # a new term's start is durable before its records
            if r.term > self.history.last_term:
                self.history.note(r.term, r.lsn)
        self.log.append(records)
        lsn = records[-1].lsn
        started = time.perf_counter()
        # applied.json's new contents become durable with the replica data,
        # and only then replace the old file: never ahead of the replica.
        try:
            self.applier.apply_batch(records, stage=lambda: self.store.stage_applied(lsn))
        except RecordFailed as exc:
            self._cut_at(exc.lsn)
            raise
        self.store.commit_applied()
        self.applied = lsn
        self._count_applied(len(records), time.perf_counter() - started)
        self.log.trim(self.applied, drop_unacked=False)

    def _count_applied(self, records: int, seconds: float | None) -> None:
        """Metrics of one applied batch (worker thread): records, latency
        (``None`` for resync batches, which have no durability point of
        their own), and the records apply refused meanwhile."""
        self.metrics.applied(records, seconds)
        refused, self._refused_seen = self.applier.refused - self._refused_seen, \
            self.applier.refused
        self.metrics.refused(refused)
