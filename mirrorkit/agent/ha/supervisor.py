"""One mirror on this host: its role owner and the worker for its current role.

The supervisor loads the mirror's :class:`~mirrorkit.agent.state.RoleOwner`
and starts the worker that role calls for. When the role changes (a higher
term was learnt, or, with the failover issue, a promotion), the owner has
already persisted the change; the supervisor then stops the old worker and
starts the new one inside the running agent: no process restart, the other
mirrors of the host are untouched.

A mirror whose state cannot be read (:class:`StateUnreadable`) does not
start: its status says why (``alive: false``, ``error`` names the file and
the recovery), so ``/health`` and ``/primary`` answer 503. The daemon asks
:meth:`MirrorSupervisor.start` again every few seconds, so a repaired state
file is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirrorkit.agent.config import AgentConfig, MirrorConfig
from mirrorkit.agent.ha.events import EventLog, Sequence
from mirrorkit.agent.ha.loop import HaLoop
from mirrorkit.agent.ha.roles import create_worker
from mirrorkit.agent.state import (
    RECOVERY_DOC,
    MirrorState,
    RoleOwner,
    StateStore,
    StateUnreadable,
)
from mirrorkit.agent.stream.worker import MirrorWorker
from mirrorkit.agent.util.stats import MirrorMetrics

__all__ = ["MirrorSupervisor"]

log = logging.getLogger(__name__)


class MirrorSupervisor:
    """Runs one mirror: owns its :class:`RoleOwner` and the current worker."""

    def __init__(self, agent: AgentConfig, mirror: MirrorConfig,
                 metrics: MirrorMetrics | None = None,
                 on_step_down: Callable[[], None] | None = None,
                 sequence: Sequence | None = None) -> None:
        self.agent = agent
        # Called when this member stops being writable, before that is durable.
        self.on_step_down = on_step_down
        self.metrics = metrics
        self.cfg = mirror
        self.name = mirror.name
        self.roles: RoleOwner | None = None
        self.worker: MirrorWorker | None = None
        self.error: str | None = None
        self.role_changes = 0
        self.failed_starts = 0  # since the last successful start
        self._lock = asyncio.Lock()  # one start/swap/stop at a time
        self._swap_task: asyncio.Task[None] | None = None
        self._starting: MirrorWorker | None = None  # in worker.start() (opens its log)
        self._stopping = False
        self.sequence = sequence if sequence is not None else Sequence()
        self.events = EventLog(mirror.name, agent.mirror_dir(mirror.name) / "events.jsonl"
                               if agent.mirror_dir(mirror.name).is_dir() else None,
                               self.sequence)
        self.ha = HaLoop(self, self.events, on_step_down)
        self._ha_task: asyncio.Task[None] | None = None
        self._quarantine: tuple[float, dict[str, Any]] | None = None
        self._pending_applied: int | None = None  # a former primary's last LSN (_swap)

    @property
    def running(self) -> bool:
        return self.worker is not None

    async def start(self) -> bool:
        """Start the mirror if it is not running; False (and ``error`` set) if
        it cannot start now."""
        async with self._lock:
            if self.worker is None and not self._stopping:
                await self._start_locked("start")
            return self.worker is not None

    async def stop(self) -> None:
        self._stopping = True
        if self._swap_task is not None:
            self._swap_task.cancel()
        if self._ha_task is not None:
            self._ha_task.cancel()
            await asyncio.gather(self._ha_task, return_exceptions=True)
        await self.ha.stop()
        async with self._lock:
            await self._stop_worker()

    async def _start_locked(self, why: str) -> None:
        worker: MirrorWorker | None = None
        try:
            if self.roles is None:
                self.roles = await asyncio.to_thread(self._load_roles)
                if self.events.path is None:  # the mirror directory exists now
                    self.events = self.ha.events = EventLog(
                        self.name, self.agent.mirror_dir(self.name) / "events.jsonl",
                        self.sequence)
                self.roles.listeners.append(self._on_change)
                self.roles.listeners.append(self.ha.on_role_change)
                if self.on_step_down is not None:
                    self.roles.step_down_listeners.append(self.on_step_down)
            if self._ha_task is None:
                self._ha_task = asyncio.get_running_loop().create_task(
                    self.ha.run(), name=f"{self.name}:ha-loop")
            if self._pending_applied is not None and self.roles.role != "primary":
                await asyncio.to_thread(self._hand_over, self._pending_applied)
            self._pending_applied = None
            worker = await asyncio.to_thread(create_worker, self.agent, self.cfg, self.roles)
            if self.metrics is not None:
                worker.metrics = self.metrics
            self._starting = worker
            try:
                await worker.start()
            finally:
                self._starting = None
        except Exception as exc:  # one broken mirror must not stop the others
            self._fail(exc)
            if worker is not None:
                await worker.stop()
            return
        if self.error is not None:
            log.info("mirror %s started after: %s", self.name, self.error)
        self.error = None
        self.failed_starts = 0
        self.worker = worker
        self.ha.attach(worker)
        log.info("mirror %s: %s worker running (term %d, %s)", self.name, self.roles.role,
                 self.roles.term, why)

    def _load_roles(self) -> RoleOwner:
        store = StateStore(self.agent.mirror_dir(self.name))
        me = self.cfg.members[self.agent.host]
        initial_primary = next((n for n, m in self.cfg.members.items()
                                if m.role == "primary"), None)
        return RoleOwner.load(store, me.member_class, self.cfg.role, initial_primary)

    def _fail(self, exc: Exception) -> None:
        self.failed_starts += 1
        if isinstance(exc, StateUnreadable):
            reason = (f"state unreadable: {exc}. This mirror will not start until it is "
                      f"repaired; see {RECOVERY_DOC}")
        else:
            reason = str(exc) or repr(exc)
        if reason != self.error:
            log.error("mirror %s failed to start: %s (retrying every few seconds)",
                      self.name, reason)
        else:
            log.debug("mirror %s still cannot start: %s", self.name, reason)
        self.error = reason

    async def _stop_worker(self) -> MirrorWorker | None:
        worker, self.worker = self.worker, None
        if worker is not None:
            await worker.stop()
        return worker

    def reconfigure(self, mirror: MirrorConfig) -> None:
        """Apply settings the worker reads as it goes (timeouts, hooks: see
        ``config.RELOAD_IN_PLACE``) without stopping it. Changed
        ``on_promote`` / ``on_demote`` commands run at once for where the
        member is (hooks are level-triggered: running one again is safe)."""
        old = self.cfg
        self.cfg = mirror
        if self.worker is not None:
            self.worker.cfg = mirror
        if any(old.hooks.get(h) != mirror.hooks.get(h) for h in ("on_promote", "on_demote")):
            log.info("mirror %s: on_promote/on_demote changed: running the one for this "
                     "member's state again", self.name)
            self.ha.app.redo()

    # -- role changes ---------------------------------------------------------

    def _on_change(self, old: MirrorState, new: MirrorState, why: str) -> None:
        if old.role == new.role or self._stopping:
            return
        self.role_changes += 1
        previous = self._swap_task
        self._swap_task = asyncio.get_running_loop().create_task(
            self._swap(old, new, why, previous), name=f"{self.name}:swap")

    async def _swap(self, old: MirrorState, new: MirrorState, why: str,
                    previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.gather(previous, return_exceptions=True)
        async with self._lock:
            if self._stopping:
                return
            log.warning("mirror %s: swapping the %s worker for a %s worker (term %d): %s",
                        self.name, old.role, new.role, new.term, why)
            gone = await self._stop_worker()
            if old.role == "primary" and gone is not None:
                # Until it is durable, no receiver may start (it would replay
                # the former primary's own log over its tree): _start_locked
                # writes it first, and the retry loop tries again on failure.
                self._pending_applied = gone.last_lsn()
            await self._start_locked(f"role change: {why}")

    def _hand_over(self, last: int) -> None:
        # A primary's tree already holds everything in its log: as a receiver
        # it has applied all of it (replaying its own log over the tree would
        # undo later changes). Anything it logged that the new primary never
        # received is found as a divergent tail when it connects.
        assert self.roles is not None
        self.roles.store.save_applied(last)
        log.info("mirror %s: former primary's log ends at LSN %d; applied LSN set to it",
                 self.name, last)

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        if self.worker is not None:
            try:
                out = self.worker.status()
            except Exception as exc:  # status must never take the API down
                out = {"role": self.worker.state.role, "alive": False, "error": repr(exc)}
        elif self._starting is not None and self.roles is not None:
            # Its state is read; its worker is opening the mirror log (a scan
            # of every segment: seconds for a big log). A primary stays the
            # primary meanwhile, as during capture's first scan, so an agent
            # restart does not make keepalived release the VIP; a log that
            # turns out corrupt makes it fail (503) then.
            owner = self.roles
            out = {"role": owner.role, "term": owner.term, "primary": owner.primary,
                   "fenced": owner.role == "primary" and not owner.writable,
                   "alive": True, "starting": True, "mode": self.cfg.mode}
        else:
            roles = self.roles
            out = {"role": roles.role if roles is not None else "unknown",
                   "term": roles.term if roles is not None else None,
                   "primary": roles.primary if roles is not None else None,
                   "fenced": True, "alive": False, "failed_starts": self.failed_starts}
            # Not started yet is not an error: say which it is.
            if self.error is not None:
                out["error"] = self.error
            else:
                out["starting"] = True
        out["role_changes"] = self.role_changes
        out["maintenance"] = self.ha.maintenance
        out["ha"] = self.ha.status()
        now = time.monotonic()
        if self._quarantine is None or now - self._quarantine[0] > QUARANTINE_EVERY:
            self._quarantine = (now, quarantine_summary(
                self.agent.mirror_dir(self.name) / "quarantine"))
        out["quarantine"] = self._quarantine[1]
        return out


QUARANTINE_EVERY = 5.0  # seconds between two looks at the quarantine directory
QUARANTINE_SCAN = 10_000  # entries looked at, at most


def quarantine_summary(directory: Path) -> dict[str, Any]:
    """How many quarantined sets (diverged writes, orphans) this member holds
    and the newest: status marks members holding quarantined data."""
    names: list[str] = []
    try:
        with os.scandir(directory) as it:
            for n, entry in enumerate(it):
                if n >= QUARANTINE_SCAN:
                    break
                if entry.is_dir(follow_symlinks=False):
                    names.append(entry.name)
    except OSError:
        pass
    names.sort()
    return {"reports": len(names), "last": str(directory / names[-1]) if names else None}
