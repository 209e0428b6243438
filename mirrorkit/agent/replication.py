"""Replication: what every mirror worker shares, and the factory for them.

One *worker* per mirror on this host, chosen by the runtime role in
``state.json`` (the config's role only seeds it on first start):

* ``primary`` -> :class:`mirrorkit.agent.sender.PrimaryMirror`: captures,
  logs and ships; listens on the mirror port for receivers;
* ``backup`` / ``async`` -> :class:`mirrorkit.agent.receiver.ReceiverMirror`:
  dials the primary, logs, applies, acknowledges;
* ``arbiter`` -> :class:`mirrorkit.agent.arbiter.ArbiterMirror`: listens for
  failover members and records their heartbeats.

Primary and backup also keep an :class:`mirrorkit.agent.arbiter.ArbiterLink`
to the arbiter when the mirror has one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from typing import Any

from mirrorkit.agent.config import AgentConfig, MemberConfig, MirrorConfig
from mirrorkit.agent.state import MirrorState, StateStore

__all__ = ["Backoff", "MirrorWorker", "create_worker", "race"]

log = logging.getLogger(__name__)


class Backoff:
    """Exponential reconnect delay with jitter, so members do not reconnect in step."""

    def __init__(self, initial: float = 0.2, cap: float = 5.0) -> None:
        self.initial = initial
        self.cap = cap
        self.current = initial

    def next(self) -> float:
        delay = self.current * random.uniform(0.8, 1.2)
        self.current = min(self.current * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.current = self.initial


async def race(*coros: Coroutine[Any, Any, None]) -> None:
    """Run coroutines until the first ends; cancel the rest; re-raise its error."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        t.result()


class MirrorWorker:
    """Base of the per-mirror workers: config, state, lifecycle, status."""

    role_name = "?"

    def __init__(self, agent: AgentConfig, mirror: MirrorConfig, store: StateStore,
                 state: MirrorState) -> None:
        self.agent = agent
        self.cfg = mirror
        self.host = agent.host
        self.store = store
        self.state = state
        self.name = f"{mirror.name}[{state.role}]"
        self.tasks: list[asyncio.Task[None]] = []
        self.servers: list[asyncio.Server] = []
        self.sessions: set[asyncio.Task[Any]] = set()  # connections served

    @property
    def me(self) -> MemberConfig:
        return self.cfg.members[self.host]

    @property
    def listen_address(self) -> str:
        return self.cfg.listen or self.me.address

    def arbiter_member(self) -> MemberConfig | None:
        for m in self.cfg.members.values():
            if m.role == "arbiter":
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
        return all(not t.done() for t in self.tasks)

    def set_term(self, term: int, primary: str | None) -> None:
        """Adopt a higher term learnt from a peer (never go back)."""
        if term > self.state.term:
            log.info("%s: term %d -> %d (primary %s)", self.name, self.state.term, term, primary)
            self.state = MirrorState(term, self.state.role, primary)
            self.store.save(self.state)

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        pending = [*self.tasks, *self.sessions]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except TimeoutError:
                log.warning("%s: server did not close in time", self.name)

    def status(self) -> dict[str, Any]:
        return {
            "role": self.state.role,
            "term": self.state.term,
            "mode": self.cfg.mode,
            "primary": self.state.primary,
            "fenced": False,
            "alive": self.alive(),
        }


def create_worker(agent: AgentConfig, mirror: MirrorConfig) -> MirrorWorker:
    """Build the worker for ``mirror`` according to its persisted runtime role."""
    store = StateStore(agent.mirror_dir(mirror.name))
    default_primary = next((n for n, m in mirror.members.items() if m.role == "primary"), None)
    state = store.load(mirror.role, default_primary)
    if mirror.role == "arbiter" or state.role == "arbiter":
        from mirrorkit.agent.arbiter import ArbiterMirror

        return ArbiterMirror(agent, mirror, store, state)
    if state.role == "primary":
        from mirrorkit.agent.sender import PrimaryMirror

        return PrimaryMirror(agent, mirror, store, state)
    from mirrorkit.agent.receiver import ReceiverMirror

    return ReceiverMirror(agent, mirror, store, state)
