"""What the primary's capture is doing, as health checks and status see it.

States (``state`` in the primary's ``/status`` ``capture``):

* ``scanning`` -- the first run since the worker started is in its full scan
  (before ``MARK scan-complete``). Healthy: the scan *is* replication (it
  emits every change made while the agent was down, or the whole tree on
  first start), and an agent restart must not make ``/primary`` fail.
* ``running`` -- the scan completed; changes are captured as they happen.
* ``failed`` -- the last run raised; the next attempt starts at
  ``retry_at`` (backoff). Unhealthy: nothing is captured meanwhile.
* ``restarting`` -- a run started after a failure and has not completed its
  scan yet. Unhealthy until it has: changes were missed while capture was
  down, and a failure that repeats (a deleted tree root, an unreadable
  directory) usually repeats during that scan, so health does not flap
  between 200 and 503 at every retry.

``restarts`` counts the runs started after a failure since the worker
started; ``since`` is when the current state began (epoch seconds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

__all__ = ["CaptureState"]

HEALTHY = ("scanning", "running")


@dataclass
class CaptureState:
    state: str = "scanning"
    error: str = ""
    since: float = 0.0
    restarts: int = 0
    retry_at: float | None = None
    _failed_before: bool = False

    def __post_init__(self) -> None:
        self.since = self.since or time.time()

    def _enter(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()

    def started(self) -> None:
        """A capture run starts (first, or after a failure)."""
        self.retry_at = None
        if self._failed_before:
            self.restarts += 1
            self._enter("restarting")
        else:
            self._enter("scanning")

    def scan_complete(self) -> None:
        """The run's full scan emitted ``MARK scan-complete``: it works."""
        if self.state in ("scanning", "restarting"):
            self._enter("running")
            self.error = ""
            self._failed_before = False

    def failed(self, error: str, retry_in: float) -> None:
        self._failed_before = True
        self.error = error
        self.retry_at = time.time() + retry_in
        self.state, self.since = "failed", time.time()

    @property
    def healthy(self) -> bool:
        return self.state in HEALTHY

    def reason(self) -> str | None:
        """Why the primary is unhealthy (``None`` when it is not)."""
        if self.healthy:
            return None
        if self.state == "failed":
            left = max(0.0, (self.retry_at or 0.0) - time.time())
            return f"capture failed: {self.error}; restarting in {left:.0f} s"
        return (f"capture restarting (restart {self.restarts}) after: {self.error}; "
                "healthy again once its scan completes")

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "error": self.error or None,
                "since": round(self.since, 3), "restarts": self.restarts,
                "retry_at": None if self.retry_at is None else round(self.retry_at, 3)}
