"""Operator flags of one mirror on this host, persisted beside its state:

* ``maintenance.json`` — ``{"on": bool, "since": epoch}``: the no-failover
  flag (`mirrorkit maintenance on|off`). While on, this member never
  promotes itself automatically; every skipped decision is an event.
* ``switchover.json`` — ``{"at": epoch, "to": member|null}``: a switchover
  scheduled on the primary's agent (`mirrorkit switchover --at`), so it
  happens even if the controller is gone by then.

Both are written atomically (``state.atomic_write_json``). A file that
exists but cannot be read raises :class:`~mirrorkit.agent.state.StateUnreadable`:
the HA loop then refuses to fail over (an unreadable "maintenance" must not
read as "off") and says so in status and events.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirrorkit.agent.state import StateUnreadable, atomic_write_json, read_json_object

__all__ = [
    "Scheduled",
    "load_lease_waiver",
    "load_maintenance",
    "load_schedule",
    "save_lease_waiver",
    "save_maintenance",
    "save_schedule",
]



def load_maintenance(directory: Path) -> bool:
    raw = read_json_object(directory / "maintenance.json")
    if raw is None:
        return False
    on = raw.get("on")
    if not isinstance(on, bool):
        raise StateUnreadable(f"{directory / 'maintenance.json'}: 'on' must be true or "
                              f"false, found {on!r}")
    return on


def save_maintenance(directory: Path, on: bool) -> None:
    atomic_write_json(directory / "maintenance.json", {"on": on, "since": round(time.time(), 3)})


@dataclass(frozen=True, slots=True)
class Scheduled:
    at: float  # epoch seconds
    to: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "to": self.to}


def load_schedule(directory: Path) -> Scheduled | None:
    path = directory / "switchover.json"
    raw = read_json_object(path)
    if raw is None:
        return None
    at, to = raw.get("at"), raw.get("to")
    if (isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at)
            or at <= 0):
        raise StateUnreadable(f"{path}: 'at' must be epoch seconds, found {at!r}")
    if to is not None and not isinstance(to, str):
        raise StateUnreadable(f"{path}: 'to' must be a member name or null, found {to!r}")
    return Scheduled(float(at), to)


def save_schedule(directory: Path, scheduled: Scheduled | None) -> None:
    path = directory / "switchover.json"
    if scheduled is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write_json(path, scheduled.as_dict())


def load_lease_waiver(directory: Path) -> int | None:
    """The term of a forced promotion whose primary needs no lease until a
    peer first answers it (``lease-waived.json``); None without one."""
    raw = read_json_object(directory / "lease-waived.json")
    if raw is None:
        return None
    term = raw.get("term")
    if isinstance(term, bool) or not isinstance(term, int) or term < 1:
        raise StateUnreadable(f"{directory / 'lease-waived.json'}: 'term' must be an "
                              f"integer >= 1, found {term!r}")
    return term


def save_lease_waiver(directory: Path, term: int | None) -> None:
    path = directory / "lease-waived.json"
    if term is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write_json(path, {"term": term})
