"""A receiver (backup or async member): primary -> own log -> replica -> ACK.

Order per received batch, so that an ACK always means "survives my crash":

1. check the LSNs continue our log (a gap is a protocol error) and the term
   is not older than the one we know (a stale primary is refused);
2. append to our own mirror log (fsync);
3. apply into the replica roots (``targets``) and write the new applied LSN
   to ``applied.json``'s temp file;
4. one durability point for both: ``syncfs`` of each file system touched
   (replica and state directory), or an fsync per entry where syncfs is not
   usable (:class:`~mirrorkit.agent.apply.applier.Applier`);
5. rename the temp file over ``applied.json`` and fsync the state directory;
6. ``ACK(applied, received)``.

Steps 2-5, and everything else that touches the disk, are the base class's
(:class:`~mirrorkit.agent.stream.replica.Replica`); this module talks to
the primary.

Batches that arrive while one is being applied wait in a bounded inbox and
are then applied together (steps 2-6 once, one ACK for the highest LSN).

On start the receiver first applies what its log holds beyond the applied LSN
(received but not applied before a crash), then dials the primary and asks
for everything after its last logged LSN. Reconnects use exponential backoff.
The primary to dial is ``state.json``'s ``primary``, then the other failover
members in config order (a member that is not primary refuses to serve us).

A record that cannot be applied is never skipped (:mod:`.apply_failure`
decides: ask for a checksum resync, or stop the mirror on this member): the
records before it are applied and acknowledged, nothing after it is; the log
is cut back to the applied LSN (so a later HELLO claims no more) and the
primary is told with ``APPLY_FAILED``. Until a resync from the primary
covers it, records from the primary are read and dropped.

Resync (:mod:`mirrorkit.agent.resync.compare`): at ``RESYNC_BEGIN`` the receiver
streams the manifest of its replica (:mod:`mirrorkit.agent.resync.receiver`)
while it keeps answering heartbeats, applies the LSN-0 records without
logging them (orphans go to quarantine, never into the void), and at
``RESYNC_END(S)`` persists ``S`` as applied and restarts its log at ``S+1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mirrorkit.agent.apply.applier import RecordFailed
from mirrorkit.agent.capture.mount.marks import find_last_mark
from mirrorkit.agent.capture.mount.wire import WireError
from mirrorkit.agent.log.records import Record
from mirrorkit.agent.log.terms import last_shared, term_at
from mirrorkit.agent.resync.receiver import ReceiverResync
from mirrorkit.agent.state import MirrorState
from mirrorkit.agent.stream.apply_failure import ApplyFailure
from mirrorkit.agent.stream.mount_rejoin import MountRejoin
from mirrorkit.agent.stream.replica import Replica
from mirrorkit.agent.transport.conn import (
    Connection,
    PeerOtherVersion,
    PeerRefused,
    client_context,
    client_handshake,
    connect,
    run_guarded,
    serve,
    server_context,
    server_handshake,
)
from mirrorkit.agent.transport.frames import (
    Ack,
    ApplyFailed,
    Error,
    Handover,
    Heartbeat,
    Hello,
    Message,
    ProtocolError,
    Records,
    ResyncBegin,
    ResyncEnd,
    ResyncProgress,
)
from mirrorkit.agent.util import clock
from mirrorkit.agent.util.aio import Backoff, race, wait_for
from mirrorkit.agent.util.listening import ListenGuard

__all__ = ["ReceiverMirror"]

log = logging.getLogger(__name__)

INBOX_MESSAGES = 16  # received, not yet handled (each at most ~1 MiB of records)
MERGE_RECORDS = 50_000  # at most this many records in one coalesced apply


@dataclass(frozen=True, slots=True)
class _Closed:
    """The reader's last word in the inbox: the connection ended with ``exc``."""

    exc: BaseException


class ReceiverMirror(Replica):
    """A backup or async member's worker: dials the primary, receives, has
    :class:`~mirrorkit.agent.stream.replica.Replica` log and apply, acknowledges."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connected = False
        self.connected_to: str | None = None
        self.primary_lsn = 0
        # What the primary's last heartbeat said it acknowledged in sync mode
        # (0: it did not say: async, or a previous release).
        self.primary_sync_acked = 0
        self.primary_known = False  # primary_lsn was heard from a primary
        self.lag_bytes = 0
        self.lag_seconds = 0.0
        # When we last lost the primary (or started without one), and our lag
        # then: while disconnected the lag keeps growing from there.
        self.lost_at = time.time()
        self.lag_at_loss = 0.0
        self.received_records = 0  # since this process started
        self._manifest_task: asyncio.Task[None] | None = None
        self._resync_at: int | None = None  # this session's resync: its snapshot LSN
        self._conn: Connection | None = None  # the session's, while one runs
        self.mount_rejoin: MountRejoin | None = None
        # util/clock.now() when we last heard the primary (read off the
        # socket, not when handled: a long apply must not look like silence),
        # and the newest stamp it sent, which our heartbeats echo.
        self.last_heard_primary = 0.0
        self.primary_stamp = 0.0
        # Called with a HANDOVER from our primary (ha sets it: the switchover's
        # receiving side); None: a handover is refused.
        self.on_handover: Callable[[Handover], Awaitable[None]] | None = None
        # The primary's silence counts only while we listen.
        self.guard = ListenGuard(max_gap=self.cfg.timeouts.qos)
        self._backlogged = False
        self._echo_now = asyncio.Event()

    def primary_silence(self) -> float:
        """Seconds we have not heard our primary while we were listening
        (since this worker started, if never); 0 while we are backlogged
        on what it sent (the reader waits for room in the inbox)."""
        if self._backlogged:
            return 0.0
        return self.guard.silence(self.last_heard_primary)

    def known_lag_bytes(self) -> int | None:
        """Our lag as the primary last told us, 0 once we applied all it
        announced; None when no primary was heard since we started."""
        if not self.primary_known:
            return None
        return 0 if self.applied >= self.primary_lsn else int(self.lag_bytes)

    async def start(self) -> None:
        self.spawn(self.guard.run(), "listen-guard")
        await self.open()
        await asyncio.to_thread(self._apply_backlog)
        log.info("%s: %s of %s, term %d, log LSN %d, applied %d", self.name,
                 self.state.role, self.cfg.name, self.state.term, self.log.last_lsn,
                 self.applied)
        # Listening too: a member that dials us while looking for the primary
        # gets our HELLO (role backup/async) and moves on at once.
        self.servers.append(await serve(self.listen_address, self.me.port,
                                        server_context(self.cfg.tls), self._not_primary,
                                        self.name, self.sessions,
                                        member_sources=self.member_sources()))
        if self.cfg.capture == "mount" and self.cfg.mount_socket is not None:
            await self._check_mount()
        self.spawn(self._connect_loop(), "receive")
        self.start_companions()

    async def _check_mount(self) -> None:
        """Changes the mount made that the log never got (stream/mount_rejoin.py):
        asked once now, before the first session, and retried meanwhile if
        mountd does not answer."""
        assert self.cfg.mount_socket is not None
        self.mount_rejoin = MountRejoin(
            self.cfg.mount_socket, self.name, self.host, self.mirror_dir() / "quarantine",
            lambda: find_last_mark(self.log), self._mount_unlogged)
        try:
            await self.mount_rejoin.check()
        except (OSError, TimeoutError, WireError) as exc:
            log.warning("%s: cannot ask mirrorkit-mountd yet whether the mount holds "
                        "changes the log never got (%s); retrying in the background",
                        self.name, exc)
            self.spawn(self.mount_rejoin.run(), "mount-rejoin")

    def _mount_unlogged(self, why: str) -> None:
        # Records from the primary are dropped until its checksum resync has
        # brought every path to its version (apply_failure.py's resync path).
        self.failure = ApplyFailure(0, f"{why}; asking the primary for a checksum resync",
                                    True)
        conn = self._conn
        if conn is not None:  # a session runs: the next one reports it (APPLY_FAILED)
            # Kept with the sessions (the loop holds tasks only weakly; stop()
            # cancels and awaits them), dropped from there once closed.
            task = asyncio.get_running_loop().create_task(
                conn.close("checksum resync needed"), name=f"{self.cfg.name}:close-for-resync")
            self.sessions.add(task)
            task.add_done_callback(self.sessions.discard)

    def _hello(self) -> Hello:
        return Hello(self.cfg.name, self.host, self.state.role, self.state.term,
                     self.log.last_lsn, [list(e) for e in self.history.entries])

    async def _not_primary(self, conn: Connection) -> None:
        me = self._hello()
        hello = await server_handshake(conn, self.cfg, me, ("primary", "backup", "async"))
        log.info("%s: %s dialled us, but we are %s (primary: %s)", self.name, hello.member,
                 self.state.role, self.state.primary)

    async def _failed(self, conn: Connection, exc: RecordFailed, in_resync: bool) -> None:
        self.failure = self._failure_for(exc, in_resync)
        if in_resync and self.resync is not None:
            self.resync.fail(str(exc))
        else:
            await conn.send(Ack(self.applied, self.log.last_lsn, self.term))
        await self._report_failure(conn)

    async def _report_failure(self, conn: Connection) -> None:
        f = self.failure
        if f is not None:
            await conn.send(ApplyFailed(f.lsn, f.reason[:4000], int(f.resync), self.term))

    def _candidates(self) -> list[str]:
        names = [self.state.primary] if self.state.primary else []
        # Then every member that may be primary: the failover members, and
        # the DR copies (an operator may have promoted one).
        names += [n for n, m in self.cfg.members.items()
                  if m.member_class == "failover" and n != self.host and n not in names]
        names += [n for n, m in self.cfg.members.items()
                  if m.kind == "dr" and n != self.host and n not in names]
        return [n for n in names if n in self.cfg.members and n != self.host]

    async def _connect_loop(self) -> None:
        ctx = client_context(self.cfg.tls)
        backoff = Backoff(0.2, 5.0)
        while self.fatal is None:
            for name in self._candidates():
                member = self.cfg.members[name]
                try:
                    conn = await connect(member.address, member.port, ctx)
                except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                    log.info("%s: cannot reach %s at %s:%d: %s", self.name, name,
                             member.address, member.port, exc)
                    continue
                started = time.monotonic()
                await run_guarded(conn, self._session, self.name)
                self._conn = None
                if self.connected:
                    lag = self.primary_lsn > self.applied
                    self.lost_at = time.time()
                    self.lag_at_loss = self.lag_seconds if lag else 0.0
                self.connected = False
                if self.fatal is not None:
                    log.error("%s: replication stopped on this member: %s", self.name,
                              self.fatal)
                    return
                if time.monotonic() - started > 10.0:
                    backoff.reset()
            delay = backoff.next()
            log.info("%s: reconnecting in %.1fs", self.name, delay)
            await asyncio.sleep(delay)

    async def _session(self, conn: Connection) -> None:
        # Records logged but not applied (an apply error last time) go first.
        await asyncio.to_thread(self._apply_backlog)
        try:
            hello = await client_handshake(conn, self.cfg, self._hello(),
                                           ("primary", "backup"))
        except PeerOtherVersion as exc:
            if exc.member == self.state.primary:
                # Our primary, mid-upgrade: alive. Not silence (no failover
                # because of a rolling upgrade); replication waits for it.
                self.last_heard_primary = clock.now()
            raise
        conn.term_fn = lambda: self.term
        self._conn = conn
        if hello.role != "primary":
            log.info("%s: %s is %s, not the primary; trying the next member", self.name,
                     hello.member, hello.role)
            return
        if hello.term < self.state.term:
            raise PeerRefused(f"{hello.member} is primary of term {hello.term}, older than "
                              f"our term {self.state.term}")
        await self.roles.observe_term(hello.term, hello.member, hello.member)
        await self.roles.note_primary(hello.member)
        self.primary_history = [(t, f) for t, f in hello.history]
        shared = last_shared(self.primary_history, hello.last_lsn, self.history.entries,
                             self.log.last_lsn)
        if shared < self.log.last_lsn:
            await self._undo_divergent(shared, hello.member)
        self.connected, self.connected_to = True, hello.member
        self.last_heard_primary, self.primary_stamp = clock.now(), 0.0
        self.primary_lsn, self.primary_known = hello.last_lsn, True
        log.info("%s: connected to primary %s (term %d, LSN %d); we are at LSN %d",
                 self.name, hello.member, hello.term, hello.last_lsn, self.log.last_lsn)
        await self._report_failure(conn)
        await race(self._recv_loop(conn), self._heartbeat_loop(conn))

    async def _heartbeat_loop(self, conn: Connection) -> None:
        while True:
            self._echo_now.clear()
            with contextlib.suppress(TimeoutError):
                await wait_for(self._echo_now.wait(), self.cfg.timeouts.heartbeat)
            await conn.send(Heartbeat(self.term, self.applied, self.state.role,
                                      stamp=clock.now(), echo=self.primary_stamp))

    async def _recv_loop(self, conn: Connection) -> None:
        try:
            await self._recv(conn)
        finally:
            if self.resync is not None and self.resyncing:
                self.resync.fail("connection ended during the resync")
                self.resyncing = False
                self.metrics.resync(self.host, "failed")
            task, self._manifest_task = self._manifest_task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _recv(self, conn: Connection) -> None:
        # A reader task keeps reading while a batch is applied, so batches that
        # arrive meanwhile are applied together: one durability point and one
        # ACK (for the highest LSN) for all of them. The inbox is bounded, so a
        # slow receiver still pushes back on the primary through TCP.
        inbox: asyncio.Queue[Message | _Closed] = asyncio.Queue(INBOX_MESSAGES)

        async def read() -> None:
            try:
                await read_all()
            except (asyncio.IncompleteReadError, OSError, ProtocolError) as exc:
                # What arrived before the close is handled first (a HANDOVER
                # the primary sent just before it closed), then the close:
                # _handle ends the session when it gets there. Bounded: a
                # _handle stuck (say, on a send to a peer that stopped
                # reading) must not keep a dead session forever.
                with contextlib.suppress(TimeoutError):
                    await wait_for(inbox.put(_Closed(exc)), self.cfg.timeouts.qos)
                    await asyncio.sleep(self.cfg.timeouts.qos)
                raise exc from None

        async def read_all() -> None:
            while True:
                msg = await conn.recv(self.cfg.timeouts.qos)
                self.last_heard_primary = clock.now()
                if isinstance(msg, Heartbeat) and msg.stamp > 0:
                    self.primary_stamp = msg.stamp
                    self._echo_now.set()  # answer at once: its lease runs nearly all of qos
                if inbox.full():
                    # Backlogged on the primary's own data: while we wait, we
                    # do not read its heartbeats, but it is not silent.
                    self._backlogged = True
                    try:
                        await inbox.put(msg)
                    finally:
                        self._backlogged = False
                        self.last_heard_primary = clock.now()
                else:
                    inbox.put_nowait(msg)

        await race(read(), self._handle(conn, inbox))

    async def _handle(self, conn: Connection,
                      inbox: asyncio.Queue[Message | _Closed]) -> None:
        self._resync_at = None
        held: Message | _Closed | None = None
        while True:
            msg: Message | _Closed
            if held is not None:
                msg, held = held, None
            else:
                msg = await inbox.get()
            if isinstance(msg, _Closed):
                raise msg.exc
            if (isinstance(msg, Heartbeat) and msg.term == self.term - 1
                    and self.state.primary is None and self.state.role == "backup"):
                # A switchover: we learnt the new term (from the arbiter)
                # before our primary's HANDOVER, which follows its older
                # heartbeats on this connection. Skip them; wait for it.
                continue
            if msg.term != self.term and not isinstance(msg, Handover):
                # Older: a deposed primary (we learnt a newer term meanwhile,
                # e.g. from the arbiter). Newer: it must say so in a new HELLO.
                raise PeerRefused(f"primary sent term {msg.term}, ours is {self.term}: "
                                  f"{'stale primary' if msg.term < self.term else 'reconnect'}")
            if isinstance(msg, Records):
                held = await self._on_records(conn, msg, inbox)
            elif isinstance(msg, Heartbeat):
                self._on_heartbeat(msg)
            elif isinstance(msg, ResyncBegin):
                self._on_resync_begin(conn, msg)
            elif isinstance(msg, ResyncProgress):
                self._on_resync_progress(msg)
            elif isinstance(msg, ResyncEnd):
                await self._on_resync_end(conn, msg)
            elif isinstance(msg, Handover):
                await self._on_handover(conn, msg)
                return
            elif isinstance(msg, Error):
                log.warning("%s: primary reports: %s", self.name, msg.reason)
                return
            else:
                raise ProtocolError(f"unexpected {type(msg).__name__} from the primary")

    async def _on_records(self, conn: Connection, msg: Records,
                          inbox: asyncio.Queue[Message | _Closed]) -> Message | _Closed | None:
        """Apply ``msg``'s records; return the message taken from ``inbox``
        that ends a coalesced run, for :meth:`_handle` to handle next."""
        records = list(msg.records)
        held: Message | _Closed | None = None
        if self._resync_at is None:
            # Coalesce what is already waiting: consecutive, gapless batches.
            while not inbox.empty() and len(records) < MERGE_RECORDS:
                nxt = inbox.get_nowait()
                if (not isinstance(nxt, Records) or not nxt.records or not records
                        or nxt.records[0].lsn != records[-1].lsn + 1):
                    held = nxt
                    break
                records.extend(nxt.records)
        if self.failure is not None and (self._resync_at is None or self.failure.in_resync):
            return held  # nothing after the failed record is applied or acknowledged
        await self._records(conn, records, self._resync_at is not None)
        return held

    async def _on_handover(self, conn: Connection, msg: Handover) -> None:
        """Our primary stepped down for us (a switchover). It checked that
        we acknowledged its last LSN; we check it too, and the term; then we
        promote ourselves and answer with a heartbeat as primary of the new
        term. A refusal closes the connection with its reason (an ERROR the
        former primary reports)."""
        log.warning("%s: HANDOVER from %s: term %d at LSN %d (we are %s of term %d, "
                    "applied %d)", self.name, self.connected_to, msg.term, msg.lsn,
                    self.state.role, self.term, self.applied)
        dr = self.state.role == "async" and self.me.kind == "dr"
        if self.on_handover is None or not (self.state.role == "backup" or dr):
            raise PeerRefused(f"HANDOVER to a {self.state.role} member: refused")
        # Term + 1; or term already, when we learnt it before the HANDOVER
        # arrived (the old primary's heartbeat to the arbiter carries it) and
        # nobody else is its primary.
        same = msg.term == self.term and self.state.primary in (None, self.host)
        if msg.member != self.host or not (msg.term == self.term + 1 or same):
            raise ProtocolError(f"HANDOVER of term {msg.term} to {msg.member}: expected term "
                                f"{self.term + 1} to {self.host}")
        if self.applied < msg.lsn or self.log.last_lsn != msg.lsn:
            raise PeerRefused(f"HANDOVER at LSN {msg.lsn}, but we applied {self.applied} and "
                              f"logged {self.log.last_lsn}: refused")

        def answer(old: MirrorState, new: MirrorState, why: str) -> None:
            # Our answer goes out the moment our promotion is durable, before
            # the worker swap it triggers closes this connection.
            if new.role == "primary" and new.term == msg.term:
                conn.send_nowait(Heartbeat(msg.term, self.applied, "primary",
                                           stamp=clock.now(), echo=self.primary_stamp))
                log.warning("%s: HANDOVER accepted: primary of term %d at LSN %d", self.name,
                            msg.term, msg.lsn)

        on_handover = self.on_handover

        async def promote() -> None:
            self.roles.listeners.insert(0, answer)
            try:
                await on_handover(msg)
            finally:
                self.roles.listeners.remove(answer)

        # To its end even if this session is cancelled meanwhile (the former
        # primary gave up waiting and closed): it stepped down for us.
        try:
            await asyncio.shield(promote())
        except ValueError as exc:  # TermMoved: the term has another primary now
            raise PeerRefused(f"HANDOVER of term {msg.term} refused: {exc}") from None

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        self.primary_lsn = msg.lsn
        self.primary_sync_acked = msg.sync_acked
        self.lag_bytes, self.lag_seconds = msg.lag_bytes, msg.lag_seconds

    def _on_resync_begin(self, conn: Connection, msg: ResyncBegin) -> None:
        if self._resync_at is not None or msg.lsn < self.applied:
            raise ProtocolError(f"unexpected RESYNC_BEGIN({msg.lsn})")
        try:
            self.resync = ReceiverResync(
                msg, list(self.cfg.targets),
                self.agent.mirror_dir(self.cfg.name) / "quarantine", self.name,
                exclude=list(self.cfg.exclude), stats=self.metrics,
                logical=self.applier.logical_mode)
        except ValueError as exc:
            raise ProtocolError(f"RESYNC_BEGIN: {exc}") from None
        self._resync_at = msg.lsn
        self.resyncing = True
        if self.failure is not None:
            self.failure.in_resync = False  # this resync may clear it
        log.warning("%s: %s resync from the primary (snapshot at LSN %d; we had %d)",
                    self.name, msg.mode, msg.lsn, self.applied)
        self._manifest_task = asyncio.create_task(
            self.resync.send_manifest(conn, lambda: self.term))

    def _on_resync_progress(self, msg: ResyncProgress) -> None:
        if self.resync is None or self._resync_at is None:
            raise ProtocolError("RESYNC_PROGRESS outside a resync")
        self.resync.on_progress(msg)

    async def _on_resync_end(self, conn: Connection, msg: ResyncEnd) -> None:
        if self._resync_at is None or msg.lsn != self._resync_at:
            raise ProtocolError(f"unexpected RESYNC_END({msg.lsn})")
        if self.failure is not None and self.failure.in_resync:
            self._resync_at, self.resyncing = None, False
            self.failure.in_resync = False  # stay stopped; no ACK
            return
        task = self._manifest_task
        if task is None or not task.done() or task.exception() is not None:
            raise ProtocolError("RESYNC_END before our manifest was sent")
        await asyncio.to_thread(self._finish_resync, msg.lsn)
        if self.mount_rejoin is not None:
            await asyncio.to_thread(self.mount_rejoin.resync_done)
        self._resync_at = None
        await conn.send(Ack(self.applied, self.log.last_lsn, self.term))

    async def _records(self, conn: Connection, records: list[Record], resync: bool) -> None:
        if not records:
            return
        for r in records:
            if r.lsn == 0 or not self.primary_history:
                if r.term < self.state.term:
                    raise PeerRefused(f"record LSN {r.lsn} of term {r.term} is older than "
                                      f"our term {self.state.term}: stale primary")
            else:
                # The primary of our term (checked per message) also sends its
                # older terms' history: a member that lagged behind the new
                # primary at a failover catches up on records of the old term.
                # Each must carry the term the primary's history gives its LSN
                # (or our term itself: the primary's own records, whose term
                # may have begun after the history its HELLO carried).
                expected = term_at(self.primary_history, r.lsn)
                if r.term != expected and r.term != self.state.term:
                    raise PeerRefused(f"record LSN {r.lsn} of term {r.term}, but the "
                                      f"primary's term history gives that LSN term "
                                      f"{expected}: refused")
            if (r.lsn == 0) != resync:
                raise ProtocolError(f"record LSN {r.lsn} {'during' if resync else 'outside'} "
                                    f"a resync")
        if resync:
            assert self.resync is not None
            try:
                await asyncio.to_thread(self._apply_resync, self.resync, records)
            except RecordFailed as exc:
                await self._failed(conn, exc, in_resync=True)
                return
            self.received_records += len(records)
            return
        if records[0].lsn != self.log.last_lsn + 1:
            raise ProtocolError(f"LSN gap: got {records[0].lsn}, expected "
                                f"{self.log.last_lsn + 1}")
        self.primary_lsn = max(self.primary_lsn, records[-1].lsn)
        try:
            await asyncio.to_thread(self._log_and_apply, records)
        except RecordFailed as exc:
            await self._failed(conn, exc, in_resync=False)
            return
        self._conflict_resyncs = 0
        self.received_records += len(records)
        await conn.send(Ack(self.applied, self.log.last_lsn, self.term))

    def lag(self) -> tuple[int | None, int | None, float]:
        """Our own (bytes, records, seconds) behind the primary. Connected:
        the primary's figures. Disconnected: records from the last primary
        LSN we heard (``None`` if we never heard one), and seconds that keep
        growing from the moment we lost it, never 0."""
        records = max(0, self.primary_lsn - self.applied) if self.primary_known else None
        nbytes = None if records is None else self.lag_bytes if records else 0
        if not self.connected:
            return nbytes, records, self.lag_at_loss + max(0.0, time.time() - self.lost_at)
        return nbytes, records, self.lag_seconds if records else 0.0

    def status(self) -> dict[str, Any]:
        out = super().status()
        lag_bytes, lag_records, lag_seconds = self.lag()
        primary = self.connected_to or self.state.primary
        peers: dict[str, Any] = {}
        if primary:
            peers[primary] = {"role": "primary", "connected": self.connected,
                              "lsn": self.primary_lsn if self.primary_known else None,
                              "acked_lsn": self.applied}
        peers.update(self.companion_status())
        out.update({
            "lsn": self.log.last_lsn, "applied_lsn": self.applied,
            "primary_lsn": self.primary_lsn if self.primary_known else None,
            "lag_bytes": lag_bytes, "lag_records": lag_records,
            "lag_seconds": round(lag_seconds, 3),
            "connected": self.connected,
            "disconnected_since": None if self.connected else round(self.lost_at, 3),
            "peers": peers,
            "received_records": self.received_records, "resyncing": self.resyncing,
            "resyncs": self.resyncs, "refused": self.applier.refused,
            "conflicts": self.applier.conflicts, "kind": self.cfg.kind,
            "apply_failure": None if self.failure is None else self.failure.as_dict(),
            "resync": None if self.resync is None else self.resync.status(),
            "divergences": self.divergences, "last_divergence": self.last_divergence,
            # files whose setuid/setgid this member holds back (apply.held_modes)
            "held_setid_files": None if self.applier.held is None else self.applier.held.count,
        })
        return out
