"""The primary: capture -> mirror log -> every connected receiver.

Flow: capture emits op batches; each batch is stamped with the current term
and the next LSNs and appended to the log with one fsync (group commit); only
then are the records visible to the per-peer senders, so nothing that is not
durable on the primary is ever shipped.

Per receiver (one TLS connection, receiver dials us): after HELLO the sender
streams from the receiver's last durable LSN + 1. Back-pressure: at most
``WINDOW_BYTES`` may be unacknowledged; beyond that the sender waits for ACKs
(and the socket's own ``drain``).

Resync: when the receiver's next LSN is no longer in the log (it fell off
the retained log, or is new and the log was trimmed), the sender runs a
``checksum`` difference resync (:mod:`mirrorkit.agent.resync.compare`): after
``RESYNC_BEGIN(S)`` the receiver sends its manifest, the primary sends only
the ops that make the replica equal to its tree (records with LSN 0), then
``RESYNC_END(S)`` and the log from ``S+1``. An operator can ask for one with
any compare mode (:meth:`PrimaryMirror.request_resync`, ``POST /resync``);
it runs at the top of that peer's send loop. A receiver that crashes during
a resync asks again from its old LSN and gets a new resync. A receiver that
cannot apply a record says so (``APPLY_FAILED``): a checksum resync of it
when it asks for one, else only its status shows the reason. During a
resync the peer's retention floor is held at ``S`` (``hold_lsn``) while its
``acked_lsn`` stays what it has: status shows it resyncing, not caught up.

Health: the worker is alive only while capture works (:mod:`.capture_state`):
a failed capture, or one restarting after a failure until its scan
completes, makes ``/health`` and ``/primary`` answer 503 with the reason.
Lag seconds come from a bounded history of append times
(:mod:`.append_times`), so a peer down for hours costs no memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirrorkit.agent.capture import Capture, MountParams, Unmirrorable, new_capture
from mirrorkit.agent.capture.mount.capture import MountCapture
from mirrorkit.agent.capture.mount.marks import LoggedMark, find_last_mark
from mirrorkit.agent.capture.reconcile import CaptureError
from mirrorkit.agent.log.records import Op, OpKind, Record
from mirrorkit.agent.log.segments import LogError, MirrorLog
from mirrorkit.agent.log.terms import TermHistory, last_shared
from mirrorkit.agent.resync.compare import MODES, ResyncProgress
from mirrorkit.agent.resync.primary import send_resync
from mirrorkit.agent.state import StateUnreadable, atomic_write_json, read_json_object
from mirrorkit.agent.stream.append_times import AppendTimes
from mirrorkit.agent.stream.capture_state import CaptureState
from mirrorkit.agent.stream.peers import PeerState, peer_state
from mirrorkit.agent.stream.sync_ack import SyncAck
from mirrorkit.agent.stream.worker import MirrorWorker
from mirrorkit.agent.transport.conn import (
    Connection,
    PeerRefused,
    serve,
    server_context,
    server_handshake,
)
from mirrorkit.agent.transport.frames import (
    MAX_RECORDS_PER_FRAME,
    Ack,
    ApplyFailed,
    Error,
    Heartbeat,
    Hello,
    Manifest,
    ManifestEnd,
    ProtocolError,
    Records,
)
from mirrorkit.agent.util import clock
from mirrorkit.agent.util.aio import Backoff, race, wait_for
from mirrorkit.atomicfile import fsync_dir

__all__ = ["PrimaryMirror"]

log = logging.getLogger(__name__)

# How long a mount batch may wait for the log before the mount stops taking
# writes (capture/mount/capture.py, "Bounds"): far above a slow fdatasync or
# a repair holding the emit lock, far below "hangs for ever".
MOUNT_STALL_LIMIT = 30.0
# Checksum resyncs a "lost" mount start owes its receivers (see below).
MOUNT_RESYNC_OWED = "mount-resync-owed.json"

BATCH_BYTES = 1 << 20
WINDOW_BYTES = 8 << 20
INLINE_READ_BYTES = 64 << 10  # a log read this small stays on the loop (see _read)


class PrimaryMirror(MirrorWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        mdir = self.agent.mirror_dir(self.cfg.name)
        self.log: MirrorLog  # set by open()
        self.history: TermHistory  # set by open()
        self.index_path = mdir / "blockindex.db"
        # Every member that can receive from us: the other failover members
        # (whichever the inventory made primary) and the async ones.
        self.peers: dict[str, PeerState] = {
            n: PeerState("async" if m.member_class == "async" else "backup")
            for n, m in self.cfg.members.items()
            if m.member_class in ("failover", "async") and n != self.host
        }
        # (first LSN of a batch, wall time appended): ages of unacked records.
        self._times = AppendTimes()
        self.capture = CaptureState()
        self.unmirrorable = Unmirrorable(f"{self.cfg.name}:capture")  # outlives capture runs
        self._new_data = asyncio.Event()
        self.emit_lock = asyncio.Lock()  # see emit()
        self._started = time.time()  # age floor for records logged before a restart
        self._capture: Capture | None = None
        self._resync_ids = 0
        self.own_term = self.roles.term  # set again by start()
        self._final_lsn: int | None = None  # set by stop()
        self.handing_over: str | None = None  # the member a switchover hands over to
        # Its answer to the HANDOVER: a heartbeat as primary of the new term
        # (accepted), or an ERROR (refused, the reason kept). See handover_outcome().
        self.handover_accepted = asyncio.Event()
        self.handover_refused: str | None = None
        self.handover_settled = asyncio.Event()  # the switchover has its outcome
        self.handover_sent = False  # the HANDOVER is written: send nothing more
        # Sync mode: through which LSN an fsync may be acknowledged (see
        # sync_acked_lsn()); the arbiter link carries its requests.
        self.sync = SyncAck(self.name, self.cfg.mode, self.cfg.timeouts.qos,
                            self.cfg.arbiter_name, self._durable_end, self.backup_peer,
                            lambda: self.own_term, self._bytes_between)
        # Each called on the loop with the new sync_acked_lsn() when it advances.
        self.sync_ack_listeners: list[Callable[[int], None]] = self.sync.listeners

    async def open(self) -> None:
        if not hasattr(self, "log"):
            self.log, self.history = await asyncio.to_thread(self._open_files)

    def _open_files(self) -> tuple[MirrorLog, TermHistory]:
        mirror_log = self.open_log()  # the recovery scan
        return mirror_log, TermHistory.load(self.mirror_dir() / "terms.json", mirror_log)

    async def start(self) -> None:
        await self.open()
        await self.roles.note_primary(self.host)
        # The term this worker is primary of: its records and heartbeats carry
        # it even if the role owner moves on before the worker stops (a
        # change captured after a step-down is then a divergent tail of the
        # old term, quarantined at rejoin, never a record of the new term).
        self.own_term = self.roles.term
        log.info("%s: primary of %s, term %d, log LSN %d..%d", self.name, self.cfg.name,
                 self.state.term, self.log.first_lsn, self.log.last_lsn)
        if self.cfg.capture == "mount":
            self._load_owed()
        self.servers.append(await serve(self.listen_address, self.me.port,
                                        server_context(self.cfg.tls), self._session, self.name,
                                        self.sessions,
                                        member_sources=self.member_sources()))
        log.info("%s: listening on %s:%d", self.name, self.listen_address, self.me.port)
        self.spawn(self._capture_loop(), "capture")
        self.spawn(self._sync_loop(), "sync-ack")
        self.start_companions()

    async def stop(self) -> None:
        if self._capture is not None:
            try:
                await wait_for(self._capture.stop(), 5.0)
            except Exception as exc:
                log.warning("%s: capture stop: %r", self.name, exc)
        await self._linger_for_handover()
        for peer in self.peers.values():
            if peer.task is not None:
                peer.task.cancel()
        await super().stop()
        if hasattr(self, "log"):
            self._final_lsn = self.log.last_lsn  # the closed log knows it no more
            self.log.close()

    # -- switchover: the handover's answer -----------------------------------

    def announce_timeout(self) -> float:
        """How long a switchover waits for the arbiter's echo of our step-down
        (a round trip and the arbiter's fsync)."""
        return max(1.0, self.cfg.timeouts.qos)

    def handover_linger(self) -> float:
        """How long the connection to the new primary stays open after the
        HANDOVER, for its answer: its state save (an fsync) and no more."""
        return min(max(2.0, 2 * self.cfg.timeouts.qos), 10.0)

    async def handover_outcome(self, member: str) -> str:
        """After the HANDOVER went out: "accepted", "refused: <reason>", or
        "unconfirmed" (no answer within the linger, or the connection ended
        without one)."""
        peer = self.peers[member]
        accepted = asyncio.ensure_future(self.handover_accepted.wait())
        # The session ending (the connection closed) ends the wait too; it
        # is only watched here, never cancelled.
        waiters: list[asyncio.Future[Any]] = [accepted]
        if peer.task is not None:
            waiters.append(peer.task)
        try:
            await asyncio.wait(waiters, timeout=self.handover_linger(),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            accepted.cancel()
            await asyncio.gather(accepted, return_exceptions=True)
        if self.handover_accepted.is_set():
            return "accepted"
        if self.handover_refused is not None:
            return f"refused: {self.handover_refused}"
        return "unconfirmed"

    async def _linger_for_handover(self) -> None:
        # Closing the connection to the new primary while its HANDOVER may be
        # unread there loses it: a close with unread data in our socket
        # sends a reset, and a reset makes the peer's stream reader drop
        # what it buffered. The new primary closes it once it has answered.
        name = self.handing_over
        peer = self.peers.get(name) if name is not None else None
        if peer is None or peer.task is None or peer.task.done() \
                or self.handover_settled.is_set():
            return
        # The switchover still tells the arbiter, sends the HANDOVER and waits
        # for the answer (it runs to its end, shielded): bounded by those.
        with contextlib.suppress(TimeoutError):
            await wait_for(self.handover_settled.wait(),
                           2 * self.announce_timeout() + self.handover_linger() + 1.0)

    # -- capture -> log -----------------------------------------------------

    async def _capture_loop(self) -> None:
        backoff = Backoff(1.0, 30.0)
        while True:
            self._capture = new_capture(list(self.cfg.targets), list(self.cfg.exclude),
                                        self.index_path, self.cfg.capture,
                                        unmirrorable=self.unmirrorable,
                                        mount=self._mount_params())
            self.capture.started()
            if self.capture.restarts:
                log.warning("%s: capture restarting (restart %d); healthy again once its "
                            "scan completes", self.name, self.capture.restarts)
            fence_now = getattr(self._capture, "fence_now", None)
            if fence_now is not None:  # mount: read-only the moment we step down
                self.roles.step_down_listeners.append(fence_now)
            on_acked = getattr(self._capture, "on_acked", None)
            if on_acked is not None:  # mount: a sync fsync waits for this
                self.sync_ack_listeners.append(on_acked)
            try:
                await self._capture.run(self._capture_emit)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.capture.state == "running" and time.time() - self.capture.since > 10:
                    backoff.reset()  # it worked for a while: start the backoff over
                delay = backoff.next()
                self.capture.failed(str(exc) or repr(exc), delay)
                log.error("%s: capture failed: %r; /health and /primary answer 503; "
                          "restarting in %.1fs", self.name, exc, delay,
                          exc_info=exc if not isinstance(exc, CaptureError) else None)
                await asyncio.sleep(delay)
            finally:
                if fence_now is not None:
                    with contextlib.suppress(ValueError):
                        self.roles.step_down_listeners.remove(fence_now)
                if on_acked is not None:
                    with contextlib.suppress(ValueError):
                        self.sync_ack_listeners.remove(on_acked)

    async def drain_capture(self) -> None:
        """A switchover stopped writes: with the ``mount`` capture, fence the
        mount and wait until all it made is logged (exact); ``watch`` has no
        such barrier (the switchover waits for a quiet log instead)."""
        if isinstance(self._capture, MountCapture) and not await self._capture.drain():
            log.warning("%s: the mount did not confirm its fence in time; the switchover "
                        "relies on the quiet period", self.name)

    def _mount_params(self) -> MountParams | None:
        if self.cfg.capture != "mount":
            return None
        assert self.cfg.mount_socket is not None
        return MountParams(self.cfg.mount_socket, self.host, self._last_mount_mark,
                           self._write_lease_left, self.cfg.timeouts.heartbeat,
                           resync_peers=self._resync_peers_of_mount,
                           stall_limit=max(MOUNT_STALL_LIMIT, 4 * self.cfg.timeouts.qos),
                           acked_lsn=self.sync_acked_lsn,
                           may_log=lambda: self.roles.holds_primary
                           and self.roles.term == self.own_term)

    def _resync_peers_of_mount(self, why: str) -> None:
        """The mount's log is not a faithful history of its backing store any
        more (capture/mount/capture.py, the "lost" start): every receiver of
        the mirror, connected yet or not, gets a checksum resync against the
        tree itself (a peer that connects later finds it pending). The debt
        is persisted first (``mount-resync-owed.json``, cleared per peer as
        its resync completes): a restart before they are done owes them
        still — the next start resumes exactly and would not know."""
        owed = sorted(self.peers)
        atomic_write_json(self._owed_path, {"peers": owed, "why": why})
        self._ask_owed(owed, why)

    @property
    def _owed_path(self) -> Path:
        return self.mirror_dir() / MOUNT_RESYNC_OWED

    def _ask_owed(self, names: list[str], why: str) -> None:
        started = []
        for name in names:
            peer = self.peers.get(name)
            if peer is None:
                continue
            if peer.resyncing and peer.resync is not None and peer.resync.mode == "checksum":
                continue  # a checksum resync that runs now compares the tree as it is
            peer.pending = peer.resync = self._new_progress("checksum", "mount", False)
            peer.acked_event.set()  # wake its send loop, if it has one
            started.append(f"{name} id {peer.pending.id}")
        log.warning("%s: %s; checksum resync of every receiver (%s)", self.name, why,
                    ", ".join(started) or "none configured")

    def _load_owed(self) -> None:
        """At start: checksum resyncs a "lost" mount start owed and that did
        not complete before we stopped."""
        try:
            raw = read_json_object(self._owed_path)
        except StateUnreadable as exc:
            # Unreadable: owe every receiver one (the safe side).
            log.error("%s: %s is unreadable (%s): a checksum resync of every receiver",
                      self.name, self._owed_path, exc)
            raw = {"peers": sorted(self.peers), "why": "unreadable record of owed resyncs"}
        if raw is None:
            return
        peers = raw.get("peers")
        names = [n for n in peers if isinstance(n, str)] if isinstance(peers, list) else \
            sorted(self.peers)
        if names:
            self._ask_owed(names, f"owed since an earlier start ({raw.get('why', '?')})")

    def _owed_done(self, member: str) -> None:
        """(worker thread) ``member``'s checksum resync completed: it owes nothing more."""
        try:
            raw = read_json_object(self._owed_path)
        except StateUnreadable:
            return  # _load_owed treats it as owing all: nothing to clear here
        if raw is None or not isinstance(raw.get("peers"), list) or member not in raw["peers"]:
            return
        rest = [n for n in raw["peers"] if n != member]
        if rest:
            atomic_write_json(self._owed_path, {**raw, "peers": rest})
        else:
            self._owed_path.unlink(missing_ok=True)
            fsync_dir(self._owed_path.parent)

    def _write_lease_left(self) -> float:
        """How long the mount may stay writable: this member's own lease (the
        configured qos without one: a member with no peer to echo it)."""
        # While a switchover's on_demote runs (keeps_vip) the application may
        # still write as it shuts down: the mount stays open until the hook
        # ends, then the drain fences it.
        if not (self.roles.writable or self.roles.keeps_vip) \
                or self.roles.role != "primary" or self.roles.term != self.own_term:
            return 0.0
        lease = self.roles.lease
        if lease is None or lease.waived:
            return self.cfg.timeouts.qos
        return max(0.0, lease.remaining())

    async def _last_mount_mark(self) -> LoggedMark | None:
        return await asyncio.to_thread(functools.partial(find_last_mark, self.log, strict=True))

    async def _capture_emit(self, ops: list[Op]) -> int:
        lsn = await self.emit(ops)
        if any(op.kind is OpKind.MARK and op.target == "scan-complete" for op in ops):
            was = self.capture.state
            self.capture.scan_complete()
            if was == "restarting":
                log.info("%s: capture works again (scan complete)", self.name)
        return lsn

    def alive(self) -> bool:
        return super().alive() and self.capture.healthy

    def error(self) -> str | None:
        return super().error() or self.capture.reason()

    async def emit(self, ops: list[Op]) -> int:
        """Durably log ``ops`` (group commit), enforce retention, wake the senders.

        Capture and repair both emit: ``emit_lock`` keeps appends one at a
        time; a caller that must keep several batches together (a repair
        re-sending a whole file) holds the lock and calls :meth:`emit_held`.
        """
        async with self.emit_lock:
            return await self.emit_held(ops)

    async def emit_held(self, ops: list[Op]) -> int:
        """:meth:`emit` for a caller that already holds ``emit_lock``; the
        LSN of the last record (the log's end when ``ops`` is empty)."""
        if not ops:
            return self.log.last_lsn
        now = time.time()
        records = await asyncio.to_thread(self._append, ops, self._retention_floor())
        # Forget what every peer acknowledged first, so that the history's
        # oldest entry (kept through decimation) is the slowest peer's.
        self._times.forget_through(
            min((p.acked_lsn for p in self.peers.values()), default=self.log.last_lsn))
        self._times.append(records[0].lsn, now)
        self._new_data.set()
        self._new_data = asyncio.Event()
        return records[-1].lsn

    def _append(self, ops: list[Op], floor: int) -> list[Record]:
        # One worker thread at a time (capture awaits emit), so append and
        # trim never race each other; readers in the loop are safe (see log).
        term = self.own_term
        # The term history says where our term starts before any record of it
        # is in the log (log/terms.py): durable first, then the records.
        self.history.note(term, self.log.last_lsn + 1)
        records = self.log.append_ops(ops, term)
        if self.log.size > self.log.max_bytes:
            self.log.trim(floor)
        return records

    def _retention_floor(self) -> int:
        """The log may drop what every peer acknowledged or a resync holds past."""
        return min((max(p.acked_lsn, p.hold_lsn) for p in self.peers.values()),
                   default=self.log.last_lsn)

    # -- lag ----------------------------------------------------------------

    def lag(self, acked: int) -> tuple[int, int, float]:
        """(bytes, records, seconds) between ``acked`` and the log end: the
        retained log bytes after it, the LSN distance, and the age of the
        oldest unacknowledged record (records logged before this worker
        started count from its start)."""
        last = self.log.last_lsn
        if acked >= last:
            return 0, 0, 0.0
        oldest = self._times.oldest_unacked(acked)
        if oldest is None:
            oldest = self._started
        return (self.log.bytes_between(acked + 1, last), last - acked,
                max(0.0, time.time() - oldest))

    def peer_lag(self, peer: PeerState) -> tuple[int, int, float]:
        """A peer's lag, connected or not: from its acknowledged LSN. A
        resyncing peer also lacks what its resync has not compared yet, and
        is behind at least since the resync started."""
        nbytes, records, seconds = self.lag(peer.acked_lsn)
        r = peer.resync
        if peer.resyncing and r is not None:
            nbytes += max(0, r.bytes_total - r.bytes_done)
            seconds = max(seconds, time.time() - r.started)
        return nbytes, records, seconds

    # -- sync mode ----------------------------------------------------------

    def sync_acked_lsn(self) -> int:
        """The LSN through which an fsync on the mount may be acknowledged.

        ``mode: sync``: what the backup has durably in its log while it is in
        sync; the log's durable end only while this primary runs without it,
        which the arbiter confirmed and persisted first (stream/sync_ack.py).
        ``mode: async`` (or no backup): the log's durable end. Never goes back."""
        return self.sync.value()

    async def _sync_loop(self) -> None:
        # At each append (the senders' wake-up; the log's end is published
        # only once durable) and a few times a heartbeat (a silent backup
        # sends no ACK that would move anything). No await between the check
        # and taking the event: an append cannot slip in between unseen.
        seen = -1
        while True:
            if self._durable_end() == seen:
                await _wait(self._new_data, self.cfg.timeouts.heartbeat / 4)
            seen = self._durable_end()
            self.sync.update()

    def _durable_end(self) -> int:
        return self.log.last_lsn if hasattr(self, "log") else 0

    def _bytes_between(self, first: int, last: int) -> int:
        return self.log.bytes_between(first, last) if first <= last else 0

    # -- per-peer session ---------------------------------------------------

    def last_lsn(self) -> int:
        if self._final_lsn is not None:
            return self._final_lsn
        return self.log.last_lsn if hasattr(self, "log") else 0

    async def _check_term(self, term: int, member: str) -> None:
        """Every message carries its sender's term: a higher one means another
        member was promoted, so we stop acting as primary at once."""
        if term > self.term:
            await self.roles.observe_term(term, None, member)
            raise PeerRefused(f"{member} knows term {term} > ours: we are no longer its "
                              f"primary")

    async def _session(self, conn: Connection) -> None:
        me = Hello(self.cfg.name, self.host, "primary", self.state.term, self.log.last_lsn,
                   [list(e) for e in self.history.entries])
        hello = await server_handshake(conn, self.cfg, me, ("backup", "async"))
        conn.term_fn = lambda: self.term
        await self._check_term(hello.term, hello.member)
        if not self.roles.holds_primary:
            raise PeerRefused("this member is stepping down as primary")
        theirs = [(t, f) for t, f in hello.history]
        shared = last_shared(self.history.entries, self.log.last_lsn, theirs, hello.last_lsn)
        peer = self.peers.setdefault(hello.member, PeerState(hello.role))
        if peer.task is not None and not peer.task.done():
            log.warning("%s: %s reconnected; dropping its previous connection", self.name,
                        hello.member)
            peer.task.cancel()
        peer.task = asyncio.current_task()
        peer.conn = conn
        peer.role, peer.connected, peer.seen = hello.role, True, True
        peer.last_heard, peer.stamp_in = clock.now(), 0.0
        peer.disconnected_at, peer.hold_lsn = None, 0
        peer.acked_lsn = peer.received_lsn = shared
        peer.last_seen = time.monotonic()
        peer.clear_inflight()
        if shared < hello.last_lsn:
            # Its log holds LSN shared+1.. that we never wrote (log/terms.py):
            # it quarantines them itself (stream/divergence.py); we bring its
            # replica back to our version.
            log.warning("%s: %s diverged after LSN %d (it holds %d, our log %d): it "
                        "quarantines its tail; checksum resync follows", self.name,
                        hello.member, shared, hello.last_lsn, self.log.last_lsn)
            peer.pending = peer.resync = self._new_progress("checksum", "divergence", False)
        log.info("%s: %s (%s) connected at LSN %d (shared %d); log holds %d..%d", self.name,
                 hello.member, hello.role, hello.last_lsn, shared, self.log.first_lsn,
                 self.log.last_lsn)
        try:
            await race(self._send_loop(conn, peer, hello.member, shared + 1),
                       self._recv_loop(conn, peer, hello.member))
        finally:
            if peer.task is asyncio.current_task():
                peer.connected = False
                peer.conn = None
                peer.disconnected_at = time.time()
                peer.task = None

    async def _recv_loop(self, conn: Connection, peer: PeerState, member: str) -> None:
        while True:
            msg = await conn.recv(self.cfg.timeouts.qos)
            peer.last_seen = time.monotonic()
            peer.last_heard = clock.now()
            if not isinstance(msg, Records):
                await self._check_term(msg.term, member)
            if isinstance(msg, Ack):
                if msg.lsn > self.log.last_lsn or msg.received > self.log.last_lsn:
                    raise ProtocolError(f"ACK of LSN {msg.lsn} beyond our log end")
                peer.acked_lsn = max(peer.acked_lsn, msg.lsn)
                peer.received_lsn = max(peer.received_lsn, msg.received)
                peer.acked_through(peer.acked_lsn)
                peer.acked_event.set()
                self.sync.update()
                if peer.apply_error and (msg.lsn >= peer.apply_error_lsn > 0
                                         or peer.clear_error_on_ack):
                    peer.apply_error, peer.clear_error_on_ack = None, False
            elif isinstance(msg, ApplyFailed):
                self._apply_failed(peer, member, msg)
            elif isinstance(msg, Heartbeat):
                if (member == self.handing_over and msg.role == "primary"
                        and msg.term == self.roles.term and not self.roles.holds_primary):
                    self.handover_accepted.set()  # primary of the term we handed it
                self._on_heartbeat(peer, member, msg)
            elif isinstance(msg, Manifest | ManifestEnd):
                if peer.manifest is None:
                    raise ProtocolError(f"{type(msg).__name__} outside a resync")
                await peer.manifest.put(msg)
            elif isinstance(msg, Error):
                log.warning("%s: %s reports error: %s", self.name, member, msg.reason)
                if member == self.handing_over and not self.roles.holds_primary:
                    self.handover_refused = msg.reason
                return
            else:
                raise ProtocolError(f"unexpected {type(msg).__name__} from a receiver")

    async def _send_loop(self, conn: Connection, peer: PeerState, member: str,
                         next_lsn: int) -> None:
        hb = self.cfg.timeouts.heartbeat
        last_hb = 0.0
        while True:
            if self.handing_over == member and not self.roles.holds_primary:
                # A switchover to it: its HANDOVER is written on this very
                # connection once our step-down is durable and the arbiter
                # knows the new term. Do not close it; heartbeats until then
                # (or it takes us for silent), nothing after: what it has not
                # read when it closes would reset the connection under the
                # HANDOVER's answer.
                if not self.handover_sent and time.monotonic() - last_hb >= hb:
                    await conn.send(self.heartbeat_for(peer))
                    last_hb = time.monotonic()
                await asyncio.sleep(hb / 4)
                continue
            if next_lsn < self.log.first_lsn:
                log.warning("%s: %s needs LSN %d but the log starts at %d", self.name, member,
                            next_lsn, self.log.first_lsn)
                next_lsn = await self._resync(conn, peer, member,
                                              self._new_progress("checksum", "auto", False))
            elif peer.pending is not None:
                progress, peer.pending = peer.pending, None
                next_lsn = await self._resync(conn, peer, member, progress)
            if time.monotonic() - last_hb >= hb:
                await conn.send(self.heartbeat_for(peer))
                last_hb = time.monotonic()
            if peer.inflight_bytes >= WINDOW_BYTES:
                peer.acked_event.clear()
                await _wait(peer.acked_event, hb)
                continue
            if next_lsn > self.log.last_lsn:
                await _wait(self._new_data, hb)
                continue
            if not self.roles.holds_primary:
                raise PeerRefused("no longer the primary (a higher term exists)")
            try:
                data, count = await self._read(next_lsn)
            except LogError:
                if next_lsn >= self.log.first_lsn:
                    raise
                continue  # trimmed meanwhile: the top of the loop resyncs
            await conn.send(Records(self.own_term, raw=data))
            next_lsn += count
            peer.sent(next_lsn - 1, len(data))
            self.metrics.sent(member, count, len(data))

    async def _read(self, next_lsn: int) -> tuple[bytes, int]:
        """Up to ``BATCH_BYTES`` (and ``MAX_RECORDS_PER_FRAME`` records: the
        receiver refuses more in one frame) of the log from ``next_lsn``: in a worker
        thread (a cold read of 1 MiB waits for the disk), except the few
        bytes just appended for a caught-up peer, which the page cache holds
        and which are not worth a thread hop. Safe against appends and trims
        in the emitting thread (MirrorLog's "Threading")."""
        if self.log.bytes_between(next_lsn, self.log.last_lsn) <= INLINE_READ_BYTES:
            return self.log.read_raw(next_lsn, BATCH_BYTES, MAX_RECORDS_PER_FRAME)
        return await asyncio.to_thread(self.log.read_raw, next_lsn, BATCH_BYTES,
                                       MAX_RECORDS_PER_FRAME)

    def _on_heartbeat(self, peer: PeerState, member: str, msg: Heartbeat) -> None:
        if msg.stamp > 0:
            peer.stamp_in = msg.stamp
        # Only the backup's echo renews the lease: it is the member that
        # could take over. An async member hearing us proves nothing.
        lease = self.roles.lease
        if lease is not None and peer.role == "backup" and msg.echo > 0:
            lease.renew(msg.echo, member)

    def heartbeat_for(self, peer: PeerState) -> Heartbeat:
        lag_bytes, lag_records, lag_seconds = self.peer_lag(peer)
        # Sync mode, to the backup: what we have acknowledged to applications,
        # so that the backup's idea of being active rests on our mode, not on
        # its own configuration (which an apply may have changed first).
        acked = self.sync_acked_lsn() \
            if self.cfg.mode == "sync" and peer.role == "backup" else 0
        return Heartbeat(self.own_term, self.log.last_lsn, "primary", lag_bytes, lag_records,
                         round(lag_seconds, 3), stamp=clock.now(), echo=peer.stamp_in,
                         sync_acked=acked)

    def backup_peer(self, name: str | None = None) -> tuple[str, PeerState] | None:
        """The backup (``name``, or the other failover member: after a DR
        promotion both failover members are receivers; the first connected
        one), as we see it; None when there is no such member."""
        found = [(n, p) for n, p in self.peers.items()
                 if self.cfg.members[n].member_class == "failover" and name in (None, n)]
        return next(((n, p) for n, p in found if p.connected), found[0] if found else None)

    # -- resync -------------------------------------------------------------

    def _new_progress(self, mode: str, by: str, keep_orphans: bool) -> ResyncProgress:
        self._resync_ids += 1
        return ResyncProgress(mode, by, keep_orphans, self._resync_ids)

    async def _resync(self, conn: Connection, peer: PeerState, member: str,
                      progress: ResyncProgress) -> int:
        peer.resync = progress
        try:
            next_lsn = await send_resync(self, conn, peer, member, progress)
        except BaseException:
            self.metrics.resync(member, "failed")
            raise
        self.metrics.resync(member, "done")
        peer.clear_error_on_ack = True  # its ACK of the end says it applied it
        if progress.mode == "checksum":
            await asyncio.to_thread(self._owed_done, member)
        return next_lsn

    def _apply_failed(self, peer: PeerState, member: str, msg: ApplyFailed) -> None:
        """The receiver cannot apply record ``msg.lsn``: show it; start the
        checksum resync it asks for (one that runs or waits covers it)."""
        if msg.lsn > self.log.last_lsn:
            raise ProtocolError(f"APPLY_FAILED for LSN {msg.lsn} beyond our log end")
        peer.apply_error, peer.apply_error_lsn = msg.reason, msg.lsn
        peer.clear_error_on_ack = False
        if not msg.resync:
            log.error("%s: %s stopped: %s", self.name, member, msg.reason)
            return
        log.warning("%s: %s: %s", self.name, member, msg.reason)
        if peer.pending is None and not peer.resyncing:
            peer.pending = peer.resync = self._new_progress("checksum", "auto", False)
            log.warning("%s: checksum resync of %s (id %d) to cover LSN %d", self.name,
                        member, peer.pending.id, msg.lsn)
        peer.acked_event.set()  # wake its send loop

    def request_resync(self, member: str | None, mode: str,
                       keep_orphans: bool) -> dict[str, int]:
        """Ask for a resync of ``member`` (every receiver when ``None``) at
        the next turn of its send loop; return ``{member: resync id}``.
        Raises ValueError for an unknown mode or member."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
        if member is not None and member not in self.peers:
            raise ValueError(f"{member!r} is not a receiver of {self.cfg.name} (receivers: "
                             f"{', '.join(sorted(self.peers)) or 'none'})")
        ids: dict[str, int] = {}
        for name in [member] if member is not None else sorted(self.peers):
            peer = self.peers[name]
            progress = self._new_progress(mode, "operator", keep_orphans)
            peer.pending = peer.resync = progress
            ids[name] = progress.id
            log.info("%s: operator asked for a %s resync of %s (id %d%s)", self.name, mode,
                     name, progress.id, ", keeping orphans" if keep_orphans else "")
        return ids

    # -- status -------------------------------------------------------------

    def _lease_withheld(self) -> str | None:
        # Only the mount capture has one (as with fence_now and on_acked).
        withheld = getattr(self._capture, "lease_withheld", None)
        return None if withheld is None else withheld()

    def status(self) -> dict[str, Any]:
        out = super().status()
        peers = {name: self._peer_status(p) for name, p in self.peers.items()}
        peers.update(self.companion_status())
        out.update({
            "lsn": self.log.last_lsn, "applied_lsn": self.log.last_lsn,
            "log_first_lsn": self.log.first_lsn, "log_bytes": self.log.size,
            "lag_bytes": 0, "lag_records": 0, "lag_seconds": 0.0, "connected": True,
            "capture": {**self.capture.as_dict(),
                        "unmirrorable": self.unmirrorable.as_dict(),
                        # mount capture: the mount is read-only although we may
                        # write, and why (capture/mount/capture.py); else null
                        "write_lease_withheld": self._lease_withheld()},
            "append_times": len(self._times),
            "peers": peers,
            "sync_acked_lsn": self.sync_acked_lsn(),
        })
        if self.cfg.mode == "sync":
            out["sync"] = self.sync.status()
        lease = self.roles.lease
        t = self.cfg.timeouts
        if (lease is not None and lease.expires_at() is None and not lease.waived
                and self.roles.holds_primary
                and time.time() - self._started < t.qos + 2 * t.heartbeat):
            # Just (re)started, waiting for a peer's first echo: "starting",
            # like a log still being opened, so that a routine agent restart
            # does not make keepalived's track file drop the VIP at once.
            out["starting"] = True
        return out

    def _peer_status(self, p: PeerState) -> dict[str, Any]:
        out: dict[str, Any] = {
            "role": p.role, "connected": p.connected, "state": peer_state(p),
            "acked_lsn": None, "received_lsn": None, "lag_bytes": None,
            "lag_records": None, "lag_seconds": None, "resyncing": p.resyncing,
            "needs_resync": False, "apply_error": p.apply_error,
            "disconnected_since": None if p.disconnected_at is None
            else round(p.disconnected_at, 3),
            "resync": None if p.resync is None else p.resync.as_dict(),
        }
        if p.seen:  # else: not heard from since we started; its position is unknown
            lag_bytes, lag_records, lag_seconds = self.peer_lag(p)
            out.update({"acked_lsn": p.acked_lsn, "received_lsn": p.received_lsn,
                        "lag_bytes": lag_bytes, "lag_records": lag_records,
                        "lag_seconds": round(lag_seconds, 3),
                        "needs_resync": not p.resyncing and lag_records > 0
                        and p.acked_lsn + 1 < self.log.first_lsn})
        return out


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await wait_for(event.wait(), timeout)
