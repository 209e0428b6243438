"""Term history: each term a member's log holds and the first LSN written in it.

``<state_dir>/<mirror>/terms.json`` holds ``{"history": [[term, first_lsn],
...]}``, terms strictly increasing, first LSNs non-decreasing. A record at
LSN ``n`` belongs to the last term whose first LSN is ``<= n``. Every member
keeps one beside its log: the primary adds ``(T, n)`` before it appends the
first record of its term ``T`` at LSN ``n``; a receiver adds an entry before
it logs the first received record of a new term; after a resync a receiver
adopts the primary's history up to the snapshot's LSN.

Two members share LSN ``n`` when ``n`` belongs to the same term in both
histories (one term has one primary, whose records every member received
only after this very check): :func:`last_shared` finds the last such LSN.
Whatever a member holds past it was never received by the other side: a
divergent tail (``stream.receiver`` quarantines it; docs/architecture.md,
"Divergence").

Writes are atomic and durable (:func:`mirrorkit.atomicfile.atomic_write`);
call them from a worker thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from mirrorkit.agent.log.segments import MirrorLog
from mirrorkit.atomicfile import atomic_write

__all__ = ["MAX_ENTRIES", "Entry", "HistoryUnreadable", "TermHistory", "last_shared",
           "term_at", "valid_history"]

log = logging.getLogger(__name__)

Entry = tuple[int, int]  # (term, first LSN written in it)
# A term per promotion: far more than a mirror sees in its life; beyond it the
# oldest entries go (a member that old is resynced, never misjudged).
MAX_ENTRIES = 1000


class HistoryUnreadable(Exception):
    """``terms.json`` exists but cannot be trusted (the message says why)."""


def valid_history(entries: Sequence[Sequence[int]]) -> str | None:
    """What is wrong with ``entries`` as a term history, or ``None``."""
    if len(entries) > MAX_ENTRIES:
        return f"{len(entries)} entries (at most {MAX_ENTRIES})"
    prev_term, prev_lsn = 0, 1
    for i, entry in enumerate(entries):
        if (len(entry) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                       for x in entry)):
            return f"entry {i} is not a pair of integers"
        term, lsn = entry
        if term <= prev_term:
            return f"entry {i}: term {term} does not increase (after {prev_term})"
        if lsn < prev_lsn:
            return f"entry {i}: first LSN {lsn} is below {prev_lsn}"
        prev_term, prev_lsn = term, lsn
    return None


def term_at(entries: Sequence[Entry], lsn: int) -> int | None:
    """The term of the record at ``lsn``; ``None`` when the history does not
    reach back that far."""
    found = None
    for term, first in entries:
        if first > lsn:
            break
        found = term
    return found


def last_shared(a: Sequence[Entry], a_last: int, b: Sequence[Entry], b_last: int) -> int:
    """The last LSN that two members with these histories and last LSNs share
    (0: nothing). Histories are short (one entry per term), so this walks
    the segments between any two entries' first LSNs."""
    limit = min(a_last, b_last)
    points = sorted({first for _, first in a} | {first for _, first in b} | {1})
    shared = 0
    for i, start in enumerate(points):
        if start > limit:
            break
        ta, tb = term_at(a, start), term_at(b, start)
        if ta is None or ta != tb:
            break
        end = points[i + 1] - 1 if i + 1 < len(points) else limit
        shared = min(end, limit)
    return shared


class TermHistory:
    """One member's term history for one mirror, persisted in ``terms.json``."""

    def __init__(self, path: Path, entries: list[Entry]) -> None:
        self.path = path
        self.entries = entries

    @classmethod
    def load(cls, path: Path, mirror_log: MirrorLog) -> TermHistory:
        """Read ``path``; without one (a member from before term histories),
        derive it from the log's records. Raises :class:`HistoryUnreadable`."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            history = cls(path, _derive(mirror_log))
            history.save()
            log.info("%s: no term history yet; derived %s from the log", path,
                     history.entries or "an empty history")
            return history
        except (OSError, ValueError) as exc:
            raise HistoryUnreadable(f"{path} cannot be read: {exc}") from None
        entries = raw.get("history") if isinstance(raw, dict) else None
        if not isinstance(entries, list):
            raise HistoryUnreadable(f"{path}: no 'history' list")
        problem = valid_history(entries)
        if problem is not None:
            raise HistoryUnreadable(f"{path}: {problem}")
        return cls(path, [(int(t), int(first)) for t, first in entries])

    @property
    def last_term(self) -> int:
        return self.entries[-1][0] if self.entries else 0

    def save(self) -> None:
        body = json.dumps({"history": [list(e) for e in self.entries]}) + "\n"
        atomic_write(self.path, body.encode())

    def note(self, term: int, first_lsn: int) -> None:
        """Record (persisted) that ``term`` starts at ``first_lsn`` when it is
        newer than our last term. Entries starting at or after ``first_lsn``
        were never written (a crash between this and the log append) and are
        replaced. An older term is a caller bug: raises ValueError."""
        if term == self.last_term:
            return
        if term < self.last_term:
            raise ValueError(f"term {term} is older than the history's last term "
                             f"{self.last_term}")
        kept = [(t, f) for t, f in self.entries if f < first_lsn]
        self.entries = [*kept, (term, first_lsn)][-MAX_ENTRIES:]
        self.save()

    def truncate_after(self, lsn: int) -> None:
        """Forget terms that start after ``lsn`` (a divergent tail was undone)."""
        kept = [(t, f) for t, f in self.entries if f <= lsn]
        if kept != self.entries:
            self.entries = kept
            self.save()

    def adopt(self, primary: Sequence[Entry], upto: int) -> None:
        """After a resync to the primary's snapshot at ``upto``: our history is
        the primary's, as far as the snapshot reaches."""
        self.entries = [(t, f) for t, f in primary if f <= upto][-MAX_ENTRIES:]
        self.save()


def _derive(mirror_log: MirrorLog) -> list[Entry]:
    # Before term histories existed, promotions did not: every record was
    # written in term 1, and the log's own records say so. A log with no
    # records left (trimmed or reset) but a position past 0 is taken as term 1.
    entries: list[Entry] = []
    lsn = mirror_log.first_lsn
    while lsn <= mirror_log.last_lsn:
        batch = mirror_log.read(lsn)
        if not batch:
            break
        for record in batch:
            if record.term > (entries[-1][0] if entries else 0):
                entries.append((record.term, 1 if not entries else record.lsn))
        lsn = batch[-1].lsn + 1
    if not entries and mirror_log.last_lsn > 0:
        entries.append((1, 1))
    return entries[-MAX_ENTRIES:]
