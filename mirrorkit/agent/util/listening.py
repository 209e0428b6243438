"""Since when has this process been able to listen? (:class:`ListenGuard`)

A member measures a peer's silence as "now minus when I last heard it". If
its own event loop was stalled (a long blocking call, SIGSTOP, a VM pause),
the peer's heartbeats may be sitting unread in the socket buffer: the peer
was not silent, we were deaf. So silence only counts from the last moment
we were known to be listening: :meth:`ListenGuard.silence` is
``now - max(last heard, listening_since)``, where ``listening_since`` moves
to "now" whenever the guard's own 50 ms ticker woke up more than
``max_gap`` late (the agents pass ``qos``: scheduling jitter of a loaded
host is not deafness, a stall that long may be; and after a stall asyncio
runs the socket reads that became ready before the timers, so heartbeats
that waited in the buffer are read before any answer is computed), and
starts at the guard's creation (a process that just
started has heard nothing yet, which is not the same as a silent peer).

The arbiter reports the primary's silence through it and the backup judges
the primary's through it, so neither turns its own stall into a failover.
"""

from __future__ import annotations

import asyncio

from mirrorkit.agent.util.clock import now

__all__ = ["ListenGuard"]


class ListenGuard:
    def __init__(self, tick: float = 0.05, max_gap: float = 0.25) -> None:
        self.tick = tick
        self.max_gap = max_gap
        self.listening_since = now()
        self._last_tick = self.listening_since
        self.gaps = 0  # stalls seen (status)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            self.check()

    def check(self) -> None:
        t = now()
        if t - self._last_tick > self.max_gap:
            self.listening_since = t
            self.gaps += 1
        self._last_tick = t

    def silence(self, last_heard: float) -> float:
        """Seconds a peer last heard at ``last_heard`` has been silent to a
        listening us (0 when heard after our last stall ... and now)."""
        self.check()
        return max(0.0, now() - max(last_heard, self.listening_since))
