"""What a receiver does about a record it cannot apply.

Never skip it and acknowledge past it. The records before it are applied
and acknowledged; then, by kind (:class:`~mirrorkit.agent.apply.applier.RecordFailed`):

* a **conflict** (a legal record the replica's state does not allow: an
  ``OSError`` other than disk full, I/O error or read-only file system) asks
  the primary for a ``checksum`` resync of this member: the resync's
  snapshot starts after the failed record and brings every path to the
  primary's state, so it covers it whatever the record was. Up to
  :data:`MAX_CONFLICT_RESYNCS` in a row (without a cleanly applied batch in
  between); a conflict that survives them is not one a resync fixes;
* a **refused** record (its path would leave the replica root: a hostile or
  broken primary, or a replica changed by hand) and a record that fails
  *inside* a resync stop the mirror on this member, with the LSN and the
  reason, until a resync from the primary succeeds (an operator's, or the
  automatic one of a member that fell off the retained log).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mirrorkit.agent.apply.applier import RecordFailed

__all__ = ["MAX_CONFLICT_RESYNCS", "ApplyFailure", "decide"]

MAX_CONFLICT_RESYNCS = 3


@dataclass
class ApplyFailure:
    """A record this member did not apply, and what it does about it."""

    lsn: int  # 0: a record of a resync
    reason: str
    resync: bool  # True: a checksum resync was asked for; False: stopped
    in_resync: bool = False  # failed inside a resync: drop the rest of that one
    since: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"lsn": self.lsn, "reason": self.reason,
                "action": "resync" if self.resync else "stopped",
                "since": round(self.since, 3)}


def decide(exc: RecordFailed, in_resync: bool, conflicts_in_a_row: int, applied: int,
           mirror: str, member: str) -> ApplyFailure:
    """Resync or stop, with the reason status and the log show."""
    if not exc.refused and not in_resync and conflicts_in_a_row <= MAX_CONFLICT_RESYNCS:
        return ApplyFailure(exc.lsn, f"{exc}; asking the primary for a checksum resync",
                            True, in_resync)
    why = ("refused" if exc.refused else "failed during a resync" if in_resync
           else f"still conflicts after {MAX_CONFLICT_RESYNCS} resyncs")
    return ApplyFailure(
        exc.lsn,
        f"{exc}; mirror stopped on this member ({why}): nothing after LSN {applied} is "
        f"applied or acknowledged until a resync from the primary succeeds (mirrorkit "
        f"resync INVENTORY --mirror {mirror} --member {member})", False, in_resync)
