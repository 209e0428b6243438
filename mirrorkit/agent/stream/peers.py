"""The primary's record of one receiver (:class:`PeerState`): where it is,
what is in flight to it, its resync and its apply error; and the state that
``/status`` shows for it (:func:`peer_state`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from mirrorkit.agent.resync.compare import ResyncProgress
from mirrorkit.agent.transport.frames import Manifest, ManifestEnd

__all__ = ["PeerState", "peer_state"]


@dataclass
class PeerState:
    role: str
    connected: bool = False
    acked_lsn: int = 0
    received_lsn: int = 0
    last_seen: float = 0.0
    # util/clock.now() when we last heard it, and the newest stamp it sent
    # (echoed back in our heartbeats: the peer's proof that we hear it).
    last_heard: float = 0.0
    stamp_in: float = 0.0
    resyncing: bool = False
    # Retention floor of a resync in progress (the log after it must survive);
    # never shown as acknowledged: ``acked_lsn`` stays what the peer has.
    hold_lsn: int = 0
    seen: bool = False  # connected at least once since this worker started
    disconnected_at: float | None = None  # wall clock, while disconnected
    # What the receiver reported it cannot apply (APPLY_FAILED), until it
    # acknowledges past that record or a resync covers it.
    apply_error: str | None = None
    apply_error_lsn: int = 0
    clear_error_on_ack: bool = False  # a resync was sent since: its ACK clears the error
    # (last lsn, bytes) of each batch sent and not yet acknowledged; change it
    # only through the methods below, which keep ``inflight_bytes`` in step.
    inflight: deque[tuple[int, int]] = field(default_factory=deque)
    inflight_bytes: int = 0
    acked_event: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[Any] | None = None
    conn: Any = None  # its Connection while connected (a switchover's HANDOVER goes there)
    manifest: asyncio.Queue[Manifest | ManifestEnd] | None = None  # during a resync
    resync: ResyncProgress | None = None  # the last or current one
    pending: ResyncProgress | None = None  # asked for, starts at the next send turn

    def sent(self, last_lsn: int, nbytes: int) -> None:
        self.inflight.append((last_lsn, nbytes))
        self.inflight_bytes += nbytes

    def acked_through(self, lsn: int) -> None:
        while self.inflight and self.inflight[0][0] <= lsn:
            self.inflight_bytes -= self.inflight.popleft()[1]

    def clear_inflight(self) -> None:
        self.inflight.clear()
        self.inflight_bytes = 0


def peer_state(p: PeerState) -> str:
    if not p.seen:
        return "unknown"
    if not p.connected:
        return "disconnected"
    if p.resyncing or p.pending is not None:
        return "resyncing"
    return "apply-failed" if p.apply_error else "streaming"
