"""A primary's lease: may it still act as primary, by what its peers echo?

A primary with a backup and an arbiter may write only while one of them has
recently proved that it hears the primary. The proof is an *echo*: every
heartbeat the primary sends carries its own clock (``stamp``); the backup
and the arbiter send back the latest stamp they received (``echo``). An
echo of stamp ``s`` shows the peer heard the primary at or after ``s``, so
that peer's silence about the primary cannot have started before ``s``.

The lease runs until ``s + duration`` (``duration`` is ``timeouts.qos``),
``s`` the newest echoed stamp from either peer. The backup promotes only
after the arbiter has not heard the primary for ``timeouts.arbiter`` and
``arbiter >= qos + 2 * heartbeat``: the primary's lease has run out on its
own clock before the backup can be writable, however the network split
(one-way losses included: only an echo renews, not merely hearing a peer).

A lease that was never renewed is expired: an agent starting as primary
writes nothing until a peer has answered it — except after an operator's
*forced* promotion (:meth:`Lease.waive`): in a disaster nobody may be left
to answer, and the operator has taken the risk; the waiver ends at the
first renewal, and from then on the lease applies as always.
"""

from __future__ import annotations

from mirrorkit.agent.util.clock import now

__all__ = ["Lease"]


class Lease:
    def __init__(self, duration: float) -> None:
        self.duration = duration
        self._stamp = -1.0  # newest echoed stamp; < 0: never renewed
        self.renewed_by: str | None = None
        self.waived = False

    def renew(self, echoed_stamp: float, by: str) -> bool:
        """A peer echoed ``echoed_stamp`` (one of our own clock readings).
        Returns True when the lease was extended. An echo from the future
        (a confused or hostile peer) is ignored: it would extend the lease
        past what anyone heard."""
        if echoed_stamp <= self._stamp or echoed_stamp > now():
            return False
        self._stamp = echoed_stamp
        self.renewed_by = by
        self.waived = False
        return True

    def waive(self) -> None:
        """A forced promotion: valid until the first renewal (then as always)."""
        if self._stamp < 0:
            self.waived = True

    def expires_at(self) -> float | None:
        return None if self._stamp < 0 else self._stamp + self.duration

    def remaining(self) -> float:
        """Seconds left (<= 0: expired or never renewed)."""
        end = self.expires_at()
        return -1.0 if end is None else end - now()

    def valid(self) -> bool:
        return self.waived or self.remaining() > 0

    def revoke(self) -> None:
        self._stamp = -1.0
        self.renewed_by = None
        self.waived = False
