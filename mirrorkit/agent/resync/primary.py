"""The primary's half of a difference resync (protocol and convergence
argument: :mod:`mirrorkit.agent.resync.compare`).

One resync runs inside the peer's send loop, so nothing else is sent to that
peer meanwhile. The manifest store (sqlite) and the diff generator live on a
single worker thread of their own (sqlite connections are bound to their
thread); the event loop only moves frames, and sends a heartbeat whenever the
receiver would otherwise hear nothing for a heartbeat interval (hashing a
large tree takes longer than ``timeouts.qos``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mirrorkit.agent.config import MirrorConfig
from mirrorkit.agent.log.records import Op, Record, encode_record
from mirrorkit.agent.log.segments import MirrorLog
from mirrorkit.agent.resync.compare import (
    ManifestStore,
    ResyncProgress,
    ResyncReconciler,
    count_tree,
    diff_ops,
)
from mirrorkit.agent.transport.conn import Connection
from mirrorkit.agent.transport.frames import (
    MAX_RECORDS_PER_FRAME,
    Manifest,
    ManifestEnd,
    Message,
    ProtocolError,
    Records,
    ResyncBegin,
    ResyncEnd,
)
from mirrorkit.agent.transport.frames import ResyncProgress as ProgressMsg
from mirrorkit.agent.util.aio import wait_for

__all__ = ["BLOCK_SIZE", "send_resync"]

log = logging.getLogger(__name__)

BLOCK_SIZE = 64 * 1024  # the capture's block size (WatchCapture default)
BATCH_BYTES = 1 << 20
PROGRESS_EVERY = 0.5  # seconds between RESYNC_PROGRESS frames
T = TypeVar("T")


class ResyncPeer(Protocol):
    """What a resync needs of the primary's record of one receiver."""

    hold_lsn: int
    resyncing: bool
    manifest: asyncio.Queue[Manifest | ManifestEnd] | None


class ResyncSource(Protocol):
    """What a resync needs of the primary (the stream's sender provides it)."""

    name: str
    cfg: MirrorConfig
    log: MirrorLog

    @property
    def term(self) -> int: ...

    def mirror_dir(self) -> Path: ...

    def heartbeat_for(self, peer: Any) -> Message: ...


class _Worker:
    """One thread for everything that touches the manifest store."""

    def __init__(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="resync")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _take(ops: Iterator[Op | None], max_bytes: int, seconds: float,
          term: int, max_records: int = MAX_RECORDS_PER_FRAME) -> tuple[bytes, bool]:
    """Up to ``max_bytes`` of ops, ``max_records`` of them (the receiver
    refuses a RECORDS frame with more) or ``seconds`` of work, encoded as
    LSN-0 records here on the worker thread (not on the loop at send time);
    (records, finished)."""
    deadline = time.monotonic() + seconds
    batch: list[bytes] = []
    size = 0
    for op in ops:
        if op is not None:
            batch.append(encode_record(Record(0, term, op)))
            size += len(batch[-1])
        if size >= max_bytes or len(batch) >= max_records or time.monotonic() > deadline:
            return b"".join(batch), False
    return b"".join(batch), True


def _progress_msg(p: ResyncProgress, term: int) -> ProgressMsg:
    return ProgressMsg(p.files_total, p.files_done, p.bytes_total, p.bytes_done, p.bytes_sent,
                       p.orphans, term)


async def send_resync(pm: ResyncSource, conn: Connection, peer: ResyncPeer, member: str,
                      progress: ResyncProgress) -> int:
    """Run one resync of ``member``; return the next LSN to stream from."""
    start = pm.log.last_lsn
    roots = [str(Path(t).resolve()) for t in pm.cfg.targets]
    exclude = list(pm.cfg.exclude)
    # Hold retention at S for this peer: the tail from S+1 must survive. Its
    # acknowledged LSN stays what it has: a resyncing peer is not caught up.
    peer.hold_lsn = start
    peer.resyncing = True
    queue: asyncio.Queue[Manifest | ManifestEnd] = asyncio.Queue(maxsize=8)
    peer.manifest = queue
    # "pending" until the receiver has been told (ResyncBegin sent): status
    # "manifest" then means both halves are in the manifest phase.
    progress.started = time.time()
    log.warning("%s: resync of %s (%s, %s): snapshot after LSN %d, then the log from %d",
                pm.name, member, progress.mode, progress.requested_by, start, start + 1)
    run = _Resync(pm, conn, peer, member, progress)
    db = pm.mirror_dir() / f"resync-{member}.db"
    store: ManifestStore | None = None
    try:
        store = await run.worker.run(ManifestStore, db, BLOCK_SIZE)
        await run.send(ResyncBegin(start, pm.term, progress.mode, int(progress.keep_orphans),
                                   BLOCK_SIZE, progress.id))
        progress.state = "manifest"
        await run.manifest(queue, store)
        await run.copy(store, roots, exclude)
        await run.send(ResyncEnd(start, pm.term))
        progress.state, progress.finished = "done", time.time()
        log.info("%s: resync of %s sent: %d files compared, %d bytes of %d sent, %d "
                 "orphan(s); streaming from LSN %d", pm.name, member, progress.files_done,
                 progress.bytes_sent, progress.bytes_done, progress.orphans, start + 1)
        return start + 1
    except BaseException as exc:
        peer.hold_lsn = 0
        progress.state, progress.finished = "failed", time.time()
        progress.error = repr(exc) if not isinstance(exc, asyncio.CancelledError) else \
            "connection ended"
        raise
    finally:
        peer.manifest = None
        peer.resyncing = False
        if store is not None:
            await asyncio.shield(run.worker.run(store.discard))
        await asyncio.to_thread(run.worker.close)


class _Resync:
    """One resync of one receiver (:func:`send_resync` sets it up and cleans
    up): the manifest phase, then the copy phase, on one worker thread."""

    def __init__(self, pm: ResyncSource, conn: Connection, peer: ResyncPeer, member: str,
                 progress: ResyncProgress) -> None:
        self.pm, self.conn, self.peer, self.member = pm, conn, peer, member
        self.progress = progress
        self.hb = pm.cfg.timeouts.heartbeat
        self.worker = _Worker()
        self.last_sent = time.monotonic()

    async def send(self, msg: Message) -> None:
        await self.conn.send(msg)
        self.last_sent = time.monotonic()

    async def manifest(self, queue: asyncio.Queue[Manifest | ManifestEnd],
                       store: ManifestStore) -> None:
        """Store the receiver's MANIFEST frames until MANIFEST_END; a
        heartbeat whenever it has been quiet for a heartbeat interval."""
        while True:
            try:
                msg = await wait_for(queue.get(), self.hb)
            except TimeoutError:
                await self.send(self.pm.heartbeat_for(self.peer))
                continue
            if isinstance(msg, ManifestEnd):
                if msg.entries != store.count:
                    raise ProtocolError(f"MANIFEST_END says {msg.entries} entries, got "
                                        f"{store.count}")
                break
            if isinstance(msg, Manifest):
                await self.worker.run(_add_items, store, msg)
        await self.worker.run(store.commit)

    async def copy(self, store: ManifestStore, roots: list[str], exclude: list[str]) -> None:
        """Compare our trees with the manifest and send the ops that make the
        replica equal (LSN-0 records), with progress and heartbeats."""
        pm, progress, hb = self.pm, self.progress, self.hb
        progress.files_total, progress.bytes_total = await self.worker.run(count_tree, roots,
                                                                           exclude)
        progress.state = "copying"
        log.info("%s: %s's manifest holds %d entries; comparing (%s)", pm.name, self.member,
                 store.count, progress.mode)
        ops = diff_ops(ResyncReconciler(roots, exclude, store, progress.mode, progress))
        last_progress = 0.0
        done = False
        while not done:
            batch, done = await self.worker.run(_take, ops, BATCH_BYTES, hb / 2, pm.term)
            if batch:
                await self.send(Records(pm.term, raw=batch))
            if done or time.monotonic() - last_progress >= PROGRESS_EVERY:
                await self.send(_progress_msg(progress, pm.term))
                last_progress = time.monotonic()
            if time.monotonic() - self.last_sent >= hb:
                await self.send(pm.heartbeat_for(self.peer))


def _add_items(store: ManifestStore, msg: Manifest) -> None:
    for item in msg.items:
        try:
            store.add(item)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
