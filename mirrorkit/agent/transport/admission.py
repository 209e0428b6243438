"""Admission on a mirror port: how many connections and TLS handshakes one
listener takes, and how loudly it says no.

Anyone who can reach a mirror port can open TCP connections to it; only
holders of a certificate of the mirror's CA get past TLS. So what an
unauthenticated client can cost us is bounded here, before TLS starts:

* ``connections``: open connections on this port, in any state (a mirror
  has a handful of members; each holds one or two connections);
* ``handshakes``: TLS handshakes in flight, in total, and
  ``handshakes_per_source`` from one source address, so one client that
  stalls its handshakes cannot take every slot from the members;
* ``handshake_timeout``: how long one TLS handshake (and then the HELLO
  exchange) may take.

The mirror's own members must always get in: a local user flooding a port
from several addresses must not keep the backup from reconnecting to its
primary (or either from the arbiter) and so cause a failover or a fence.
Connections from a configured member address (``member_sources``) count
towards the per-source bound only, not towards the shared handshake bound,
and ``member_reserve`` connection slots (at most a quarter of
``connections``) are kept for them: others are refused once the rest are open.

A connection over a bound is closed at once, before any TLS work. Every
refusal and failed handshake goes through :class:`RefusalLog`: the first
``log_burst`` per ``log_interval`` are logged in full, the rest counted
per source and summed up in one line per source when the interval ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["HANDSHAKE_TIMEOUT", "Admission", "PortLimits", "RefusalLog"]

log = logging.getLogger("mirrorkit.agent.transport.conn")

HANDSHAKE_TIMEOUT = 10.0  # each of: the TLS handshake, the HELLO exchange


@dataclass(frozen=True, slots=True)
class PortLimits:
    """The bounds of one mirror port (docs/architecture.md, "Mirror port
    (wire)"). Tests pass small ones to :func:`~.conn.serve`."""

    connections: int = 64
    handshakes: int = 32
    handshakes_per_source: int = 8
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    # The listen queue, and so the most connections asyncio accepts per
    # wake-up: a flood's accepted-then-refused sockets are a few of these
    # bursts at a time, not the whole flood.
    backlog: int = 16
    log_burst: int = 5
    log_interval: float = 10.0
    log_sources: int = 16  # sources summed up one by one; the rest as "other sources"
    member_reserve: int = 16  # connection slots only the mirror's members may use


class Admission:
    """Counts of one port's connections and handshakes; says whether a new
    connection may start."""

    def __init__(self, limits: PortLimits, member_sources: frozenset[str] = frozenset()) -> None:
        self.limits = limits
        self.member_sources = member_sources
        self.connections = 0
        self.handshakes = 0  # in flight from addresses that are not members'
        self.handshaking: Counter[str] = Counter()  # source -> handshakes in flight

    def refusal(self, source: str) -> str | None:
        """Why a new connection from ``source`` is refused, or ``None``."""
        lim = self.limits
        if source in self.member_sources:
            if self.connections >= lim.connections:
                return f"{self.connections} connections open (at most {lim.connections})"
        else:
            shared = lim.connections - min(lim.member_reserve, lim.connections // 4)
            if self.connections >= shared:
                scope = "" if shared == lim.connections else \
                    " from addresses that are not the mirror's members"
                return f"{self.connections} connections open (at most {shared}{scope})"
            if self.handshakes >= lim.handshakes:
                return f"{self.handshakes} TLS handshakes in flight (at most {lim.handshakes})"
        if self.handshaking[source] >= lim.handshakes_per_source:
            return (f"{self.handshaking[source]} TLS handshakes in flight from this address "
                    f"(at most {lim.handshakes_per_source})")
        return None

    def opened(self, source: str) -> None:
        self.connections += 1
        if source not in self.member_sources:
            self.handshakes += 1
        self.handshaking[source] += 1

    def handshake_done(self, source: str) -> None:
        if source not in self.member_sources:
            self.handshakes -= 1
        self.handshaking[source] -= 1
        if self.handshaking[source] <= 0:
            del self.handshaking[source]  # the counter holds only sources in flight

    def closed(self) -> None:
        self.connections -= 1


class RefusalLog:
    """Rate-limited WARNING lines for refused and failed connections of one
    port: a flood of them costs a bounded number of lines per interval."""

    def __init__(self, name: str, limits: PortLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.burst, self.interval, self.max_sources = (limits.log_burst, limits.log_interval,
                                                       limits.log_sources)
        self.clock = clock
        self._window_end = 0.0
        self._logged = 0
        self._suppressed: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def warning(self, source: str, fmt: str, *args: object) -> None:
        """Log ``fmt % args`` (one refusal from ``source``) or count it."""
        self._emit(logging.WARNING, source, fmt, args)

    def error(self, source: str, fmt: str, *args: object) -> None:
        self._emit(logging.ERROR, source, fmt, args)

    def _emit(self, level: int, source: str, fmt: str, args: tuple[object, ...]) -> None:
        now = self.clock()
        if now >= self._window_end:
            self.flush()
            self._window_end, self._logged = now + self.interval, 0
        if self._logged < self.burst:
            self._logged += 1
            log.log(level, fmt, *args)
            return
        if source not in self._suppressed and len(self._suppressed) >= self.max_sources:
            source = "other sources"
        self._suppressed[source] += 1
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a test): the next refusal flushes
                return
            self._timer = loop.call_later(max(0.0, self._window_end - now), self.flush)

    def flush(self) -> None:
        """Log one summary line per source counted since the last flush."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for source, count in sorted(self._suppressed.items()):
            log.warning("%s: %d more refused or failed connection(s) from %s in the last "
                        "%.0f s", self.name, count, source, self.interval)
        self._suppressed.clear()
