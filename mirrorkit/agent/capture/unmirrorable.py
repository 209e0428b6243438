"""Paths the primary's capture refuses to log because no replica could apply
them (:class:`Unmirrorable`): longer than the path bounds of a record
(``util.fs.safe_parts``: PATH_MAX, NAME_MAX below the tree root).

Capture never logs a record the replicas would refuse: such a record would
stop every receiver at it (docs/architecture.md, "Paths and apply"). It
skips the path instead, with one WARNING naming it and the bound, counts it
here (``/status`` ``capture.unmirrorable``), and replicates everything
else. Owned by the primary's worker, so the count outlives capture restarts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mirrorkit.agent.util.fs import NAME_MAX, PATH_MAX, show_path

__all__ = ["MAX_REMEMBERED", "Unmirrorable"]

log = logging.getLogger(__name__)

# Distinct paths remembered (for one WARNING per path, not one per rescan or
# event). Past it, the set starts over: a path may then be warned about again.
MAX_REMEMBERED = 10_000


class Unmirrorable:
    """The paths capture refused, counted once per path since the worker
    started (a rescan or a new event on the same path counts again only
    after :data:`MAX_REMEMBERED` others)."""

    def __init__(self, label: str = "capture") -> None:
        self.label = label
        self.paths = 0  # distinct refused paths since start
        self.last: dict[str, Any] | None = None
        self._seen: set[tuple[int, str]] = set()

    def refuse(self, root: str, tree: int, rel: str, problem: str) -> None:
        """``rel`` of tree ``tree`` (at ``root``) is not mirrored: ``problem``
        says what is too long about it."""
        key = (tree, rel)
        if key in self._seen:
            return
        if len(self._seen) >= MAX_REMEMBERED:
            self._seen.clear()
        self._seen.add(key)
        self.paths += 1
        self.last = {"tree": tree, "path": show_path(rel)[1:-1], "reason": problem,
                     "at": round(time.time(), 3)}
        log.warning("%s: %s in %s not mirrored: that path %s (a record carries at most "
                    "%d bytes below its tree root and %d per name); the rest of the mirror "
                    "replicates", self.label, show_path(rel), root, problem, PATH_MAX - 1,
                    NAME_MAX)

    def as_dict(self) -> dict[str, Any]:
        return {"paths": self.paths, "last": self.last}
