"""The event loop's own health metric: how late a periodic probe wakes up.

Heartbeats, the status API and (later) failover decisions share one asyncio
loop, so anything that blocks it (a disk read, a hash, sqlite) delays all of
them. :class:`LoopStallProbe` sleeps ``interval`` (50 ms) at a time and
records, at every wake-up, how much later than scheduled it ran
(``loop.time()`` actual minus scheduled): 0 on an idle loop, the length of
the blocking call otherwise. Each lateness goes to ``observe`` (the
``mirrorkit_loop_stall_seconds`` histogram) and into a window of the last
``window`` seconds for :meth:`summary` (``loop_stall`` in ``/status``).

A stall the probe sees only after it ended says nothing about its cause, so
a watchdog thread also looks every ``interval`` whether the probe is overdue
by more than ``warn_after`` (1 s): if it is, it logs one WARNING naming
where the loop thread is at that moment (its innermost frames), at most once
per ``warn_every`` seconds (later ones are counted in the next line).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["LoopStallProbe"]

log = logging.getLogger(__name__)


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


class LoopStallProbe:
    """Measures the running loop's stalls; :meth:`run` for the loop's life."""

    def __init__(self, observe: Callable[[float], None] | None = None, *,
                 interval: float = 0.05, window: float = 60.0, warn_after: float = 1.0,
                 warn_every: float = 60.0) -> None:
        self.observe = observe
        self.interval = interval
        self.window = window
        self.warn_after = warn_after
        self.warn_every = warn_every
        self.last = 0.0
        self.max_ever = 0.0
        self.warnings = 0
        self._samples: deque[tuple[float, float]] = deque()  # (wake-up time, stall)
        self._due = time.monotonic() + interval  # when the probe should next wake
        self._loop_thread: int | None = None
        self._stop = threading.Event()
        self._last_warn = -float("inf")
        self._suppressed = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        due = self._due = loop.time() + self.interval
        watchdog = threading.Thread(target=self._watch, name="loopstall-watchdog", daemon=True)
        watchdog.start()
        try:
            while True:
                self._due = due
                await asyncio.sleep(max(0.0, due - loop.time()))
                now = loop.time()
                self.record(max(0.0, now - due), now)
                due = now + self.interval
        finally:
            self._stop.set()

    def record(self, stall: float, now: float) -> None:
        self.last = stall
        self.max_ever = max(self.max_ever, stall)
        self._samples.append((now, stall))
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()
        if self.observe is not None:
            self.observe(stall)

    def summary(self) -> dict[str, Any]:
        """``loop_stall`` of ``/status``: the recent window, in milliseconds."""
        ordered = sorted(s for _, s in self._samples)
        if not ordered:
            ordered = [0.0]

        def ms(seconds: float) -> float:
            return round(seconds * 1000.0, 1)

        return {"p50_ms": ms(_percentile(ordered, 0.50)), "p99_ms": ms(_percentile(ordered, 0.99)),
                "max_ms": ms(ordered[-1]), "last_ms": ms(self.last),
                "max_ever_ms": ms(self.max_ever), "samples": len(self._samples),
                "window_seconds": self.window, "interval_ms": ms(self.interval)}

    def window_max(self) -> float:
        return max((s for _, s in self._samples), default=0.0)

    # -- the watchdog thread ----------------------------------------------------
    def _watch(self) -> None:
        # time.monotonic() is the clock of asyncio's default loop.time().
        while not self._stop.wait(min(self.interval, self.warn_after / 2)):
            overdue = time.monotonic() - self._due
            if overdue > self.warn_after:
                self._warn(overdue)
                # One warning per stall: wait until the probe ran again.
                due = self._due
                while due == self._due and not self._stop.wait(self.interval):
                    pass

    def _warn(self, overdue: float) -> None:
        now = time.monotonic()
        if now - self._last_warn < self.warn_every:
            self._suppressed += 1
            return
        self._last_warn = now
        self.warnings += 1
        more = (f" ({self._suppressed} more stall(s) over {self.warn_after:g} s since the last "
                f"warning)" if self._suppressed else "")
        self._suppressed = 0
        log.warning("event loop stalled: blocked for %.2f s so far, in %s%s: heartbeats and "
                    "the status API wait meanwhile", overdue, self.where(), more)

    def where(self) -> str:
        """The loop thread's innermost frames now, innermost first."""
        frame = sys._current_frames().get(self._loop_thread or -1)
        if frame is None:
            return "an unknown place"
        stack = traceback.extract_stack(frame)[-4:]
        return " <- ".join(f"{f.name} ({f.filename}:{f.lineno})" for f in reversed(stack))
