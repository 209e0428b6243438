"""The HA loop of one mirror on this host (:class:`HaLoop`).

Runs for the mirror supervisor's whole life, across worker swaps. Every
``heartbeat`` seconds (and at the instant a primary's lease runs out) one
*cycle*: build the :class:`~.failover.View`, :func:`~.failover.decide`,
act, explain. Like Patroni's ``run_cycle``, every cycle's decision is a
line of log — at DEBUG each cycle, at INFO (WARNING for failover) whenever
the situation changes and once every ``LOG_EVERY`` seconds while it lasts —
and every change of situation is an event (``GET /events``).

What it acts on:

* **promotion**: the rules said so -> persist primary of term + 1
  (:meth:`RoleOwner.change`: durable before anything acts on it); the
  supervisor swaps the worker;
* **the application hooks**: whenever this failover member turns writable
  it runs ``on_promote``, whenever it stops (step-down, fence, drain)
  ``on_demote``; once at start as well, so an application left running on
  a backup by a crash is stopped. Hooks run one at a time in order
  (:class:`AppHooks`) with ``hook_timeout``; output and exit status go to
  the log and the events. ``on_role_change`` runs after each role change;
* **the primary files** (keepalived): rewritten at each change of writability;
* **health check**, on the writable primary: ``hooks.health_check`` every
  ``health.interval``; ``health.failures`` failures in a row ask for a
  switchover to the backup, only if it is active (never to an inactive one)
  and maintenance mode is off;
* **a scheduled switchover** (``switchover.json``) when its time comes,
  only if the mirror is healthy then (else skipped, the reason in the events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mirrorkit.agent.config import AgentConfig, MirrorConfig
from mirrorkit.agent.ha.events import EventLog
from mirrorkit.agent.ha.failover import Action, Decision, View, active, decide, may_promote
from mirrorkit.agent.ha.flags import (
    Scheduled,
    load_lease_waiver,
    load_maintenance,
    load_schedule,
    save_lease_waiver,
    save_maintenance,
    save_schedule,
)
from mirrorkit.agent.ha.switchover import SwitchoverRefused, check_switchover, switch_over
from mirrorkit.agent.ha.view import arbiter_link, build_view
from mirrorkit.agent.hooks.runner import HookResult, run_hook
from mirrorkit.agent.state import MirrorState, RoleOwner, StateUnreadable, TermMoved
from mirrorkit.agent.stream.receiver import ReceiverMirror
from mirrorkit.agent.stream.sender import PrimaryMirror
from mirrorkit.agent.stream.worker import MirrorWorker
from mirrorkit.agent.transport.frames import Handover
from mirrorkit.agent.util.aio import wait_for
from mirrorkit.agent.util.lease import Lease

__all__ = ["LOG_EVERY", "AppHooks", "HaLoop", "OperationRefused"]

log = logging.getLogger(__name__)

LOG_EVERY = 10.0
HOOK_RETRY = 5.0  # seconds before a failed on_promote / on_demote runs again


class OperationRefused(Exception):
    """An operator's request cannot be carried out now (the message says why)."""


class Supervised(Protocol):
    """What the loop needs of its mirror supervisor (ha/supervisor.py)."""

    agent: AgentConfig
    cfg: MirrorConfig
    roles: RoleOwner | None
    worker: MirrorWorker | None
    error: str | None


class AppHooks:
    """Keeps the application where this member's writability says: "up"
    (``on_promote`` ran) or "down" (``on_demote`` ran). Level-triggered: the
    HA loop states what it wants every cycle (:meth:`want`), one hook runs
    at a time, and going down cancels an ``on_promote`` still running (its
    process group is killed): a fence never waits for a slow start."""

    def __init__(self, loop: HaLoop) -> None:
        self.ha = loop
        self.state: str | None = None  # what the last finished hook made it
        self.target: str | None = None
        self._running: tuple[str, asyncio.Task[Any]] | None = None  # the hook now
        self._runner: asyncio.Task[None] | None = None  # the one _run() loop
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()  # wakes _run()'s retry wait early
        self._generation = 0  # bumped when the hooks change (redo)
        self.attempts = 0  # hook runs finished (ensure() waits for the next)

    def want(self, target: str) -> None:
        if target == self.target:
            return
        self.target = target
        running = self._running
        if running is not None and running[0] == "up" and target == "down":
            running[1].cancel()
        self._kick()

    def redo(self) -> None:
        """The hooks changed (a reload): what the old ones did is not what
        the new ones would, so run the one for the current target again
        (after a hook still running with the old command)."""
        self._generation += 1
        self.state = None
        self._kick()

    def _kick(self) -> None:
        # One _run() at a time: a second one would run a hook beside the first.
        self._poke.set()
        if self.target is not None and (self._runner is None or self._runner.done()):
            self._runner = asyncio.get_running_loop().create_task(self._run(),
                                                                  name="app-hooks")
            self.ha.track(self._runner)

    async def ensure(self, target: str) -> None:
        """:meth:`want` ``target`` and wait until a hook run for it ended
        (successfully or not: a switchover must not wait forever for a
        failing ``on_demote``; the failure is in the log and the events)."""
        self.want(target)
        attempts = self.attempts
        while self.state != target and self.target == target and self.attempts == attempts:
            self._changed.clear()
            await self._changed.wait()

    async def _run(self) -> None:
        try:
            while self.target is not None and self.state != self.target:
                direction, generation = self.target, self._generation
                task = asyncio.get_running_loop().create_task(
                    self.ha.hook("on_promote" if direction == "up" else "on_demote"))
                self._running = (direction, task)
                try:
                    result = await task
                except asyncio.CancelledError:
                    if asyncio.current_task() is not None and \
                            asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        raise
                    self.ha.events.record("hook", "on_promote cancelled: this member stopped "
                                          "being writable", self.ha.term())
                    continue  # cancelled by want("down")
                finally:
                    self._running = None
                self.attempts += 1
                self._changed.set()
                if result is not None and not result.ok and self.target == direction \
                        and generation == self._generation:
                    # Not there yet (say, the application's unit is not
                    # installed yet on a first apply): try again, bounded;
                    # sooner if the target or the hooks change meanwhile.
                    self._poke.clear()
                    with contextlib.suppress(TimeoutError):
                        await wait_for(self._poke.wait(), HOOK_RETRY)
                    continue
                if generation == self._generation:  # else: the hooks changed, run again
                    self.state = direction
                self._changed.set()
        finally:
            self._running = None
            self._changed.set()


class HaLoop:
    def __init__(self, sup: Supervised, events: EventLog,
                 on_writable_change: Callable[[], None] | None = None) -> None:
        self.sup = sup
        self.events = events
        self.on_writable_change = on_writable_change
        self.app = AppHooks(self)
        self.decision: Decision | None = None
        self.view: View | None = None
        self.flag_error: str | None = None
        self.maintenance = False
        self.schedule: Scheduled | None = None
        self._writable: bool | None = None
        self._keeps_vip = False
        self._logged_at = 0.0
        self._health_failures = 0
        self._health_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._busy = asyncio.Lock()  # one promotion / switchover at a time
        self._started = time.monotonic()
        self.dir: Path = sup.agent.mirror_dir(sup.cfg.name)
        self._load_flags()

    @property
    def name(self) -> str:
        return self.sup.cfg.name

    @property
    def failover_member(self) -> bool:
        me = self.sup.cfg.members.get(self.sup.agent.host)
        return me is not None and me.member_class == "failover"

    @property
    def may_be_primary(self) -> bool:
        """Failover members, and DR members (an operator may promote them):
        they run the application hooks and, as primary, hold a lease."""
        me = self.sup.cfg.members.get(self.sup.agent.host)
        return me is not None and (me.member_class == "failover" or me.kind == "dr")

    # -- flags ----------------------------------------------------------------

    def _load_flags(self) -> None:
        try:
            self.maintenance = load_maintenance(self.dir)
            self.schedule = load_schedule(self.dir)
            self.flag_error = None
        except StateUnreadable as exc:
            if str(exc) != self.flag_error:
                log.error("%s: %s: automatic failover and scheduled switchovers are off "
                          "until it is repaired", self.name, exc)
                self.events.record("error", f"{exc}: no automatic failover until repaired")
            self.flag_error = str(exc)

    async def set_maintenance(self, on: bool) -> dict[str, Any]:
        changed = on != self.maintenance or self.flag_error is not None
        await asyncio.to_thread(save_maintenance, self.dir, on)
        self._load_flags()
        if changed:
            word = "on: no automatic failover" if on else "off: automatic failover allowed"
            self.events.record("maintenance", f"maintenance mode {word}", self._term())
            log.warning("%s: maintenance mode %s", self.name, word)
        self.wake()
        return {"mirror": self.name, "maintenance": self.maintenance, "changed": changed}

    # -- the loop -------------------------------------------------------------

    def attach(self, worker: MirrorWorker) -> None:
        """A new worker started (supervisor): wire what the loop needs."""
        roles = worker.roles
        cfg = worker.cfg
        others = [n for n in cfg.failover_names if n != worker.host]
        if self.may_be_primary and cfg.arbiter_name and others:
            if roles.lease is None:
                roles.lease = Lease(cfg.timeouts.qos)
            roles.lease.duration = cfg.timeouts.qos
            try:
                waived = load_lease_waiver(self.dir)
            except StateUnreadable as exc:
                log.error("%s: %s: ignored (the lease applies)", self.name, exc)
                waived = None
            if waived is not None and waived == roles.term and roles.role == "primary":
                roles.lease.waive()
        if isinstance(worker, ReceiverMirror):
            worker.on_handover = self._accept_handover
        if isinstance(worker, PrimaryMirror):
            worker.sync.on_event = self._sync_event
        self.wake()

    def _sync_event(self, kind: str, message: str, extra: dict[str, Any]) -> None:
        """A sync-mode decision of the primary (stream/sync_ack.py, which has
        logged it): an event."""
        self.events.record(kind, message, self._term(), **extra)

    def on_role_change(self, old: MirrorState, new: MirrorState, why: str) -> None:
        self.events.record("role", f"role {old.role} -> {new.role}, term {old.term} -> "
                           f"{new.term}: {why}", new.term, old_role=old.role,
                           role=new.role, primary=new.primary)
        if new.role == "primary" and self.sup.roles is not None and self.sup.roles.lease:
            self.sup.roles.lease.revoke()  # a new term's lease is earned, not inherited
        if self.may_be_primary and self.sup.cfg.hooks.get("on_role_change"):
            self._spawn(self.hook("on_role_change", old_role=old.role))
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive a bad cycle
                log.exception("%s: HA cycle failed", self.name)
            await self._sleep()

    async def _sleep(self) -> None:
        delay = self.sup.cfg.timeouts.heartbeat
        roles = self.sup.roles
        if roles is not None and roles.lease is not None and roles.writable:
            # Wake exactly when the lease runs out: keepalived hears it then.
            delay = max(0.01, min(delay, roles.lease.remaining() + 0.001))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await wait_for(self._wake.wait(), delay)

    async def cycle(self) -> None:
        worker, roles = self.sup.worker, self.sup.roles
        self._load_flags()
        if worker is None or roles is None:
            self._explain(Decision(Action.NONE, f"mirror not running: "
                                   f"{self.sup.error or 'starting'}", "not-running"))
            return
        self._writability(roles)
        lease = roles.lease
        if lease is not None and lease.renewed_by is not None and (
                self.dir / "lease-waived.json").exists():
            await asyncio.to_thread(save_lease_waiver, self.dir, None)  # a peer answered
        if not self.failover_member:
            # Status says what it is (it stayed "mirror not running: starting",
            # the decision of the first cycle, for a running arbiter or copy).
            if roles.role == "primary":  # a promoted DR member
                self._explain(Decision(Action.NONE, f"primary of term {roles.term} (a DR "
                                       f"member: an operator promoted it)", "primary"))
                if roles.writable:
                    await self._scheduled(worker)
            elif roles.role == "arbiter":
                self._explain(Decision(Action.NONE, f"arbiter of term {roles.term}: it "
                                       f"witnesses, it is never primary", "arbiter"))
            else:
                self._explain(Decision(Action.NONE, f"{roles.role} copy: never promoted "
                                       f"automatically", "async-copy"))
            return
        view = build_view(worker, self.maintenance or self.flag_error is not None)
        self.view = view
        link = arbiter_link(worker)
        if link is not None:  # our heartbeats tell the arbiter whether we may promote
            link.set_promotable(view.role == "backup" and may_promote(view))
        decision = decide(view)
        if decision.action is Action.PROMOTE and self.flag_error is not None:
            decision = Decision(Action.NONE, f"no failover: {self.flag_error}", "flags-unreadable")
        self._explain(decision)
        if decision.action is Action.PROMOTE:
            try:
                await self._promote(roles, decision.reason, forced=False)
            except OperationRefused as exc:
                log.warning("%s: %s", self.name, exc)
        elif view.role == "primary" and roles.writable:
            await self._scheduled(worker)
            self._health(worker)

    def _writability(self, roles: RoleOwner) -> None:
        writable = roles.writable
        keeps_vip = roles.keeps_vip
        if keeps_vip != self._keeps_vip:
            # A drain's hold on the VIP ended (a lost lease, a higher term):
            # the track file says so now, not at the publisher's next round.
            self._keeps_vip = keeps_vip
            if writable == self._writable and self.on_writable_change is not None:
                self.on_writable_change()
        if writable != self._writable:
            first = self._writable is None
            self._writable = writable
            if self.on_writable_change is not None:
                self.on_writable_change()
            if not first or writable:
                self.events.record("writable" if writable else "not-writable",
                                   "writable primary" if writable else
                                   "not writable: " + self._why_not(roles), roles.term)
        if not self.may_be_primary:
            return
        if writable:
            self.app.want("up")
        elif (self.app.state is None and roles.holds_primary and not roles.draining
              and time.monotonic() - self._started < self._start_grace()):
            # An agent restarting as primary waits for its first lease before
            # stopping an application the previous process left running: a
            # routine restart must not bounce it. A higher term, a drain or
            # the grace running out (no peer answers) stop it.
            pass
        else:
            self.app.want("down")

    def _start_grace(self) -> float:
        t = self.sup.cfg.timeouts
        return t.qos + 2 * t.heartbeat

    def _why_not(self, roles: RoleOwner) -> str:
        if roles.role != "primary":
            return f"{roles.role} of term {roles.term}"
        if roles.draining:
            return "draining for a switchover"
        if not roles.holds_primary:
            return "stepping down (a higher term exists)"
        return "fenced: lease expired (neither backup nor arbiter answered within qos)"

    def _explain(self, decision: Decision) -> None:
        now = time.monotonic()
        changed = self.decision is None or decision.situation != self.decision.situation
        self.decision = decision
        if changed:
            level = logging.WARNING if decision.action is Action.PROMOTE or \
                decision.situation in ("fenced", "lost-both", "not-active",
                                       "arbiter-sees-primary") else logging.INFO
            log.log(level, "%s: %s", self.name, decision.reason)
            self.events.record("decision", decision.reason, self._term(),
                               situation=decision.situation, action=decision.action.value)
            self._logged_at = now
        elif now - self._logged_at >= LOG_EVERY:
            log.info("%s: %s", self.name, decision.reason)
            self._logged_at = now
        else:
            log.debug("%s: %s", self.name, decision.reason)

    def _term(self) -> int | None:
        return self.sup.roles.term if self.sup.roles is not None else None

    def term(self) -> int | None:
        return self._term()

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._done)

    # -- acting ---------------------------------------------------------------

    async def _promote(self, roles: RoleOwner, why: str, forced: bool) -> int:
        async with self._busy:
            if roles.role not in ("backup", "async"):
                raise OperationRefused(f"this member is {roles.role}, not a backup or a "
                                       f"DR copy")
            base = roles.term
            term = base + 1
            if forced:
                # In a disaster nobody may be left to renew its lease: the
                # new primary is writable until a peer first answers it.
                await asyncio.to_thread(save_lease_waiver, self.dir, term)
            self.events.record("promote", f"{'forced ' if forced else ''}promotion to primary "
                               f"of term {term}: {why}", term, forced=forced)
            try:
                await roles.change("primary", term, self.sup.agent.host, why, from_term=base)
            except TermMoved as exc:
                # Another member was promoted (or handed over) while we
                # decided: never a second primary of its term.
                self.events.record("promote", f"promotion to term {term} not made: {exc}",
                                   roles.term)
                raise OperationRefused(f"not promoted: {exc}") from None
            return term

    async def _accept_handover(self, msg: Handover) -> None:
        roles = self.sup.roles
        assert roles is not None
        async with self._busy:
            self.events.record("switchover", f"handover from the primary: becoming primary "
                               f"of term {msg.term} at LSN {msg.lsn}", msg.term)
            await roles.change("primary", msg.term, self.sup.agent.host,
                               f"switchover: the primary handed over at LSN {msg.lsn}")

    async def switchover(self, to: str | None, why: str) -> dict[str, Any]:
        worker = self.sup.worker
        if not isinstance(worker, PrimaryMirror):
            roles = self.sup.roles
            raise OperationRefused(
                f"this host is not the primary of {self.name}"
                + (f" (role {roles.role}, primary {roles.primary})" if roles else ""))
        if self._busy.locked():
            raise OperationRefused("another promotion or switchover is in progress")
        async with self._busy:
            try:
                return await switch_over(worker, to, self.events, self._hook_for_switchover,
                                         why, timeout=max(10.0, 5 * worker.cfg.timeouts.qos))
            except SwitchoverRefused as exc:
                raise OperationRefused(str(exc)) from None

    async def _hook_for_switchover(self, hook: str) -> None:
        await self.app.ensure("down" if hook == "on_demote" else "up")

    async def schedule_switchover(self, at: float | None, to: str | None,
                                  cancel: bool) -> dict[str, Any]:
        worker = self.sup.worker
        if cancel:
            had = self.schedule
            await asyncio.to_thread(save_schedule, self.dir, None)
            self._load_flags()
            msg = "scheduled switchover cancelled" if had else "no switchover was scheduled"
            if had:
                self.events.record("switchover", msg, self._term(), at=had.at)
            return {"mirror": self.name, "result": "cancelled", "term": self._term(),
                    "primary": self.sup.roles.primary if self.sup.roles else None,
                    "pause_seconds": None, "at": had.at if had else None, "message": msg}
        if at is None:
            return await self.switchover(to, "operator's switchover")
        if not isinstance(worker, PrimaryMirror):
            raise OperationRefused(f"this host is not the primary of {self.name}: schedule "
                                   f"the switchover on the primary")
        if at <= time.time():
            raise OperationRefused("the time is in the past")
        if to is not None and to not in self.sup.cfg.failover_names:
            raise OperationRefused(f"{to} is not a failover member of {self.name}")
        scheduled = Scheduled(at, to)
        await asyncio.to_thread(save_schedule, self.dir, scheduled)
        self._load_flags()
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
        msg = f"switchover scheduled at {when}" + (f" to {to}" if to else "")
        self.events.record("switchover", msg, self._term(), at=at, to=to)
        return {"mirror": self.name, "result": "scheduled", "term": self._term(),
                "primary": self.sup.agent.host, "pause_seconds": None, "at": at,
                "message": msg}

    async def _scheduled(self, worker: MirrorWorker) -> None:
        s = self.schedule
        if s is None or time.time() < s.at or not isinstance(worker, PrimaryMirror):
            return
        await asyncio.to_thread(save_schedule, self.dir, None)  # runs once, done or not
        self._load_flags()
        try:
            check_switchover(worker, s.to)
        except SwitchoverRefused as exc:
            self.events.record("switchover", f"scheduled switchover skipped: {exc}",
                               self._term(), at=s.at)
            log.warning("%s: scheduled switchover skipped: %s", self.name, exc)
            return
        self._spawn(self._switch_quietly(s.to, "scheduled switchover"))

    async def _switch_quietly(self, to: str | None, why: str) -> None:
        try:
            await self.switchover(to, why)
        except OperationRefused as exc:
            self.events.record("switchover", f"{why} failed: {exc}", self._term())

    async def promote(self, force: bool) -> dict[str, Any]:
        """An operator's promotion of this backup or DR copy (control route)."""
        worker, roles = self.sup.worker, self.sup.roles
        me = self.sup.cfg.members.get(self.sup.agent.host)
        if (not isinstance(worker, ReceiverMirror) or roles is None or me is None
                or roles.role not in ("backup", "async")):
            raise OperationRefused(f"this host is not a backup or DR copy of {self.name}"
                                   + (f" (role {roles.role})" if roles else ""))
        if roles.role == "async" and me.kind != "dr":
            raise OperationRefused(f"{self.sup.agent.host} is a reporting copy of {self.name}: "
                                   f"reporting copies are never promoted")
        # A planned promotion obeys maintenance mode and the flags like the rules do.
        view = build_view(worker, self.maintenance or self.flag_error is not None)
        gap = None if view.lag_bytes is None else view.lag_bytes
        if roles.role == "async":
            return await self._promote_dr(worker, roles, force, gap)
        if not force:
            decision = decide(view)
            if decision.action is not Action.PROMOTE:
                raise OperationRefused(
                    f"refused: {decision.reason}. A planned change of primary is a "
                    f"switchover (`mirrorkit switchover`); `--force` promotes anyway, at the "
                    f"risk of two primaries if the old one is still writable and of losing "
                    f"what it had not shipped")
        ok, why = active(view)
        reason = ("operator's forced promotion" if force else "operator's promotion") + \
            f" (this backup {why})"
        term = await self._promote(roles, reason, forced=force)
        lsns = (max(0, worker.primary_lsn - worker.applied) if worker.primary_known else None)
        return {"mirror": self.name, "result": "done", "term": term, "gap_lsns": lsns,
                "gap_bytes": gap, "message": f"{self.sup.agent.host} is primary of term "
                f"{term}" + ("" if ok else f"; WARNING: it {why}")}

    async def _promote_dr(self, worker: ReceiverMirror, roles: RoleOwner, force: bool,
                          gap: int | None) -> dict[str, Any]:
        """A DR copy becomes primary. Planned (no loss) is a switchover run
        on the primary (`to=` this member); here only the disaster case."""
        silence = worker.primary_silence()
        if not force:
            raise OperationRefused(
                f"a planned promotion of {self.sup.agent.host} is a switchover from the "
                f"primary ({roles.primary or '?'}) to it, which drains first and loses "
                f"nothing (`mirrorkit promote` does that when the primary answers); "
                f"`--force` promotes at once: if the old primary may still be writable, "
                f"two primaries, and what it had not shipped (here "
                f"{'unknown' if gap is None else f'{gap} B'}) is lost to the new one")
        if worker.connected and silence < worker.cfg.timeouts.qos:
            self.events.record("promote", f"forced DR promotion while still hearing primary "
                               f"{roles.primary} ({silence:.1f} s ago)", roles.term)
        reason = (f"operator's forced DR promotion (last primary {roles.primary or '?'} heard "
                  f"{silence:.1f} s ago; {'unknown' if gap is None else f'{gap} B'} behind it "
                  f"then, LSN {worker.applied} applied)")
        term = await self._promote(roles, reason, forced=True)
        lsns = (max(0, worker.primary_lsn - worker.applied) if worker.primary_known else None)
        return {"mirror": self.name, "result": "done", "term": term, "gap_lsns": lsns,
                "gap_bytes": gap, "applied_lsn": worker.applied,
                "primary_lsn": worker.primary_lsn if worker.primary_known else None,
                "message": f"{self.sup.agent.host} is primary of term {term} (forced); "
                f"gap: {'unknown' if gap is None else f'{gap} B'}"}

    # -- hooks ----------------------------------------------------------------

    async def hook(self, hook: str, old_role: str | None = None) -> HookResult | None:
        cfg = self.sup.cfg
        command = cfg.hooks.get(hook)
        if not command:
            return None
        roles = self.sup.roles
        env = {"MIRRORKIT_MIRROR": cfg.name, "MIRRORKIT_HOST": self.sup.agent.host,
               "MIRRORKIT_ROLE": roles.role if roles else "",
               "MIRRORKIT_TERM": str(roles.term) if roles else "",
               "MIRRORKIT_PRIMARY": (roles.primary or "") if roles else "",
               "MIRRORKIT_OLD_ROLE": old_role or ""}
        timeout = cfg.health.timeout if hook == "health_check" else cfg.hook_timeout
        result = await run_hook(hook, command, timeout, env)
        if hook != "health_check" or not result.ok:
            level = logging.INFO if result.ok else logging.ERROR
            log.log(level, "%s: hook %s: %s%s", self.name, hook, result.summary(),
                    f"; output: {result.output[-500:]!r}" if result.output else "")
        if hook != "health_check" or not result.ok or self._health_failures:
            self.events.record("hook", result.summary(), self._term(), hook=hook,
                               exit_status=result.exit_status, output=result.output,
                               seconds=round(result.seconds, 3), timed_out=result.timed_out)
        return result

    def _health(self, worker: MirrorWorker) -> None:
        if not self.sup.cfg.hooks.get("health_check"):
            return
        if self._health_task is None or self._health_task.done():
            self._health_task = self._spawn(self._health_loop())

    async def _health_loop(self) -> None:
        roles = self.sup.roles
        while roles is not None and roles.writable and self.sup.cfg.hooks.get("health_check"):
            h = self.sup.cfg.health
            result = await self.hook("health_check")
            if result is None or result.ok:
                if self._health_failures:
                    self.events.record("health", "health check passes again", roles.term)
                self._health_failures = 0
            else:
                self._health_failures += 1
                if self._health_failures >= h.failures:
                    await self._health_switchover(h.failures)
            await asyncio.sleep(h.interval)

    async def _health_switchover(self, failures: int) -> None:
        worker = self.sup.worker
        why = f"health check failed {failures} times in a row"
        if self.maintenance:
            self.events.record("health", f"{why}: no switchover (maintenance mode)",
                               self._term())
            return
        if not isinstance(worker, PrimaryMirror):
            return
        pair = worker.backup_peer()
        if pair is None:
            self.events.record("health", f"{why}: no backup to switch to", self._term())
            return
        behind = worker.peer_lag(pair[1])[0] if pair[1].connected else None
        limit = 0 if worker.cfg.mode == "sync" else worker.cfg.max_lag_on_failover
        if behind is None or behind > limit:
            state = "disconnected" if behind is None else f"{behind} B behind"
            self.events.record("health", f"{why}: no switchover, backup {pair[0]} is not "
                               f"active ({state})", self._term())
            return
        self._health_failures = 0
        try:
            await self.switchover(pair[0], why)
        except OperationRefused as exc:
            self.events.record("health", f"{why}: switchover failed: {exc}", self._term())

    # -- lifecycle / status ---------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:ha")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: HA task failed: %r", self.name, task.exception())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        d, v = self.decision, self.view
        active_now: bool | None = None
        if v is not None and v.role == "backup":
            active_now = active(v)[0] and v.primary_silence < v.qos + v.heartbeat
        roles = self.sup.roles
        lease = roles.lease if roles is not None else None
        return {"decision": d.situation if d else None, "reason": d.reason if d else None,
                "active": active_now,
                "lease_seconds": None if lease is None or roles is None
                or roles.role != "primary" else round(max(0.0, lease.remaining()), 3),
                "scheduled_switchover": self.schedule.as_dict() if self.schedule else None,
                "flags_error": self.flag_error, "health_failures": self._health_failures}
