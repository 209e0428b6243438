"""The failover members' side of the arbiter: :class:`ArbiterLink`.

Heartbeats both ways. What the link keeps for the HA loop (``ha/view.py``):
when it last heard the arbiter, the arbiter's latest answer about the
primary (``Heartbeat.primary`` / ``primary_silence``) and when that answer
arrived; on a primary, each echo of its own stamp renews its lease.

Sync mode: a primary's heartbeats carry its :class:`SyncAck`'s requests
(run without the backup / it caught up) and the arbiter's answers go back
to it; on a backup, the answer includes the arbiter's ``backup_out`` flag
(the primary runs without us: not active), kept with the rest of the answer
so that a fresh answer always says whether it is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

from mirrorkit.agent.config import MemberConfig
from mirrorkit.agent.stream.sync_ack import SyncAck
from mirrorkit.agent.stream.worker import MirrorWorker
from mirrorkit.agent.transport.conn import (
    Connection,
    client_context,
    client_handshake,
    connect,
    run_guarded,
    send_heartbeats,
)
from mirrorkit.agent.transport.frames import Error, Heartbeat, Hello, ProtocolError
from mirrorkit.agent.util import clock
from mirrorkit.agent.util.aio import Backoff, race, wait_for

__all__ = ["ArbiterLink"]

log = logging.getLogger(__name__)


class ArbiterLink:
    """A failover member's connection to the arbiter: heartbeat both ways."""

    def __init__(self, worker: MirrorWorker, arbiter: MemberConfig) -> None:
        self.worker = worker
        self.arbiter = arbiter
        self.connected = False
        self.last_heartbeat = 0.0  # wall clock, for status
        self.last_heard = 0.0  # util/clock.now()
        self.stamp_in = 0.0  # the arbiter's newest stamp, echoed back
        # The arbiter's latest answer: (primary it sees, its silence, the stamp
        # of ours it echoed: the answer is at most now - that old).
        self.answer: tuple[str, float, float] | None = None
        # With it: (the term whose primary runs without its backup, 0 none;
        # from which LSN): sync mode's "the backup is out".
        self.backup_out: tuple[int, int] = (0, 0)
        # On a backup (set by the HA loop each cycle): would it promote on a
        # "primary lost" answer now? Our heartbeats say so (no_promote), and
        # an answer counts for a promotion only if it echoes a heartbeat
        # that said it (promotable_stamp): then the arbiter knew, and has
        # ruled out the primary running without us in this term first.
        self.promotable = False
        self.promotable_stamp = 0.0
        self._conn: Connection | None = None  # while connected
        self._heard = asyncio.Event()  # set on each heartbeat from the arbiter
        self.heard_echo = 0.0  # the newest stamp of ours the arbiter echoed

    def _lsn(self) -> int:
        lsn = getattr(self.worker, "applied", None)
        if lsn is None:
            log_ = getattr(self.worker, "log", None)
            lsn = log_.last_lsn if log_ is not None else 0
        return int(lsn)

    async def run(self) -> None:
        w = self.worker
        ctx = client_context(w.cfg.tls)
        # Capped low: after a partition heals, the lease waits for this link.
        backoff = Backoff(0.2, 2.0)
        while True:
            try:
                conn = await connect(self.arbiter.address, self.arbiter.port, ctx)
            except (OSError, TimeoutError) as exc:
                log.info("%s: cannot reach arbiter %s: %s", w.name, self.arbiter.name, exc)
            else:
                backoff.reset()
                await run_guarded(conn, self._session, f"{w.name}:arbiter")
                self.connected = False
            await asyncio.sleep(backoff.next())

    async def _session(self, conn: Connection) -> None:
        w = self.worker
        me = Hello(w.cfg.name, w.host, w.state.role, w.state.term, self._lsn())
        hello = await client_handshake(conn, w.cfg, me, ("arbiter",))
        conn.term_fn = lambda: w.roles.term
        await self._learn(hello.term)
        self.connected = True
        self.last_heartbeat, self.last_heard, self.stamp_in = time.time(), clock.now(), 0.0
        log.info("%s: connected to arbiter %s", w.name, self.arbiter.name)
        self._conn = conn
        try:
            await race(self._listen(conn),
                       send_heartbeats(conn, self._heartbeat, w.cfg.timeouts.heartbeat))
        finally:
            self._conn = None

    async def announce(self, timeout: float) -> bool:
        """Send a heartbeat now (our term and role as they are) and wait until
        the arbiter echoes it: a primary stepping down for a switchover makes
        sure the arbiter knows the new term before anyone can be its primary,
        so a later promotion cannot pick the same term."""
        conn = self._conn
        if conn is None:
            return False
        hb = self._heartbeat()
        try:
            await wait_for(conn.send(hb), timeout)
            deadline = clock.now() + timeout
            while self.heard_echo < hb.stamp:
                left = deadline - clock.now()
                if left <= 0 or self._conn is not conn:
                    return False
                self._heard.clear()
                with contextlib.suppress(TimeoutError):
                    await wait_for(self._heard.wait(), left)
        except (ConnectionError, OSError, TimeoutError):
            return False
        return True

    def _sync(self) -> SyncAck | None:
        sync = getattr(self.worker, "sync", None)
        return sync if isinstance(sync, SyncAck) and sync.waits_for_backup else None

    def _heartbeat(self) -> Heartbeat:
        w = self.worker
        sync = self._sync()
        out, out_lsn, back = sync.request() if sync is not None else (0, 0, 0)
        hb = Heartbeat(w.state.term, self._lsn(), w.state.role, stamp=clock.now(),
                       echo=self.stamp_in, backup_out=out, backup_out_lsn=out_lsn,
                       backup_back=back)
        if sync is not None:
            sync.sent(hb.stamp)
        if w.state.role == "backup":
            hb = dataclasses.replace(hb, no_promote=0 if self.promotable else 1)
            if self.promotable and not self.promotable_stamp:
                self.promotable_stamp = hb.stamp
        return hb

    def set_promotable(self, ok: bool) -> None:
        """The HA loop's word (backup): would it promote now if the arbiter
        said the primary is lost? A change is told at the next heartbeat."""
        if ok != self.promotable:
            self.promotable = ok
            self.promotable_stamp = 0.0

    def answer_knows_promotable(self) -> bool:
        """Was the arbiter's latest answer built after it heard that we may
        promote (it echoes a heartbeat of ours that said so)?"""
        return (self.answer is not None and self.promotable_stamp > 0
                and self.answer[2] >= self.promotable_stamp)

    async def _listen(self, conn: Connection) -> None:
        while True:
            msg = await conn.recv(self.worker.cfg.timeouts.qos)
            if isinstance(msg, Heartbeat):
                t = clock.now()
                self.last_heartbeat, self.last_heard = time.time(), t
                if msg.stamp > 0:
                    self.stamp_in = msg.stamp
                self.heard_echo = max(self.heard_echo, msg.echo)
                self._heard.set()
                await self._learn(msg.term)
                if msg.term == self.worker.roles.term and msg.echo > 0:
                    # The answer's age counts from the stamp of ours it echoes
                    # (the arbiter had heard that before it answered), not from
                    # its arrival: a delayed answer is seen as old as it may be.
                    self.answer = (msg.primary, msg.primary_silence, msg.echo)
                    self.backup_out = (msg.backup_out, msg.backup_out_lsn)
                    sync = self._sync()
                    if sync is not None and self.worker.roles.holds_primary:
                        sync.arbiter_says(msg.backup_out, msg.echo)
                    lease = self.worker.roles.lease
                    if lease is not None and msg.echo > 0 and self.worker.roles.holds_primary:
                        lease.renew(msg.echo, f"arbiter {self.arbiter.name}")
            elif isinstance(msg, Error):
                log.warning("%s: arbiter reports: %s", self.worker.name, msg.reason)
                return
            else:
                raise ProtocolError(f"unexpected {type(msg).__name__} from the arbiter")

    async def _learn(self, term: int) -> None:
        # The arbiter has seen a higher term: another member was promoted.
        # A primary steps down at once (the role owner swaps the worker).
        await self.worker.roles.observe_term(term, None, f"arbiter {self.arbiter.name}")

    def status(self) -> dict[str, Any]:
        age = round(time.time() - self.last_heartbeat, 3) if self.last_heartbeat else None
        out: dict[str, Any] = {"role": "arbiter", "connected": self.connected,
                               "last_heartbeat_age": age, "sees_primary": None}
        if self.answer is not None:
            out["sees_primary"] = {"member": self.answer[0] or None, "silence": self.answer[1],
                                   "age": round(clock.now() - self.answer[2], 3)}
            if self.backup_out[0]:
                out["backup_out"] = {"term": self.backup_out[0], "from_lsn": self.backup_out[1]}
        return {self.arbiter.name: out}
