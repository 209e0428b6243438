"""Capture: changes under the mirrored paths become ordered ops (``watch`` now, ``mount`` next).

The interface, with its contract, is :class:`~.base.Capture`; :func:`new_capture`
is the factory the primary uses, so a second method plugs in here.
"""

from __future__ import annotations

from pathlib import Path

from mirrorkit.agent.capture.base import Capture
from mirrorkit.agent.capture.unmirrorable import Unmirrorable
from mirrorkit.agent.capture.watch import WatchCapture

__all__ = ["Capture", "Unmirrorable", "new_capture"]


def new_capture(trees: list[Path], exclude: list[str], index_path: Path,
                method: str = "watch", *, unmirrorable: Unmirrorable | None = None) -> Capture:
    """A capture of ``trees`` by ``method``; ValueError for a method this agent lacks.
    ``unmirrorable`` counts the paths it refuses (too long for a record)."""
    if method != "watch":
        raise ValueError(f"unknown capture method {method!r} (this agent has 'watch')")
    return WatchCapture(trees, exclude, index_path, unmirrorable=unmirrorable)
