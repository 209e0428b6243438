"""Sync mode on the primary: through which LSN an fsync may be acknowledged
(:class:`SyncAck`), and when the primary may stop waiting for its backup.

The value (:meth:`SyncAck.value`, the worker's ``sync_acked_lsn()``):

* ``mode: async``, or a mirror without a backup: the log's durable end (a
  record is visible only once it is durable in our log);
* ``mode: sync``: the backup's *received* LSN (durable in its own log) while
  the backup is in sync; the log's durable end only while the primary runs
  without it, which the arbiter has confirmed and persisted first.

It never goes back: what was announced was acknowledged to an application.

States (``docs/architecture.md``, "Sync mode: who may acknowledge"):

``sync``
    acknowledgements wait for the backup.
``asking``
    the backup has not acknowledged for ``qos`` while data waits: every
    heartbeat to the arbiter asks "run without the backup in term T"
    (``Heartbeat.backup_out``). Acknowledgements still wait.
``alone``
    the arbiter answered with ``backup_out == T`` echoing a stamp of a
    heartbeat that carried the request, so the flag is durable there and
    the backup hears it (it is then not active: no automatic failover).
    Only now does the value follow the log's durable end.
``rejoining``
    the backup is back and nearly caught up: acknowledgements wait for it
    again; the flag stays until it has received all we acknowledged alone.
``clearing``
    it has: every heartbeat asks the arbiter to clear the flag
    (``Heartbeat.backup_back``) until the arbiter confirms, then ``sync``.

A primary that restarts does not know it ran alone: the arbiter's answer
tells it (``backup_out == T``), and it clears the flag the same way once the
backup has everything it logged. A new term clears the flag at the arbiter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from mirrorkit.agent.stream.peers import PeerState
from mirrorkit.agent.util import clock

__all__ = ["REJOIN_BYTES", "SyncAck"]

log = logging.getLogger(__name__)

# A backup this close to the log's end (connected, streaming) is waited for
# again: the pause this costs the application is about one round trip.
REJOIN_BYTES = 1 << 20

# (kind, message, extra fields): the HA loop records it as an event.
EventSink = Callable[[str, str, dict[str, Any]], None]


class SyncAck:
    def __init__(self, name: str, mode: str, qos: float, arbiter: str | None,
                 durable_end: Callable[[], int],
                 backup: Callable[[], tuple[str, PeerState] | None],
                 term: Callable[[], int],
                 bytes_between: Callable[[int, int], int]) -> None:
        self.name = name
        self.mode = mode
        self.qos = qos
        self.arbiter = arbiter
        self._durable_end = durable_end
        self._backup = backup
        self._term = term
        self._bytes_between = bytes_between
        self.listeners: list[Callable[[int], None]] = []
        self.on_event: EventSink | None = None
        self.state = "sync"
        self.since = time.time()  # wall clock of the last state change
        self._acked = 0  # the value last announced
        self.high = 0  # the highest LSN acknowledged while the backup was out
        self.from_lsn = 0  # the backup's received LSN when we stopped waiting for it
        self._asked_stamp = 0.0  # first heartbeat stamp carrying the current request
        self._asked_at = 0.0  # clock.now() when the request began
        self._refusal_told = False
        self._stall_since: float | None = None  # clock.now(): data waiting, no progress
        self._stall_received = -1
        self._no_arbiter_told = False

    # -- the value ------------------------------------------------------------

    @property
    def waits_for_backup(self) -> bool:
        return self.mode == "sync" and self._backup() is not None

    def value(self) -> int:
        end = self._durable_end()
        pair = self._backup()
        if self.mode != "sync" or pair is None or self.state == "alone":
            return max(self._acked, end)
        return max(self._acked, min(end, max(self.high, pair[1].received_lsn)))

    def update(self) -> None:
        """Something moved (an ACK, an append, a tick): announce a new value
        and take the transitions the backup's progress allows."""
        if self.waits_for_backup:
            self._follow_backup()
        v = self.value()
        if v > self._acked:
            self._acked = v
            if self.state == "alone":
                self.high = max(self.high, v)
            for listener in list(self.listeners):
                try:
                    listener(v)
                except Exception:  # one listener must not stop the others
                    log.exception("%s: a sync-ack listener failed", self.name)

    # -- the backup's progress --------------------------------------------------

    def _follow_backup(self) -> None:
        pair = self._backup()
        assert pair is not None
        member, peer = pair
        end = self._durable_end()
        now = clock.now()
        received = peer.received_lsn
        pending = received < end
        if not pending:
            self._stall_since = None
        elif self._stall_since is None or received != self._stall_received:
            self._stall_since = now
        self._stall_received = received
        if self.state == "alone":
            # Back: streaming again, and either all there or close behind and
            # moving (a paused backup's connection may look open, silent).
            moving = self._stall_since is not None and now - self._stall_since < self.qos
            if peer.connected and not peer.resyncing and peer.pending is None and (
                    not pending or (moving and self._bytes_between(received + 1, end)
                                    <= REJOIN_BYTES)):
                self.high = max(self.high, self._acked)
                self._enter("rejoining")
                self._tell(logging.WARNING, f"sync: backup {member} caught up (LSN {received} "
                           f"of {end}): fsync waits for it again", backup=member, lsn=received)
            return
        if self.state == "rejoining" and received >= self.high:
            self._enter("clearing")
            self._tell(logging.INFO, f"sync: backup {member} has everything acknowledged "
                       f"without it (LSN {self.high}): asking arbiter {self.arbiter} to clear "
                       f"its flag", backup=member, lsn=self.high)
            return
        if self.state == "asking" and not pending:
            # It answered after all. The request may have reached the arbiter:
            # clear it there before the backup counts as active again.
            self._enter("clearing" if self._asked_stamp else "sync")
            self._tell(logging.INFO, f"sync: backup {member} acknowledged again before arbiter "
                       f"{self.arbiter} confirmed: fsync goes on waiting for it", backup=member)
            return
        stalled = self._stall_since is not None and now - self._stall_since >= self.qos
        if self.state in ("sync", "rejoining", "clearing") and stalled:
            if self.arbiter is None:
                if not self._no_arbiter_told:
                    self._no_arbiter_told = True
                    self._tell(logging.WARNING, f"sync: backup {member} has not acknowledged "
                               f"for {self.qos:g} s; the mirror has no arbiter to confirm "
                               f"running without it: fsync keeps waiting", backup=member)
                return
            self.from_lsn = received if self.state != "rejoining" else self.from_lsn
            self._enter("asking")
            self._asked_at = now
            self._refusal_told = False
            self._tell(logging.WARNING, f"sync: backup {member} has not acknowledged for "
                       f"{self.qos:g} s (LSN {received} of {end}): fsync waits; asking arbiter "
                       f"{self.arbiter} to confirm running without it (term {self._term()})",
                       backup=member, lsn=received)
        elif self.state == "asking" and now - self._asked_at >= self.qos \
                and not self._refusal_told:
            self._refusal_told = True
            self._tell(logging.WARNING, f"sync: backup {member} has not acknowledged for "
                       f"{self.qos:g} s and arbiter {self.arbiter} has not confirmed running "
                       f"without it (term {self._term()}): fsync keeps waiting; the lease "
                       f"fences this primary if neither answers", backup=member)

    # -- the arbiter link's side ----------------------------------------------

    def request(self) -> tuple[int, int, int]:
        """What our next heartbeat to the arbiter says: (backup_out,
        backup_out_lsn, backup_back); zeros when there is nothing to ask."""
        term = self._term()
        if self.state in ("asking", "alone", "rejoining"):
            return term, self.from_lsn, 0
        if self.state == "clearing":
            return 0, 0, term
        return 0, 0, 0

    def sent(self, stamp: float) -> None:
        """A heartbeat stamped ``stamp`` carrying :meth:`request` went out."""
        if self.state != "sync" and not self._asked_stamp:
            self._asked_stamp = stamp

    def arbiter_says(self, backup_out: int, echo: float) -> None:
        """The arbiter's heartbeat of our term: ``backup_out`` is the term it
        holds us to run without the backup in (0: none); ``echo`` the newest
        stamp of ours it had heard when it built that answer."""
        term = self._term()
        fresh = self._asked_stamp > 0 and echo >= self._asked_stamp
        pair = self._backup()
        member = pair[0] if pair is not None else "?"
        if self.state == "asking" and fresh and backup_out == term:
            self._enter("alone")
            self._tell(logging.WARNING, f"sync: backup {member} has not acknowledged for "
                       f"{self.qos:g} s; arbiter {self.arbiter} confirms: continuing without "
                       f"it (term {term}, from LSN {self.from_lsn})", backup=member,
                       lsn=self.from_lsn)
            self.update()
        elif self.state == "clearing" and fresh and backup_out != term:
            self._enter("sync")
            self.high = 0
            self._tell(logging.INFO, f"sync: arbiter {self.arbiter} cleared its flag: backup "
                       f"{member} is in sync and active again (term {term})", backup=member)
        elif self.state == "alone" and fresh and backup_out != term:
            # The arbiter no longer holds the flag (its state was reset?):
            # stop acknowledging past the backup and ask again.
            self.high = max(self.high, self._acked)
            self._enter("asking")
            self._asked_at = clock.now()
            self._tell(logging.ERROR, f"sync: arbiter {self.arbiter} no longer confirms "
                       f"running without backup {member} (term {term}): fsync waits for the "
                       f"backup again; asking again", backup=member)
        elif self.state == "sync" and backup_out == term and pair is not None:
            # A flag of ours from before a restart: we do not know what we
            # acknowledged then, at most all our log holds.
            self.high = max(self.high, self._durable_end())
            self._enter("rejoining")
            self._tell(logging.WARNING, f"sync: arbiter {self.arbiter} holds that this "
                       f"primary runs without backup {member} (term {term}, from before a "
                       f"restart): fsync waits for the backup; the flag is cleared once it has "
                       f"LSN {self.high}", backup=member, lsn=self.high)
            self.update()

    # -- helpers ----------------------------------------------------------------

    def _enter(self, state: str) -> None:
        self.state = state
        self.since = time.time()
        self._asked_stamp = 0.0

    def _tell(self, level: int, message: str, **extra: Any) -> None:
        log.log(level, "%s: %s", self.name, message)
        if self.on_event is not None:
            try:
                self.on_event("sync", message, {"state": self.state, **extra})
            except Exception:
                log.exception("%s: recording a sync event failed", self.name)

    def status(self) -> dict[str, Any]:
        """``/status``'s ``sync`` of a primary: the value, and in sync mode
        the state (``alone``: acknowledging without the backup), since when
        (wall clock), the backup, and from which LSN it lacks data."""
        pair = self._backup()
        out: dict[str, Any] = {"acked_lsn": self.value()}
        if self.mode == "sync":
            out.update({"state": self.state if pair is not None else "no-backup",
                        "since": round(self.since, 3), "backup": pair[0] if pair else None,
                        "backup_out_from_lsn": self.from_lsn
                        if self.state in ("alone", "rejoining", "clearing") else None})
        return out
