"""A planned switchover, run on the primary's agent (:func:`switch_over`).

No acknowledged data is lost, and there is never a moment with two
writable primaries:

1. refuse unless we are the writable primary, the backup is connected,
   not resyncing, not stopped on an apply failure and not far behind;
2. stop being writable and run ``on_demote``, which stops the application:
   no new writes; the VIP is released when ``on_demote`` has ended (the
   application answered its requests in flight over it; a request in
   flight when the VIP goes never gets its answer), or at once if the lease
   is lost meanwhile (``RoleOwner.keeps_vip``);
3. let the capture log what the application wrote last (``QUIET`` seconds
   with no new record, at most ``QUIET_MAX``), then hold the log's append
   lock: nothing more is logged;
4. wait until the backup has acknowledged (durably applied) our last LSN;
   if it does not within ``timeout``, abandon: writable again, ``on_promote``
   restarts the application, the reason is in the events;
5. persist ourselves as backup of term + 1 with the backup as its primary,
   then send it ``HANDOVER(term + 1, last LSN)`` on the replication
   connection. It checks the LSN and the term, promotes itself (its state
   persisted before it acts) and answers with a heartbeat as primary of the
   new term; keepalived moves the VIP; hooks run. We keep the connection
   open (sending nothing more) until that answer, its refusal or the
   linger runs out: a close with unread data resets the connection, and a
   reset makes the peer drop a HANDOVER it had buffered but not read.

If the HANDOVER is lost (a crash between 5's two steps, a cut connection),
term + 1 has no primary: the backup, no longer hearing a primary, asks the
arbiter, which has no primary of that term either, and the rules promote it
to term + 2 (or the operator does). Never two primaries: the old one has
stepped down durably before anyone may step up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mirrorkit.agent.ha.events import EventLog
from mirrorkit.agent.state import DEMOTED_ROLE
from mirrorkit.agent.stream.sender import PrimaryMirror
from mirrorkit.agent.transport.conn import Connection
from mirrorkit.agent.transport.frames import Handover
from mirrorkit.agent.util import clock
from mirrorkit.agent.util.aio import wait_for

__all__ = ["QUIET", "SwitchoverRefused", "check_switchover", "switch_over"]

log = logging.getLogger(__name__)

QUIET = 0.4  # capture's debounce is 0.25 s: a change made before on_demote is logged by then
QUIET_MAX = 5.0
MAX_BEHIND = 64 << 20  # a backup further behind must catch up first (the pause would be long)


class SwitchoverRefused(Exception):
    """The mirror is not healthy enough (the message says why and what to do)."""


def check_switchover(worker: PrimaryMirror, to: str | None) -> str:
    """The backup to switch over to; raises :class:`SwitchoverRefused`."""
    roles = worker.roles
    if not roles.writable:
        why = ("it is draining for another switchover" if roles.draining else
               "it is fenced (neither the backup nor the arbiter answers it)"
               if roles.holds_primary else f"it is {roles.role} of term {roles.term}")
        raise SwitchoverRefused(f"this member is not the writable primary: {why}")
    if to is not None and to in worker.peers and worker.cfg.members[to].kind == "dr":
        name, peer = to, worker.peers[to]  # a planned promotion of a DR member
    else:
        pair = worker.backup_peer(to)
        if pair is None:
            raise SwitchoverRefused(
                "the mirror has no backup to switch over to" if to is None else
                f"{to} is not a member this primary can hand over to (its backup, or an "
                f"async member of kind dr); a reporting copy is never promoted")
        name, peer = pair
    if not peer.connected or peer.conn is None:
        raise SwitchoverRefused(f"backup {name} is not connected")
    if peer.resyncing or peer.pending is not None:
        raise SwitchoverRefused(f"backup {name} is resyncing: wait until it has finished")
    if peer.apply_error:
        raise SwitchoverRefused(f"backup {name} cannot apply a record: {peer.apply_error}")
    behind, _records, _seconds = worker.peer_lag(peer)
    if behind > MAX_BEHIND:
        raise SwitchoverRefused(f"backup {name} is {behind} B behind (more than "
                                f"{MAX_BEHIND} B): wait for it to catch up")
    return name


async def _quiet(worker: PrimaryMirror) -> None:
    started = clock.now()
    last, since = worker.log.last_lsn, clock.now()
    while clock.now() - started < QUIET_MAX:
        await asyncio.sleep(0.05)
        if worker.log.last_lsn != last:
            last, since = worker.log.last_lsn, clock.now()
        elif clock.now() - since >= QUIET:
            return


async def _acked(worker: PrimaryMirror, name: str, lsn: int, timeout: float) -> bool:
    peer = worker.peers[name]
    deadline = clock.now() + timeout
    while peer.acked_lsn < lsn:
        if not peer.connected or clock.now() >= deadline or not worker.roles.holds_primary:
            return False
        peer.acked_event.clear()
        with contextlib.suppress(TimeoutError):
            await wait_for(peer.acked_event.wait(), 0.1)
    return True


async def _hand_over(worker: PrimaryMirror, conn: Connection, name: str, new_term: int,
                     last: int) -> str:
    """After our durable step-down: tell the arbiter, send the HANDOVER, wait
    for the answer (see the module's docstring); the outcome."""
    try:
        # The arbiter learns term new_term (with no primary yet) before
        # anyone can be its primary: should the new primary die before it
        # tells the arbiter itself, a later promotion takes a higher term,
        # never this one a second time.
        told = await worker.announce_to_companions(worker.announce_timeout())
        if not all(told):
            log.warning("%s: the arbiter did not confirm term %d before the HANDOVER; the "
                        "new primary tells it when it connects", worker.name, new_term)
        try:
            worker.handover_sent = True  # no heartbeat after it, on any path
            await conn.send(Handover(new_term, last, name))
        except (ConnectionError, OSError) as exc:
            return f"unconfirmed: the connection to {name} failed sending it ({exc!r})"
        return await worker.handover_outcome(name)
    finally:
        worker.handover_settled.set()  # the worker's stop stops lingering


async def switch_over(worker: PrimaryMirror, to: str | None, events: EventLog,
                      run_hook: Callable[[str], Awaitable[Any]], why: str,
                      timeout: float = 10.0) -> dict[str, Any]:
    """Hand the primary role to the backup; returns the route's answer.
    Raises :class:`SwitchoverRefused` before anything changed, or after an
    abandoned attempt (the member is writable again then)."""
    name = check_switchover(worker, to)
    roles = worker.roles
    term = roles.term
    started = clock.now()
    roles.begin_drain(keep_vip=True)
    events.record("switchover", f"switchover to {name} ({why}): writes stopped, draining",
                  term, to=name)
    log.warning("%s: switchover to %s (%s): not writable; running on_demote, draining",
                worker.name, name, why)
    try:
        await run_hook("on_demote")
    finally:
        roles.release_vip()  # the application has stopped (or its hook failed): the VIP goes
    await worker.drain_capture()  # mount: fenced now, and all it made is logged
    await _quiet(worker)
    async with worker.emit_lock:  # nothing more is logged from here on
        last = worker.log.last_lsn
        if not await _acked(worker, name, last, timeout):
            peer = worker.peers[name]
            reason = (f"backup {name} acknowledged LSN {peer.acked_lsn}, not our last LSN "
                      f"{last}, within {timeout:g} s"
                      if peer.connected else f"backup {name} disconnected during the drain")
            roles.end_drain()  # writable again if its lease allows: the HA loop runs on_promote
            events.record("switchover", f"switchover to {name} abandoned: {reason}", term,
                          to=name)
            log.error("%s: switchover abandoned: %s", worker.name, reason)
            raise SwitchoverRefused(f"switchover abandoned, this member is primary again: "
                                    f"{reason}")
        conn = worker.peers[name].conn
        new_term = term + 1
        # Our step-down (below) makes the send loops close their connections;
        # the one to the new primary must stay open for the HANDOVER.
        worker.handing_over = name
        try:
            await roles.change(DEMOTED_ROLE[roles.member_class], new_term, name,
                               f"switchover to {name} ({why})")
        except BaseException:
            worker.handover_settled.set()  # nothing to linger for
            raise
        # From here on we are a backup of new_term for good: what remains runs
        # to its end even if our caller is cancelled (an agent stopping, the
        # HA loop's task), or the target would never get its HANDOVER.
        outcome = await asyncio.shield(_hand_over(worker, conn, name, new_term, last))
    pause = clock.now() - started
    if outcome == "accepted":
        message = (f"switched over to {name}: term {new_term}, at LSN {last}; writes paused "
                   f"{pause:.2f} s on this side")
    else:
        # We stepped down durably; it did not (or did not say so). Never two
        # primaries; at worst term new_term has none until the failover
        # rules (or an operator's promote) give it one.
        message = (f"handed over to {name} (term {new_term}, LSN {last}) but its answer is "
                   f"{outcome}; this member is backup of term {new_term} now. If {name} does "
                   f"not become primary, the failover rules promote it once the arbiter "
                   f"confirms; `mirrorkit status` shows which")
    events.record("switchover", message, new_term, to=name, lsn=last,
                  pause_seconds=round(pause, 3), handover=outcome)
    log.warning("%s: %s", worker.name, message)
    return {"mirror": worker.cfg.name, "result": "done", "term": new_term, "primary": name,
            "pause_seconds": round(pause, 3), "at": None, "message": message,
            "handover": outcome.split(":")[0]}
