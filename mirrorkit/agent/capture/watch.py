"""The ``watch`` capture method (:class:`WatchCapture`: inotify + block-hash
index): changes under a mirror's trees become ordered :class:`Op` lists.
The interface it implements, with its contract, is
:class:`~mirrorkit.agent.capture.base.Capture`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mirrorkit.agent.capture import inotify as ino
from mirrorkit.agent.capture.base import Emit
from mirrorkit.agent.capture.filespec import is_excluded
from mirrorkit.agent.capture.index import DIR, BlockIndex, Entry
from mirrorkit.agent.capture.reconcile import CaptureError, How, Reconciler, removal_op
from mirrorkit.agent.capture.unmirrorable import Unmirrorable
from mirrorkit.agent.capture.watches import Key, Move, WatchMap, under
from mirrorkit.agent.log.records import Op, OpKind
from mirrorkit.agent.util.fs import PATH_MAX, UnsafePath, safe_parts, show_path

__all__ = ["CaptureError", "CaptureStats", "WatchCapture"]

log = logging.getLogger(__name__)

T = TypeVar("T")
# Work the capture thread does per hop before the loop gets a say (stop,
# a full batch): bounds how long a cancelled run() leaves its thread busy.
_SLICE_SECONDS = 0.1

_MASK = (
    ino.IN_MODIFY | ino.IN_ATTRIB | ino.IN_CLOSE_WRITE | ino.IN_MOVED_FROM | ino.IN_MOVED_TO
    | ino.IN_CREATE | ino.IN_DELETE | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF
    | ino.IN_ONLYDIR | ino.IN_EXCL_UNLINK
)


class _Stopping(Exception):
    """stop() was called in the middle of a scan."""


@dataclass
class CaptureStats:
    events: int = 0
    overflows: int = 0
    scans: int = 0
    ops: int = 0
    batches: int = 0
    watches: int = 0


@dataclass
class _Dirty:
    due: float
    how: How


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


class WatchCapture:
    """The ``watch`` capture method: inotify + block-hash index (see
    :class:`~mirrorkit.agent.capture.base.Capture` for the contract).

    Coalescing: IN_CLOSE_WRITE, deletes, attribute changes and renames are
    processed at the end of the batch of events they arrived in; IN_MODIFY /
    IN_CREATE of a file wait ``debounce`` seconds from the *first* event (not
    reset by later ones, so a file that is always being written still ships
    every ``debounce``). Each path is diffed against the index, so several
    events on one path cost one diff, in order.

    "Watch before scan" holds per directory: each directory is opened, its
    watch added through that fd, and only then listed, so whatever appears
    after the listing is an event. Below the (resolved) roots no symlink is
    ever followed. Not seen by inotify, hence only by the next full scan:
    writes through a hard link living outside the watched directory, and
    writes through a shared ``mmap`` before the file is closed.

    Threads: everything that touches the disk or the index (listings, stat,
    reads, hashing, every sqlite call) runs on **one dedicated capture
    thread**, never on the event loop. One thread rather than
    ``check_same_thread=False``: the sqlite connection is created, used and
    closed on the thread that owns it, so the one-user rule is enforced by
    construction, and the reconciler's generators keep their place between
    hops. The loop keeps the inotify reader, the timers and ``emit``. The
    capture's state (batch, watch maps) is touched either by ``run()`` on
    the loop or by the thread *while ``run()`` awaits it*, never by both.
    """

    def __init__(
        self,
        trees: list[Path],
        exclude: list[str],
        index_path: Path,
        block_size: int = 64 * 1024,
        *,
        debounce: float = 0.25,
        move_grace: float = 0.05,
        batch_ops: int = 256,
        batch_bytes: int = 4 * 1024 * 1024,
        max_pending_events: int = 100_000,
        unmirrorable: Unmirrorable | None = None,
    ) -> None:
        if block_size <= 0 or not trees:
            raise ValueError("WatchCapture needs at least one tree and a positive block size")
        # Resolved once: below the roots, capture never follows a symlink.
        self.roots = [os.path.realpath(t) for t in trees]
        self.exclude = list(exclude)
        self.index_path = index_path
        self.block_size = block_size
        self.debounce = debounce
        self.move_grace = move_grace
        self.batch_ops = batch_ops
        self.batch_bytes = batch_bytes
        self.max_pending_events = max_pending_events
        self.stats = CaptureStats()
        self.unmirrorable = unmirrorable or Unmirrorable()
        self._stopping = False
        self._running = False
        self._done = asyncio.Event()
        self._ino: ino.Inotify | None = None
        self._watches = WatchMap()
        self._dirty: dict[Key, _Dirty] = {}
        self._moves: dict[int, Move] = {}
        self._batch: list[Op] = []
        self._batch_size = 0
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the capture thread (see the class docstring)."""
        assert self._pool is not None
        return await self._loop.run_in_executor(self._pool, fn, *args)

    # -- lifecycle -----------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        if self._running:
            raise RuntimeError("WatchCapture.run() is already running")
        self._running, self._stopping = True, False
        self._done.clear()
        self._emit = emit
        self._loop = asyncio.get_running_loop()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="capture")
        index: BlockIndex | None = None
        try:
            index = await self._io(BlockIndex, self.index_path, self.block_size)
            self._index = index
            for tree in await self._io(index.bind_roots, self.roots):
                log.warning("capture: tree %d is now %s; index reset", tree, self.roots[tree])
            self._rec = Reconciler(self.roots, self.exclude, index, self._watch,
                                   self.unmirrorable)
            self._ino = ino.Inotify(self.max_pending_events)
            self._ino.attach(self._loop)
            await self._full_scan()
            while not self._stopping:
                await self._ino.wait(self._timeout())
                for event in self._ino.take():
                    await self._handle(event)
                await self._expire_moves()
                await self._process_due()
                await self._flush()
        except _Stopping:
            pass  # stop() during a long scan: the next start's scan resumes the work
        finally:
            # Queued behind whatever the thread still does for a cancelled
            # run(), so the thread is idle before the watches go.
            await self._shut_down(index)
            if self._ino is not None:
                self._ino.close()
                self._ino = None
            self._watches.clear()
            self._dirty.clear()
            self._moves.clear()
            self._batch, self._batch_size = [], 0
            self._running = False
            self._done.set()

    async def _shut_down(self, index: BlockIndex | None) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # close(): uncommitted = not emitted, discarded.
        closing = pool.submit(index.close) if index is not None else None
        pool.shutdown(wait=False)
        if closing is not None:
            try:
                await asyncio.shield(asyncio.wrap_future(closing))
            except asyncio.CancelledError:
                await asyncio.wrap_future(closing)
                raise
            except Exception as exc:
                log.warning("capture: closing the block index: %r", exc)

    async def stop(self) -> None:
        self._stopping = True
        if self._ino is not None:
            self._ino.wakeup()
        if self._running:
            await self._done.wait()

    # -- emitting ------------------------------------------------------------
    def _append(self, op: Op) -> None:
        # The last guard: never log a record a replica would refuse (it would
        # stop every receiver there). The reconciler skips such paths before.
        for path in (op.path, op.target) if op.kind is OpKind.RENAME else (op.path,):
            try:
                safe_parts(path, allow_root=True)
            except UnsafePath as exc:
                self.unmirrorable.refuse(self.roots[op.tree], op.tree, path,
                                         str(exc).removeprefix(f"path {show_path(path)} "))
                return
        self._batch.append(op)
        self._batch_size += len(op.data) + len(op.path) + len(op.target) + 32

    async def _flush(self) -> None:
        if not self._batch:
            return
        ops, self._batch, self._batch_size = self._batch, [], 0
        await self._emit(ops)
        # Only now is the index allowed to say the replicas have these changes.
        await self._io(self._index.commit)
        self.stats.ops += len(ops)
        self.stats.batches += 1

    def _full(self) -> bool:
        return len(self._batch) >= self.batch_ops or self._batch_size >= self.batch_bytes

    def _pull(self, ops: Iterator[Op | None]) -> bool:
        """(capture thread) Move ops into the batch until it is full or the
        slice is used up; True once ``ops`` is exhausted."""
        deadline = time.monotonic() + _SLICE_SECONDS
        for op in ops:
            if self._stopping:
                raise _Stopping
            if op is not None:
                self._append(op)
                if self._full():
                    return False
            if time.monotonic() > deadline:
                return False
        return True

    async def _drive(self, ops: Iterator[Op | None]) -> None:
        """Feed a reconciler's ops into batches, emitting each full one. The
        generator runs on the capture thread; the loop only emits."""
        while True:
            done = await self._io(self._pull, ops)
            if self._full():
                await self._flush()
            if done:
                return

    # -- watches -------------------------------------------------------------
    def _watch(self, tree: int, rel: str, fd: int) -> None:
        assert self._ino is not None
        try:
            # Through the open fd: the watch lands on exactly the directory
            # about to be listed, even if its path changes meanwhile.
            wd = self._ino.add_watch(f"/proc/self/fd/{fd}", _MASK)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return  # gone (or replaced by a file) meanwhile: an event says so
            if exc.errno == errno.ENOSPC:
                raise CaptureError(
                    "inotify watch limit reached (sysctl fs.inotify.max_user_watches); "
                    "raise it so every directory of the mirror can be watched"
                ) from exc
            where = self._rec.abspath(tree, rel)
            raise CaptureError(f"cannot watch {where}: {exc.strerror}") from exc
        self._watches.add(wd, (tree, rel))
        self.stats.watches = len(self._watches)

    def _forget_wd(self, wd: int) -> None:
        self._watches.forget(wd)
        self.stats.watches = len(self._watches)

    def _unwatch(self, move: Move) -> None:
        """Drop the watches of a directory moved out of the trees. By watch
        descriptor, not by path: a new directory may already have the old
        name, and a scan may already have re-mapped a watch to the place the
        directory went (then it is still ours)."""
        assert self._ino is not None
        for wd in self._watches.moved(move):
            if self._watches.get(wd) is not None:
                self._ino.rm_watch(wd)
                self._forget_wd(wd)

    def _remap(self, move: Move, dst: str) -> None:
        """After a rename, watches and pending work under the source are ``dst``'s."""
        tree, src = move.tree, move.rel
        self._watches.remap(move, dst)
        for key in [k for k in self._dirty if k[0] == tree and under(k[1], src)]:
            self._mark((tree, dst + key[1][len(src) :]), self._dirty.pop(key).how, 0.0)

    # -- events --------------------------------------------------------------
    def _mark(self, key: Key, how: How, delay: float) -> None:
        due = self._loop.time() + delay
        cur = self._dirty.get(key)
        if cur is None:
            self._dirty[key] = _Dirty(due, how)
        else:
            cur.due, cur.how = min(cur.due, due), max(cur.how, how)

    def _timeout(self) -> float | None:
        dues = [d.due for d in self._dirty.values()] + [m.deadline for m in self._moves.values()]
        return max(0.0, min(dues) - self._loop.time()) if dues else None

    async def _handle(self, event: ino.InotifyEvent) -> None:
        self.stats.events += 1
        mask = event.mask
        if mask & ino.IN_Q_OVERFLOW:
            self.stats.overflows += 1
            log.warning("capture: inotify queue overflow; rescanning %s", self.roots)
            await self._full_scan()
            return
        where = self._watches.get(event.wd)
        if where is None:
            return  # a watch we already dropped
        tree, base = where
        if mask & ino.IN_IGNORED:
            self._forget_wd(event.wd)
            return
        if mask & ino.IN_UNMOUNT:
            raise CaptureError(f"the file system under {self.roots[tree]} was unmounted")
        if not event.name:
            if mask & (ino.IN_DELETE_SELF | ino.IN_MOVE_SELF) and not base:
                raise CaptureError(f"mirror tree {self.roots[tree]} was deleted or moved")
            if mask & ino.IN_ATTRIB and base:
                self._mark(where, How.ATTR, 0.0)
            return  # other self-events are reported by the parent directory
        rel = f"{base}/{event.name}" if base else event.name
        isdir = bool(mask & ino.IN_ISDIR)
        if mask & ino.IN_MOVED_FROM:
            wds = self._watches.under(tree, rel) if isdir else frozenset()
            deadline = self._loop.time() + self.move_grace
            self._moves[event.cookie] = Move(tree, rel, wds, deadline, self._watches.seq)
        elif mask & ino.IN_MOVED_TO:
            await self._moved(self._moves.pop(event.cookie, None), tree, rel)
        elif is_excluded(rel, self.exclude):
            return
        elif mask & ino.IN_CREATE and isdir:
            # At once: the sooner its watch lands, the fewer of its files are
            # found by listing instead of by events.
            await self._reconcile((tree, rel), How.SCAN)
        elif mask & (ino.IN_CLOSE_WRITE | ino.IN_DELETE):
            self._mark((tree, rel), How.CONTENT, 0.0)
        elif mask & (ino.IN_MODIFY | ino.IN_CREATE):
            self._mark((tree, rel), How.CONTENT, self.debounce)
        elif mask & ino.IN_ATTRIB:
            self._mark((tree, rel), How.ATTR, 0.0)

    async def _moved(self, src: Move | None, tree: int, rel: str) -> None:
        dst_ok = not is_excluded(rel, self.exclude)
        if src is None:  # moved in from outside the trees (or from an excluded name)
            if dst_ok:
                await self._reconcile((tree, rel), How.SCAN)
            return
        if not (dst_ok and await self._io(self._rename_indexed, src, tree, rel)):
            # Not a rename the replicas can replay: a removal plus a new path.
            await self._moved_out(src)
            if dst_ok:
                await self._reconcile((tree, rel), How.SCAN)
            return
        srel = src.rel
        self._remap(src, rel)
        # Re-examine both ends: events queued before this one were stamped with
        # paths that may since have changed; a stat-level check converges.
        self._mark((tree, srel), How.CONTENT, 0.0)
        self._mark((tree, rel), How.SCAN, 0.0)

    def _rename_indexed(self, src: Move, tree: int, rel: str) -> bool:
        """(capture thread) Batch a RENAME of ``src`` to ``rel`` and move its
        index entries, if the replicas can replay it; else change nothing."""
        stree, srel = src.tree, src.rel
        old = self._index.get(stree, srel)
        parent = _parent(rel)
        parent_entry = self._index.get(tree, parent) if parent else Entry(DIR)
        if not (
            stree == tree and old is not None
            and parent_entry is not None and parent_entry.kind == DIR
            and not under(rel, srel) and not under(srel, rel)
            and self._fits(tree, srel, rel)
        ):
            return False
        replaced = self._index.get(tree, rel)
        if replaced is not None and (
            (replaced.kind == DIR) != (old.kind == DIR)
            or (replaced.kind == DIR and self._index.children(tree, rel))
        ):
            # What the replica holds at the target is not what rename(2) could
            # have replaced on the primary (its removal is still pending here):
            # remove it first so the RENAME replays cleanly.
            self._append(removal_op(tree, rel, replaced))
            self._index.delete_subtree(tree, rel)
        self._append(Op(OpKind.RENAME, tree, srel, target=rel))
        self._index.rename(tree, srel, rel)
        return True

    def _fits(self, tree: int, src: str, dst: str) -> bool:
        """(capture thread) Every indexed path below ``src`` still fits a
        record once moved to ``dst``; if not, the rename is replayed as a
        removal and a scan, which skips (and counts) what is too long."""
        try:
            safe_parts(dst)
        except UnsafePath:
            return False
        grow = len(dst.encode("utf-8", "surrogateescape")) - \
            len(src.encode("utf-8", "surrogateescape"))
        return grow <= 0 or self._index.longest_below(tree, src) + grow < PATH_MAX

    async def _moved_out(self, move: Move) -> None:
        self._unwatch(move)
        await self._reconcile((move.tree, move.rel), How.CONTENT)

    async def _expire_moves(self) -> None:
        """An IN_MOVED_FROM whose IN_MOVED_TO never came: moved out of the trees."""
        if not self._moves or self._ino is None:
            return
        self._ino.inject(self._ino.read_now())  # its pair may sit unread in the kernel
        if self._ino.pending:
            return
        now = self._loop.time()
        for cookie, move in list(self._moves.items()):
            if move.deadline <= now:
                del self._moves[cookie]
                await self._moved_out(move)

    async def _process_due(self) -> None:
        now = self._loop.time()
        ready = sorted(
            (d.due, k[1].count("/"), k) for k, d in self._dirty.items() if d.due <= now
        )
        # Nothing else changes _dirty meanwhile: take them all, one drive.
        work = [(key, self._dirty.pop(key).how) for _, _, key in ready]
        if work:
            await self._drive(self._reconcile_ops(work))

    async def _reconcile(self, key: Key, how: How) -> None:
        await self._drive(self._reconcile_ops([(key, how)]))

    def _reconcile_ops(self, work: Iterable[tuple[Key, How]]) -> Iterator[Op | None]:
        """(capture thread, as it is pulled) Reconcile each path in turn; if
        a path's parent directory is not known yet (its creation is still
        pending), reconcile the top-most unknown ancestor instead, which
        includes this path."""
        for (tree, rel), how in work:
            top = rel
            parent = _parent(rel)
            while parent:
                entry = self._index.get(tree, parent)
                if entry is not None and entry.kind == DIR:
                    break
                top, parent = parent, _parent(parent)
            yield from self._rec.reconcile(tree, top, How.SCAN if top != rel else how)

    async def _full_scan(self) -> None:
        """Diff every tree against the index; re-watch every directory and drop
        watches that no longer belong to a directory of the trees."""
        self.stats.scans += 1
        self._dirty.clear()  # the scan covers them
        self._moves.clear()
        seen: set[int] = set()
        self._watches.seen = seen
        try:
            for tree in range(len(self.roots)):
                await self._drive(self._rec.reconcile(tree, "", How.SCAN))
            stale = set(self._watches.by_wd) - seen
        finally:
            self._watches.seen = None
        assert self._ino is not None
        for wd in stale:
            self._ino.rm_watch(wd)
            self._forget_wd(wd)
        self._append(Op(OpKind.MARK, 0, "", target="scan-complete"))
        await self._flush()
