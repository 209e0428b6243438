"""The failover rules (../DESIGN.md, "Failover: rules"), as one pure function.

:func:`decide` takes what a failover member knows right now (:class:`View`,
built by ``ha/view.py`` from its worker and its arbiter link) and returns
one :class:`Decision`: an action and a human-readable reason, like
Patroni's ``run_cycle``. The HA loop (``ha/loop.py``) calls it every
heartbeat, logs it and records it as an event whenever it changes. Being
pure, every rule has a unit test (tests/unit/test_failover_rules.py).

The backup promotes (term + 1) only when *all* hold:

1. it is the backup of a mirror with an arbiter, not in maintenance mode;
2. it has lost the primary: silent for ``qos + heartbeat`` while we listened;
3. it hears the arbiter (its latest answer is at most ``qos`` old), and the
   arbiter's answer is that it has not heard the primary of our term for
   ``timeouts.arbiter`` seconds (else: the arbiter still sees the primary,
   so the fault is between us: no failover, we are not active, we reconnect);
4. it is *active*: it was connected to the primary since it started, is not
   resyncing nor stopped on an apply failure, and (async) was at most
   ``max_lag_on_failover`` bytes behind when it lost it (sync mode has no
   lag limit: what the backup lacks was never acknowledged);
   and the arbiter's answer does not say that the primary of our term runs
   without it (sync mode's ``backup_out``: the primary may have acknowledged
   writes this backup never received).

Lost both the primary and the arbiter: no automatic failover (an operator
may force one). A primary's own fencing is not decided here: it is its
lease (``util/lease.py``), checked at every use; this only explains it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Action", "Decision", "View", "active", "decide", "may_promote"]


class Action(enum.Enum):
    NONE = "none"  # nothing to do (the reason says why)
    PROMOTE = "promote"  # become primary of term + 1


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    # A short stable label of the situation, for events (the reason's numbers
    # change every cycle; the label only when the situation does).
    situation: str


@dataclass(frozen=True, slots=True)
class View:
    member: str
    role: str  # primary | backup (failover members only)
    term: int
    heartbeat: float
    qos: float
    arbiter_timeout: float
    mode: str
    max_lag: int
    maintenance: bool
    arbiter: str | None  # the arbiter's name (None: the mirror has none)
    partner: str | None  # the other failover member (None: the mirror has none)
    # -- as a primary
    writable: bool = False
    lease_remaining: float | None = None  # None: no lease (nothing can take over)
    lease_ever: bool = True  # renewed at least once since this worker started
    partner_connected: bool = False
    arbiter_connected: bool = False
    draining: bool = False
    # -- as a backup
    primary: str | None = None  # whom we follow
    primary_silence: float = 0.0  # seconds, counted while we listened
    ever_connected: bool = False  # heard a primary since this worker started
    lag_bytes: int | None = None  # at the last heartbeat (None: unknown)
    resyncing: bool = False
    apply_failed: bool = False
    # capture: mount: its mountd has not yet said whether the mount holds
    # changes the log never got (stream/mount_rejoin.py): until it has, this
    # copy may differ from the primary's in ways nothing has counted.
    mount_unchecked: bool = False
    # Sync mode: what the primary's last heartbeat said it acknowledged (0:
    # it did not say), and what this backup holds durably in its log.
    primary_sync_acked: int = 0
    received_lsn: int = 0
    # The arbiter's latest answer: whom it holds primary, its silence, the
    # answer's age (None: no answer in our term yet).
    arbiter_sees: str | None = None
    arbiter_primary_silence: float | None = None
    arbiter_answer_age: float | None = None
    # With that answer (sync mode): the term whose primary the arbiter
    # confirmed to run without this backup (0: none), and from which LSN.
    arbiter_backup_out: int = 0
    arbiter_backup_out_lsn: int = 0
    # The answer was built after the arbiter heard that this backup may
    # promote (arbiter/link.py): only such an answer lets it promote.
    arbiter_knows_promotable: bool = True


def _none(situation: str, reason: str) -> Decision:
    return Decision(Action.NONE, reason, situation)


def active(v: View) -> tuple[bool, str]:
    """Is this backup *active* (fit to be promoted automatically), and why (not)."""
    if v.arbiter_backup_out and v.arbiter_backup_out == v.term:
        return False, (f"is out of sync: arbiter {v.arbiter} confirmed that primary "
                       f"{v.primary or '?'} runs without it from LSN "
                       f"{v.arbiter_backup_out_lsn} (term {v.term}), so writes acknowledged "
                       f"after it may be missing here")
    if not v.ever_connected:
        return False, "has not been connected to a primary since it started"
    if v.resyncing:
        return False, "is resyncing (its replica is incomplete)"
    if v.apply_failed:
        return False, "stopped on a record it could not apply"
    if v.mount_unchecked:
        return False, ("has not yet checked with its mirrorkit-mountd whether the mount "
                       "holds changes the log never got (retried every few seconds)")
    if v.mode == "sync" and v.primary_sync_acked > 0:
        # Sync: the primary acknowledges an fsync only once this backup has it,
        # or after the arbiter confirmed it runs without us (checked above).
        # What we lack now (lag) was never acknowledged: a lag limit here
        # would only refuse failovers of a primary that died under load. The
        # primary says it runs sync and how far it acknowledged (heartbeat
        # `sync_acked`): our own configuration alone is not enough (an apply
        # converges the backup first; the primary may still run async).
        if v.received_lsn < v.primary_sync_acked:
            return False, (f"lacks writes the primary acknowledged (holds LSN "
                           f"{v.received_lsn}, the primary acknowledged through "
                           f"{v.primary_sync_acked})")
        lag = "unknown lag" if v.lag_bytes is None else f"{v.lag_bytes} B behind"
        return True, (f"holds every write the primary acknowledged (sync mode, through LSN "
                      f"{v.primary_sync_acked}; no out-of-sync flag at arbiter {v.arbiter}; "
                      f"{lag}, never acknowledged)")
    sync_unsaid = " (the primary has not said it runs sync: the lag rule applies)" \
        if v.mode == "sync" else ""
    if v.lag_bytes is None:
        return False, "does not know its lag" + sync_unsaid
    limit = v.max_lag
    if v.lag_bytes > limit:
        return False, f"was {v.lag_bytes} B behind (max_lag_on_failover {limit} B)" + sync_unsaid
    return True, f"was {v.lag_bytes} B behind (<= {limit} B)" + sync_unsaid


def may_promote(v: View) -> bool:
    """Would this backup promote if the arbiter said the primary is lost?
    (What its heartbeats tell the arbiter: ``no_promote``.)"""
    return (v.role == "backup" and v.partner is not None and v.arbiter is not None
            and not v.maintenance and active(v)[0])


def decide(v: View) -> Decision:
    if v.role == "primary":
        return _primary(v)
    if v.role != "backup":
        return _none("not-failover", f"{v.role}: takes no part in automatic failover")
    return _backup(v)


def _primary(v: View) -> Decision:
    if v.draining:
        return _none("draining", "switchover in progress: not writable while the backup "
                     "catches up")
    peers = []
    if v.partner is not None:
        peers.append(f"backup {v.partner} {'connected' if v.partner_connected else 'lost'}")
    if v.arbiter is not None:
        peers.append(f"arbiter {v.arbiter} {'connected' if v.arbiter_connected else 'lost'}")
    seen = "; ".join(peers) or "no backup or arbiter configured"
    if v.lease_remaining is None:
        return _none("primary", f"I am the writable primary of term {v.term} ({seen})")
    if not v.writable and not v.lease_ever:
        return _none("awaiting-lease", f"primary of term {v.term}, waiting for the backup or "
                     f"the arbiter to answer before writing ({seen})")
    if v.writable:
        return _none("primary", f"I am the writable primary of term {v.term} ({seen}; lease "
                     f"{v.lease_remaining:.2f} s left)")
    return _none("fenced", f"fenced: neither the backup nor the arbiter has answered me "
                 f"within qos {v.qos:g} s ({seen}); not writable, VIP released; I resume "
                 f"as primary when one answers in term {v.term}, or rejoin as backup if a "
                 f"higher term exists")


def _backup(v: View) -> Decision:
    lost_after = v.qos + v.heartbeat
    if v.partner is None or v.arbiter is None:
        missing = "arbiter" if v.arbiter is None else "other failover member"
        return _none("no-auto", f"no automatic failover: the mirror has no {missing}")
    if v.primary_silence < lost_after:
        ok, why = active(v)
        state = "active" if ok else f"not active: {why}"
        return _none("following", f"no action: primary {v.primary or '?'} heard "
                     f"{v.primary_silence:.2f} s ago ({state})")
    lost = f"lost primary {v.primary or '?'} ({v.primary_silence:.1f} s silent)"
    if v.maintenance:
        return _none("maintenance", f"no failover: maintenance mode is on ({lost})")
    age = v.arbiter_answer_age
    if age is None or age > v.qos or v.arbiter_primary_silence is None:
        return _none("lost-both", f"no failover: {lost} and the arbiter {v.arbiter} too "
                     f"(last answer {'never' if age is None else f'{age:.1f} s ago'}); an "
                     f"operator may force a promotion (`mirrorkit promote --force`)")
    silence = v.arbiter_primary_silence
    if v.arbiter_sees not in (None, v.primary):
        return _none("arbiter-other-primary", f"no failover: {lost}, and arbiter {v.arbiter} "
                     f"holds {v.arbiter_sees} to be the primary of term {v.term}, not "
                     f"{v.primary or '?'}: reconnecting")
    if silence < v.arbiter_timeout:
        sees = v.arbiter_sees or "no primary"
        ok, why = active(v)
        return _none("arbiter-sees-primary", f"no failover: {lost}, but arbiter {v.arbiter} "
                     f"heard {sees} {silence:.2f} s ago (< {v.arbiter_timeout:g} s): the "
                     f"fault is between us; not active{'' if ok else f' (this backup {why})'}"
                     f", reconnecting")
    ok, why = active(v)
    if not ok:
        return _none("not-active", f"no failover: {lost} and arbiter {v.arbiter} has not "
                     f"heard it for {silence:.1f} s, but this backup {why}")
    if not v.arbiter_knows_promotable:
        return _none("arbiter-catching-up", f"no failover yet: {lost} and arbiter "
                     f"{v.arbiter} has not heard it for {silence:.1f} s, but that answer "
                     f"predates our telling the arbiter this backup may promote; waiting "
                     f"for its next")
    return Decision(Action.PROMOTE, f"promoting to term {v.term + 1}: {lost}; arbiter "
                    f"{v.arbiter} has not heard it for {silence:.1f} s "
                    f"(>= {v.arbiter_timeout:g} s); this backup {why}", "promote")
