"""Capture: changes under the mirrored paths become ordered ops (``watch`` or ``mount``).

The interface, with its contract, is :class:`~.base.Capture`; :func:`new_capture`
is the factory the primary uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mirrorkit.agent.capture.base import Capture
from mirrorkit.agent.capture.mount.capture import LastMark, MountCapture
from mirrorkit.agent.capture.unmirrorable import Unmirrorable
from mirrorkit.agent.capture.watch import WatchCapture

__all__ = ["Capture", "MountParams", "Unmirrorable", "new_capture"]


@dataclass(frozen=True, slots=True)
class MountParams:
    """What the ``mount`` capture needs besides the trees: mountd's socket,
    this host's name (in the log's resume marks), the last such mark, and
    the primary's lease (seconds left; 0: not writable) with its renewal."""

    socket: Path
    host: str
    last_mark: LastMark
    lease_left: Callable[[], float]
    renew_seconds: float
    resync_peers: Callable[[str], object] | None = None
    stall_limit: float = 30.0
    acked_lsn: Callable[[], int] | None = None


def new_capture(trees: list[Path], exclude: list[str], index_path: Path,
                method: str = "watch", *, unmirrorable: Unmirrorable | None = None,
                mount: MountParams | None = None) -> Capture:
    """A capture of ``trees`` by ``method``; ValueError for a method this agent lacks.
    ``unmirrorable`` counts the paths it refuses (too long for a record)."""
    if method == "watch":
        return WatchCapture(trees, exclude, index_path, unmirrorable=unmirrorable)
    if method == "mount":
        if mount is None or len(trees) != 1:
            raise ValueError("the mount capture needs its MountParams and exactly one tree")
        return MountCapture(mount.socket, trees[0], exclude, mount.host, mount.last_mark,
                            lease_left=mount.lease_left, renew_seconds=mount.renew_seconds,
                            resync_peers=mount.resync_peers, stall_limit=mount.stall_limit,
                            acked_lsn=mount.acked_lsn)
    raise ValueError(f"unknown capture method {method!r} (this agent has 'watch' and 'mount')")
