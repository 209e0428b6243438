"""The clock failover timing is measured on: CLOCK_BOOTTIME, in seconds.

Monotonic (a wall-clock jump moves nothing) and, unlike CLOCK_MONOTONIC,
it keeps counting while the host is suspended, so a primary resumed from a
suspend sees its lease as expired rather than as a few seconds old. Values
only mean something on the host that read them: peers echo them back
unchanged (``Heartbeat.stamp``/``echo``) and never compare them with their own.
"""

from __future__ import annotations

import time

__all__ = ["now"]


def now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)
