"""What every mirror worker shares: config, state, tasks, servers, status.

One *worker* per mirror on this host, chosen by :mod:`mirrorkit.agent.ha.roles`
from the mirror's runtime role:

* ``primary`` -> :class:`mirrorkit.agent.stream.sender.PrimaryMirror`:
  captures, logs and ships; listens on the mirror port for receivers;
* ``backup`` / ``async`` -> :class:`mirrorkit.agent.stream.receiver.ReceiverMirror`:
  dials the primary, logs, applies, acknowledges;
* ``arbiter`` -> :class:`mirrorkit.agent.arbiter.witness.ArbiterMirror`:
  listens for failover members and records their heartbeats.

*Companions* run beside a worker for its whole life and add to its status
``peers`` (the arbiter link of primary and backup, attached by ``ha``), so
the stream never imports the arbiter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

from mirrorkit.agent.config import AgentConfig, MemberConfig, MirrorConfig
from mirrorkit.agent.log.segments import MirrorLog
from mirrorkit.agent.state import MirrorState, RoleOwner, StateStore
from mirrorkit.agent.util.aio import wait_for
from mirrorkit.agent.util.stats import AgentMetrics, MirrorMetrics

__all__ = ["Companion", "MirrorWorker"]

log = logging.getLogger(__name__)

STOP_GRACE = 5.0  # seconds a cancelled task gets to end (a connection close waits up to 4 s)


class Companion(Protocol):
    """Runs beside a worker for the worker's whole life.

    ``run`` never returns while the worker lives (it reconnects by itself);
    ``status`` is merged into the worker's ``peers`` and must not raise."""

    async def run(self) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def announce(self, timeout: float) -> bool:
        """Tell the peer our current term and role now and wait (at most
        ``timeout``) until it has heard it; False when it could not."""
        ...


class MirrorWorker:
    """Base of the per-mirror workers: config, state, lifecycle, status."""

    role_name = "?"

    def __init__(self, agent: AgentConfig, mirror: MirrorConfig, roles: RoleOwner) -> None:
        self.agent = agent
        self.cfg = mirror
        self.host = agent.host
        self.roles = roles  # the one owner of role and term: ask it, never cache
        self.name = f"{mirror.name}[{roles.role}]"
        self.tasks: list[asyncio.Task[None]] = []
        self.servers: list[asyncio.Server] = []
        self.sessions: set[asyncio.Task[Any]] = set()  # connections served
        self.companions: list[Companion] = []
        # The agent replaces this with its own registry's (ha.supervisor); alone
        # (a test, a tool) a worker counts into a registry of its own.
        self.metrics: MirrorMetrics = AgentMetrics(agent.host).mirror(mirror.name)
        # Set when the mirror must stop on this member until an operator acts
        # (the reason says what to do): not alive, /health 503.
        self.fatal: str | None = None

    @property
    def state(self) -> MirrorState:
        return self.roles.state

    @property
    def store(self) -> StateStore:
        return self.roles.store

    @property
    def term(self) -> int:
        return self.roles.term

    def last_lsn(self) -> int:
        """The last LSN in this member's mirror log (0 without one)."""
        return 0

    def mirror_dir(self) -> Path:
        return self.agent.mirror_dir(self.cfg.name)

    def start_companions(self) -> None:
        for i, companion in enumerate(self.companions):
            self.spawn(companion.run(), f"companion-{i}")

    async def announce_to_companions(self, timeout: float) -> list[bool]:
        """:meth:`Companion.announce` on each companion, concurrently."""
        return list(await asyncio.gather(*(c.announce(timeout) for c in self.companions)))

    def companion_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for companion in self.companions:
            out.update(companion.status())
        return out

    @property
    def me(self) -> MemberConfig:
        return self.cfg.members[self.host]

    @property
    def listen_address(self) -> str:
        return self.cfg.listen or self.me.address

    def member_sources(self) -> frozenset[str]:
        """The addresses of the mirror's other members (admission reserves for them)."""
        return frozenset(m.address for n, m in self.cfg.members.items() if n != self.host)

    def arbiter_member(self) -> MemberConfig | None:
        for m in self.cfg.members.values():
            if m.member_class == "arbiter":
                return m
        return None

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.create_task(coro, name=f"{self.cfg.name}:{what}")
        task.add_done_callback(self._task_done)
        self.tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s: task %s died: %r", self.name, task.get_name(), exc, exc_info=exc)

    def alive(self) -> bool:
        return self.fatal is None and all(not t.done() for t in self.tasks)

    async def open(self) -> None:
        """Blocking preparation, run off the event loop (a worker with a
        mirror log opens it here: its recovery scan reads every segment).
        ``start()`` calls it first; calling it again does nothing."""

    def open_log(self) -> MirrorLog:
        """Open this mirror's log (blocking: call it in a worker thread)."""
        return MirrorLog(self.mirror_dir() / "log", segment_bytes=self.cfg.log_segment_bytes,
                         max_bytes=self.cfg.log_max_bytes, stats=self.metrics)

    def error(self) -> str | None:
        """Why this worker is not doing its job, or ``None``: ``error`` in
        status, the reason ``/health`` and ``/primary`` give for a 503."""
        return self.fatal

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        pending = [*self.tasks, *self.sessions]
        left: set[asyncio.Task[Any]] = set(pending)
        while left:
            # A task that swallowed its cancellation (see util/aio.wait_for)
            # is cancelled again, and said so: a stop that never ends leaves
            # the mirror without a worker.
            for t in left:
                t.cancel()
            _done, left = await asyncio.wait(left, timeout=STOP_GRACE)
            if left:
                log.error("%s: %d task(s) still running %.0f s after being cancelled (%s); "
                          "cancelling again", self.name, len(left), STOP_GRACE,
                          ", ".join(sorted(t.get_name() for t in left)))
        await asyncio.gather(*pending, return_exceptions=True)
        for server in self.servers:
            try:
                await wait_for(server.wait_closed(), 2.0)
            except TimeoutError:
                log.warning("%s: server did not close in time", self.name)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "role": self.state.role,
            "term": self.state.term,
            "mode": self.cfg.mode,
            "primary": self.state.primary,
            "fenced": self.state.role == "primary" and not self.roles.writable,
            "alive": self.alive(),
        }
        if self.roles.keeps_vip:
            out["keeps_vip"] = True  # a switchover's on_demote is running (state.py)
        reason = self.error()
        if reason:
            out["error"] = reason
        return out


