"""The TIME of the operations commands (``switchover --at TIME``): when a
planned operation runs, turned into epoch seconds on the client.

Accepted forms (:data:`FORMS`): an ISO 8601 time *with* a zone
(``2026-12-02T03:00:00Z``, ``2026-12-02T04:00:00+01:00``), a delay from now
(``+30s``, ``+5m``, ``+2h``, ``+1d``, a number and one unit), or ``@EPOCH``
(seconds since 1970, how the controller hands a time it already converted
to the agent's command). A time without a zone is refused: the controller
and the member may not share a zone, and "03:00" must mean one instant.
"""

from __future__ import annotations

import datetime as dt
import math
import re

__all__ = ["FORMS", "MAX_AHEAD_SECONDS", "TimeSpecError", "format_epoch", "parse_time"]

FORMS = ("an ISO 8601 time with a zone (2026-12-02T03:00:00Z or 2026-12-02T04:00:00+01:00), "
         "a delay from now (+30s, +5m, +2h, +1d) or @EPOCH_SECONDS")
# A schedule further ahead than a year is a typo (2062 for 2026), not a plan.
MAX_AHEAD_SECONDS = 366 * 86400.0
_RELATIVE = re.compile(r"\+(\d{1,9}(?:\.\d{1,6})?)([smhd])\Z")
_EPOCH = re.compile(r"@(\d{1,12}(?:\.\d{1,6})?)\Z")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class TimeSpecError(ValueError):
    """TIME is unusable; the message says why and names the accepted forms."""


def parse_time(text: str, now: float) -> float:
    """``text`` as epoch seconds, strictly after ``now`` and at most
    :data:`MAX_AHEAD_SECONDS` after it."""
    shown = text if len(text) <= 60 and text.isprintable() else repr(text[:60])
    relative = _RELATIVE.match(text)
    epoch = _EPOCH.match(text)
    if relative:
        at = now + float(relative.group(1)) * _UNIT[relative.group(2)]
    elif epoch:
        at = float(epoch.group(1))
    else:
        at = _iso(text, shown)
    if not math.isfinite(at) or at <= now:
        raise TimeSpecError(f"{shown} is not in the future (now is {format_epoch(now)}): "
                            f"give {FORMS}")
    if at - now > MAX_AHEAD_SECONDS:
        raise TimeSpecError(f"{shown} is more than a year ahead ({format_epoch(at)}): "
                            "give a time within the next 366 days")
    return at


def _iso(text: str, shown: str) -> float:
    if not text or len(text) > 64 or not text[:1].isdigit():
        raise TimeSpecError(f"{shown or 'an empty string'} is not a time: give {FORMS}")
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise TimeSpecError(f"{shown} is not a time: give {FORMS}") from None
    if when.tzinfo is None:
        raise TimeSpecError(f"{shown} has no time zone: add Z (UTC) or an offset such as "
                            "+01:00, e.g. 2026-12-02T03:00:00Z")
    return when.timestamp()


def format_epoch(epoch: float) -> str:
    """``2026-12-02T03:00:00Z`` (UTC, whole seconds): how times are shown."""
    try:
        when = dt.datetime.fromtimestamp(epoch, tz=dt.UTC)
    except (OverflowError, ValueError, OSError):  # past year 9999, or not finite
        return f"{epoch:.0f} s after 1970"
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
