"""When the primary appended its batches: the clock behind ``lag_seconds``.

A peer's ``lag_seconds`` is the age of its oldest unacknowledged record:
the append time of the batch holding LSN ``acked + 1``. The primary keeps
one ``(first LSN, wall time)`` entry per batch (taken when the batch's
append starts) and, before each append, forgets the entries no peer needs
any more (:meth:`AppendTimes.forget_through` with the slowest peer's acked
LSN), so the oldest entry is the one the slowest peer needs. While a peer
is down for hours nothing is forgotten, so the history is also **bounded**:
at most ``limit`` entries. When it is full, every other entry of its older
half is dropped, the oldest entry always kept.
Dropping entry *k* makes a peer whose oldest unacknowledged record lies in
batch *k* look as old as batch *k-1*: the error only ever overstates a lag,
never hides one, and it is largest for old entries, where it matters least
(a peer an hour behind is shown a little more than an hour behind). Recent
entries stay exact, so the lag of connected peers is exact.
"""

from __future__ import annotations

import bisect

__all__ = ["LIMIT", "AppendTimes"]

LIMIT = 1024


class AppendTimes:
    def __init__(self, limit: int = LIMIT) -> None:
        if limit < 4:
            raise ValueError("AppendTimes needs a limit of at least 4 entries")
        self.limit = limit
        self._lsns: list[int] = []
        self._times: list[float] = []

    def __len__(self) -> int:
        return len(self._lsns)

    def append(self, first_lsn: int, when: float) -> None:
        """A batch starting at ``first_lsn`` was appended at ``when``."""
        if self._lsns and first_lsn <= self._lsns[-1]:
            raise ValueError(f"batch LSN {first_lsn} does not follow {self._lsns[-1]}")
        self._lsns.append(first_lsn)
        self._times.append(when)
        if len(self._lsns) > self.limit:
            self._decimate()

    def _decimate(self) -> None:
        mid = len(self._lsns) // 2
        # Keep entry 0 and the newer half; every other entry of 1..mid goes.
        self._lsns = self._lsns[:1] + self._lsns[2:mid:2] + self._lsns[mid:]
        self._times = self._times[:1] + self._times[2:mid:2] + self._times[mid:]

    def forget_through(self, lsn: int) -> None:
        """Every peer has acknowledged ``lsn``: keep only the entries that can
        still date a record after it (the last one at or before ``lsn + 1``
        and the later ones)."""
        keep = bisect.bisect_right(self._lsns, lsn + 1) - 1
        if keep > 0:
            del self._lsns[:keep]
            del self._times[:keep]

    def oldest_unacked(self, acked: int) -> float | None:
        """Append time of the batch holding ``acked + 1`` (or of an earlier
        one, after decimation); ``None`` when it predates the history."""
        i = bisect.bisect_right(self._lsns, acked + 1) - 1
        return self._times[i] if i >= 0 else None
