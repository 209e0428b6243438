"""The arbiter: a witness of the failover members, holding no data.

The arbiter listens on the mirror's port, accepts only failover members
(certificate OU ``failover``, claiming ``primary`` or ``backup``), and keeps
per member: the role and term it claims, its LSN and when it was last heard.
Both sides send ``HEARTBEAT`` every ``timeouts.heartbeat``; a connection
silent for ``timeouts.qos`` is closed.

It persists (its :class:`~mirrorkit.agent.state.RoleOwner`, ``state.json``)
the highest term it has seen and who claimed to be primary in it; every
heartbeat it sends carries that term, so a deposed primary learns at once.

Its answer to "do you still see the primary of this mirror, in this term?"
is in every heartbeat it sends a member: ``primary`` (whom it holds to be
the primary of its term) and ``primary_silence`` (seconds it has not heard
that member claim it; about 0 while it does). Silence counts only while
the arbiter itself was listening
(:class:`~mirrorkit.agent.util.listening.ListenGuard`): a stalled or just
restarted arbiter never reports a primary as long silent. Each heartbeat
also echoes the member's own stamp, which renews a primary's lease.

Sync mode (docs/architecture.md, "Sync mode: who may acknowledge"): the
primary of our term may ask to run without its backup
(``Heartbeat.backup_out``). We persist that (``state.json``) *before* any
heartbeat of ours says so, and from then on every heartbeat carries it: the
primary's proof that it may acknowledge what the backup lacks, and the
backup's reason not to be active (no automatic failover). We refuse it in a
term in which we have told the backup that the primary was silent for the
arbiter timeout (persisted as ``primary_lost`` before that answer went
out): the backup may have promoted itself on that answer. Only the primary's
``backup_back`` (its backup caught up) or a new term clears the flag.

One arbiter process serves several mirrors: one such worker per mirror.
:class:`ArbiterLink` is the client side, run by the primary and the backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from mirrorkit.agent.stream.worker import MirrorWorker
from mirrorkit.agent.transport.conn import (
    Connection,
    PeerOtherVersion,
    serve,
    server_context,
    server_handshake,
)
from mirrorkit.agent.transport.frames import Error, Heartbeat, Hello, ProtocolError
from mirrorkit.agent.util import clock
from mirrorkit.agent.util.aio import race, wait_for
from mirrorkit.agent.util.listening import ListenGuard

__all__ = ["ArbiterMirror"]

log = logging.getLogger(__name__)


@dataclass
class SeenMember:
    role: str
    term: int = 0
    lsn: int = 0
    connected: bool = False
    last_heartbeat: float = 0.0  # wall clock, for status
    last_heard: float = 0.0  # util/clock.now()
    last_heard_as_primary: float = 0.0  # ... while it claimed primary of our term
    stamp_in: float = 0.0  # its newest stamp, echoed back
    no_promote: bool = False  # a backup's word: it would not promote now
    task: asyncio.Task[Any] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # send a heartbeat now




class ArbiterMirror(MirrorWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[str, SeenMember] = {
            n: SeenMember("backup") for n, m in self.cfg.members.items()
            if m.member_class == "failover"
        }
        self.guard = ListenGuard(max_gap=self.cfg.timeouts.qos)
        # Lease hand-off (docs/architecture.md, "The arbiter's answer"): when
        # we echo a primary's stamp, its lease may run until now + qos. A
        # primary of a newer term gets no echo from us before that has passed.
        self._last_primary_echo = 0.0
        self._hold_echo_until = 0.0
        self._hold_for: str | None = None  # the older primary whose lease we wait out
        self._refused_told: dict[str, int] = {}  # the term a backup_out refusal was logged for

    def primary_view(self) -> tuple[str, float]:
        """(the primary of our term or "", seconds we have not heard it claim
        it while we were listening). Never heard since we started counts
        from our start: a restarted arbiter does not know how long the
        primary has been silent, and must not let the backup act on it."""
        name = self.roles.primary
        m = self.seen.get(name) if name else None
        heard = m.last_heard_as_primary if m is not None else 0.0
        return name or "", round(self.guard.silence(heard), 3)

    def _heartbeat(self, m: SeenMember, member: str) -> Heartbeat:
        primary, silence = self.primary_view()
        state = self.state
        out = state.backup_out == state.term
        return Heartbeat(state.term, 0, "arbiter", stamp=clock.now(),
                         echo=self._echo_for(m, member), primary=primary,
                         primary_silence=silence,
                         backup_out=state.term if out else 0,
                         backup_out_lsn=state.backup_out_lsn if out else 0)

    async def _before_answer(self, m: SeenMember, member: str, hb: Heartbeat) -> bool:
        """Before ``hb`` tells a backup that the primary has been silent for
        the arbiter timeout (it may promote on it) — a named primary or none
        known in our term (a backup promotes on either) — persist that we
        did: no ``backup_out`` is confirmed in this term from then on. True
        when it persisted something."""
        if m.role != "backup" or member == self.roles.primary or m.no_promote:
            return False  # (a backup that would not promote echoes nothing it acts on)
        state = self.state
        if hb.primary_silence >= self.cfg.timeouts.arbiter and state.primary_lost != state.term:
            await self.roles.set_sync_flags(
                f"telling backup {member} that {hb.primary or 'no primary'} has been heard "
                f"as primary for {hb.primary_silence:.1f} s: it may promote; no confirmation "
                f"of running without it in this term", primary_lost=state.term)
            return True
        return False

    async def _sync_request(self, member: str, msg: Heartbeat) -> None:
        """The primary of our term asks to run without its backup, or says
        its backup caught up: persist it before anything of ours says so."""
        state = self.state
        if msg.role != "primary" or msg.term != state.term or self.roles.primary != member:
            return
        if msg.backup_out == state.term and state.backup_out != state.term:
            if state.primary_lost == state.term:
                if self._refused_told.get(member) != state.term:
                    self._refused_told[member] = state.term
                    log.warning("%s: %s asks to run without its backup in term %d: refused, "
                                "we told the backup it had been silent for the arbiter "
                                "timeout in this term (it may have promoted itself)",
                                self.name, member, state.term)
                return
            await self.roles.set_sync_flags(
                f"primary {member} runs without its backup from LSN {msg.backup_out_lsn} "
                f"(sync mode): the backup is not active until {member} says it caught up",
                backup_out=state.term, backup_out_lsn=msg.backup_out_lsn)
        elif msg.backup_back == state.term and state.backup_out == state.term:
            await self.roles.set_sync_flags(
                f"primary {member}: its backup caught up; it waits for it again (sync "
                f"mode): the backup may be active again", backup_out=0, backup_out_lsn=0)

    def _echo_for(self, m: SeenMember, member: str) -> float:
        """The stamp we echo to ``member``: an echo renews a primary's lease,
        so a member claiming primary gets one only if it is the primary of
        our term, and a new term's primary only once every lease an older
        primary got from us has run out."""
        if m.role != "primary":
            return m.stamp_in  # a backup's echo renews nothing
        now = clock.now()
        if m.term != self.roles.term or self.roles.primary != member \
                or now < self._hold_echo_until:
            return 0.0
        if m.stamp_in > 0:
            self._last_primary_echo = now
        return m.stamp_in

    async def _send_heartbeats(self, conn: Connection, m: SeenMember, member: str) -> None:
        while True:
            # Cleared before the heartbeat is built: a wake-up that comes
            # while the send waits (a slow peer) gets its own echo at once.
            m.wake.clear()
            # Decide on the very answer we send (the silence grows between
            # two readings), and persist before it goes.
            hb = self._heartbeat(m, member)
            if await self._before_answer(m, member, hb):
                hb = self._heartbeat(m, member)  # our state changed: say it as it is
            await conn.send(hb)
            with contextlib.suppress(TimeoutError):
                await wait_for(m.wake.wait(), self.cfg.timeouts.heartbeat)

    def _heard(self, m: SeenMember, member: str, role: str, term: int, stamp: float) -> None:
        t = clock.now()
        m.last_heard, m.last_heartbeat = t, time.time()
        if stamp > 0:
            m.stamp_in = stamp
        if role == "primary" and term == self.roles.term and self.roles.primary == member:
            m.last_heard_as_primary = t
            m.wake.set()  # echo at once: the lease then runs nearly all of qos
        if member == self._hold_for and role != "primary" and term >= self.roles.term:
            # The older primary itself says it stepped down (a switchover, or
            # it learnt the new term): it gave its lease up; no need to wait.
            self._hold_for, self._hold_echo_until = None, 0.0
            for seen in self.seen.values():
                seen.wake.set()

    async def start(self) -> None:
        self.spawn(self.guard.run(), "listen-guard")
        self.servers.append(await serve(self.listen_address, self.me.port,
                                        server_context(self.cfg.tls), self._session, self.name,
                                        self.sessions,
                                        member_sources=self.member_sources()))
        log.info("%s: arbiter listening on %s:%d", self.name, self.listen_address, self.me.port)

    def alive(self) -> bool:
        return all(s.is_serving() for s in self.servers)

    async def _session(self, conn: Connection) -> None:
        me = Hello(self.cfg.name, self.host, "arbiter", self.state.term, 0)
        try:
            hello = await server_handshake(conn, self.cfg, me, ("primary", "backup"))
        except PeerOtherVersion as exc:
            # A member mid-upgrade: alive, though we cannot talk. If it is the
            # primary, it is not silent: no failover because of an upgrade.
            seen = self.seen.get(exc.member)
            if seen is not None:
                t = clock.now()
                seen.last_heard = t
                if exc.member == self.roles.primary:
                    seen.last_heard_as_primary = t
            raise
        m = self.seen.setdefault(hello.member, SeenMember(hello.role))
        if m.task is not None and not m.task.done():
            m.task.cancel()
        m.task = asyncio.current_task()
        m.role, m.term, m.lsn, m.connected = hello.role, hello.term, hello.last_lsn, True
        m.stamp_in = 0.0
        m.no_promote = False  # until it says otherwise
        conn.term_fn = lambda: self.roles.term
        await self._learn(hello.term, hello.role, hello.member)
        self._heard(m, hello.member, hello.role, hello.term, 0.0)
        log.info("%s: %s connected as %s (term %d)", self.name, hello.member, hello.role,
                 hello.term)
        try:
            await race(self._listen(conn, m, hello.member),
                       self._send_heartbeats(conn, m, hello.member))
        finally:
            if m.task is asyncio.current_task():
                m.connected = False
                m.task = None
                log.info("%s: lost %s", self.name, hello.member)

    async def _listen(self, conn: Connection, m: SeenMember, member: str) -> None:
        while True:
            msg = await conn.recv(self.cfg.timeouts.qos)
            if isinstance(msg, Heartbeat):
                announced = msg.term > m.term  # e.g. a primary stepping down
                m.term, m.lsn = msg.term, msg.lsn
                m.no_promote = bool(msg.no_promote)
                if msg.role in ("primary", "backup"):
                    m.role = msg.role
                await self._learn(msg.term, msg.role, member)
                # Persisted before _heard takes its stamp: an answer echoing
                # this heartbeat's stamp already carries what it asked for.
                await self._sync_request(member, msg)
                self._heard(m, member, msg.role, msg.term, msg.stamp)
                if announced:
                    m.wake.set()  # our echo says at once: the new term is durable here
            elif isinstance(msg, Error):
                log.warning("%s: %s reports: %s", self.name, member, msg.reason)
                return
            else:
                raise ProtocolError(f"unexpected {type(msg).__name__} from {member}")

    async def _learn(self, term: int, role: str, member: str) -> None:
        # The arbiter persists the highest term it has seen, and who claimed
        # to be primary in it; every heartbeat it sends carries that term, so
        # a primary of an older term learns at once that it was replaced.
        if term > self.roles.term:
            t = self.cfg.timeouts
            until = self._last_primary_echo + t.qos + t.heartbeat
            if until > clock.now() and self.roles.primary not in (None, member):
                self._hold_echo_until = max(self._hold_echo_until, until)
                self._hold_for = self.roles.primary
            await self.roles.observe_term(term, member if role == "primary" else None, member)
            for seen in self.seen.values():  # tell everyone the new term at once
                seen.wake.set()
        elif term == self.roles.term and role == "primary":
            if self.roles.primary not in (None, member):
                # Two members claim primary of one term: never by our rules.
                # Keep the first; the claim is logged for the operator.
                log.error("%s: %s claims primary of term %d, which %s holds: ignored",
                          self.name, member, term, self.roles.primary)
                return
            await self.roles.note_primary(member)

    def _backup_out_status(self) -> dict[str, Any] | None:
        """Sync mode: the primary of our term runs without its backup (None: no)."""
        state = self.state
        if state.backup_out != state.term:
            return None
        return {"term": state.term, "primary": state.primary, "from_lsn": state.backup_out_lsn}

    def status(self) -> dict[str, Any]:
        out = super().status()
        now = time.time()
        out.update({
            "role": "arbiter", "lsn": 0, "applied_lsn": 0, "lag_bytes": 0, "lag_records": 0,
            "lag_seconds": 0.0, "connected": any(m.connected for m in self.seen.values()),
            "sees_primary": dict(zip(("member", "silence"), self.primary_view(), strict=True)),
            "backup_out": self._backup_out_status(),
            "peers": {n: {"role": m.role, "connected": m.connected, "term": m.term,
                          "lsn": m.lsn, "last_heartbeat": m.last_heartbeat or None,
                          "last_heartbeat_age": round(now - m.last_heartbeat, 3)
                          if m.last_heartbeat else None}
                      for n, m in self.seen.items()},
        })
        return out


