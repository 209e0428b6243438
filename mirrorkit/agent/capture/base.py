"""The capture interface: :class:`Capture` (its written contract) and
:func:`scan_full` (the ops that recreate the trees on an empty replica).

Implementations: :class:`~mirrorkit.agent.capture.watch.WatchCapture`
(``watch``) and :class:`~mirrorkit.agent.capture.mount.capture.MountCapture`
(``mount``). The factory is
:func:`mirrorkit.agent.capture.new_capture`.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

from mirrorkit.agent.capture.index import NullIndex
from mirrorkit.agent.capture.reconcile import How, Reconciler
from mirrorkit.agent.log.records import Op

__all__ = ["Capture", "Emit", "scan_full"]

# Logs the ops durably; returns the LSN of the last one (None where the
# caller has no log, as in some tests). The mount capture maps it to
# mountd's numbering for sync mode's acknowledgements.
Emit = Callable[[list[Op]], Awaitable[int | None]]


class Capture(Protocol):
    """A capture method for one mirror (``watch`` or ``mount``).

    Contract:

    * ``run(emit)`` runs until :meth:`stop` or an error. It calls ``emit``
      with non-empty lists of ops, one call at a time, in the order the
      replicas must apply them. ``emit`` is **the timing-critical call and
      the back-pressure point**: capture awaits it and produces nothing more
      meanwhile; the caller returns only once the ops are durable in its
      mirror log. Capture's own state (the block-hash index) is persisted
      only after ``emit`` returns, so after a crash it re-sends, never skips.
    * Ordering: a directory's creation precedes anything inside it; the ops
      of one path keep the order of its changes; a RENAME comes after every
      op of its source that preceded it. ``watch`` gives no write-order
      fidelity *across* files (a replica converges to the primary once the
      lag drains; it is not crash-consistent in between): that is what
      ``mount`` is for.
    * A full pass over the trees (at start and after an overflow) ends with
      ``Op(MARK, 0, "", target="scan-complete")``: from that point the
      replica that applied everything before it equals the primary as of the
      pass.
    * Overflow (the kernel's inotify queue or capture's in-process queue):
      a full rescan against the index; no change is lost, the cost is time.
    * ``run`` raises :class:`CaptureError` when it can no longer guarantee a
      complete capture (a tree root deleted or unmounted, the inotify watch
      limit reached): the caller must stop shipping and report, never
      interpret it as "the tree is empty".
    * ``stop()`` asks ``run`` to finish its current step and waits until
      ``run`` has returned; changes not yet emitted are found again by the
      next start's scan. Never await ``stop()`` from inside ``emit``.
    """

    async def run(self, emit: Emit) -> None: ...

    async def stop(self) -> None: ...


def scan_full(
    trees: list[Path], exclude: list[str], block_size: int = 64 * 1024
) -> Iterator[Op]:
    """The ops that recreate every tree on an empty replica: per directory,
    MKDIR before its contents; per file CREATE, WRITE blocks, UTIME; SYMLINK."""
    roots = [os.path.realpath(t) for t in trees]
    rec = Reconciler(roots, exclude, NullIndex(block_size))
    for tree in range(len(roots)):
        for op in rec.reconcile(tree, "", How.SCAN):
            if op is not None:
                yield op
