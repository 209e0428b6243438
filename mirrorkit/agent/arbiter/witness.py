"""Arbiter (minimal): a witness that records failover members' heartbeats.

The arbiter listens on the mirror's port, accepts only failover members
(certificate OU ``failover``, claiming ``primary`` or ``backup``), and keeps
per member: the role and term it claims, its LSN and when it was last heard.
Both sides send ``HEARTBEAT`` every ``timeouts.heartbeat``; a connection
silent for ``timeouts.arbiter`` is closed. Failover decisions (asking the
arbiter "do you still see the primary?") come with the HA state machine; the
data they need is already here, in :meth:`ArbiterMirror.status` ``peers``.

:class:`ArbiterLink` is the client side, run by the primary and the backup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from mirrorkit.agent.stream.worker import MirrorWorker
from mirrorkit.agent.transport.conn import (
    Connection,
    send_heartbeats,
    serve,
    server_context,
    server_handshake,
)
from mirrorkit.agent.transport.frames import Error, Heartbeat, Hello, ProtocolError
from mirrorkit.agent.util.aio import race

__all__ = ["ArbiterMirror"]

log = logging.getLogger(__name__)


@dataclass
class SeenMember:
    role: str
    term: int = 0
    lsn: int = 0
    connected: bool = False
    last_heartbeat: float = 0.0  # wall clock, for status
    task: asyncio.Task[Any] | None = None




class ArbiterMirror(MirrorWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[str, SeenMember] = {
            n: SeenMember("backup") for n, m in self.cfg.members.items()
            if m.member_class == "failover"
        }

    async def start(self) -> None:
        self.servers.append(await serve(self.listen_address, self.me.port,
                                        server_context(self.cfg.tls), self._session, self.name,
                                        self.sessions))
        log.info("%s: arbiter listening on %s:%d", self.name, self.listen_address, self.me.port)

    def alive(self) -> bool:
        return all(s.is_serving() for s in self.servers)

    async def _session(self, conn: Connection) -> None:
        me = Hello(self.cfg.name, self.host, "arbiter", self.state.term, 0)
        hello = await server_handshake(conn, self.cfg, me, ("primary", "backup"))
        m = self.seen.setdefault(hello.member, SeenMember(hello.role))
        if m.task is not None and not m.task.done():
            m.task.cancel()
        m.task = asyncio.current_task()
        m.role, m.term, m.lsn, m.connected = hello.role, hello.term, hello.last_lsn, True
        m.last_heartbeat = time.time()
        conn.term_fn = lambda: self.roles.term
        await self._learn(hello.term, hello.role, hello.member)
        log.info("%s: %s connected as %s (term %d)", self.name, hello.member, hello.role,
                 hello.term)
        try:
            await race(self._listen(conn, m, hello.member),
                       send_heartbeats(conn, lambda: Heartbeat(self.state.term, 0, "arbiter"),
                                   self.cfg.timeouts.heartbeat))
        finally:
            if m.task is asyncio.current_task():
                m.connected = False
                m.task = None
                log.info("%s: lost %s", self.name, hello.member)

    async def _listen(self, conn: Connection, m: SeenMember, member: str) -> None:
        while True:
            msg = await conn.recv(self.cfg.timeouts.arbiter)
            if isinstance(msg, Heartbeat):
                m.term, m.lsn, m.last_heartbeat = msg.term, msg.lsn, time.time()
                if msg.role in ("primary", "backup"):
                    m.role = msg.role
                await self._learn(msg.term, msg.role, member)
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
            await self.roles.observe_term(term, member if role == "primary" else None, member)
        elif term == self.roles.term and role == "primary":
            await self.roles.note_primary(member)

    def status(self) -> dict[str, Any]:
        out = super().status()
        now = time.time()
        out.update({
            "role": "arbiter", "lsn": 0, "applied_lsn": 0, "lag_bytes": 0, "lag_records": 0,
            "lag_seconds": 0.0, "connected": any(m.connected for m in self.seen.values()),
            "peers": {n: {"role": m.role, "connected": m.connected, "term": m.term,
                          "lsn": m.lsn, "last_heartbeat": m.last_heartbeat or None,
                          "last_heartbeat_age": round(now - m.last_heartbeat, 3)
                          if m.last_heartbeat else None}
                      for n, m in self.seen.items()},
        })
        return out


