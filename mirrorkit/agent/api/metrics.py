"""Prometheus text exposition (format 0.0.4) built from the ``/status`` dict.

Every sample carries ``mirror`` and ``member`` labels. ``member`` is this
host for its own values; for per-peer values (``peer_connected`` and the
``lag_*`` a primary reports for each receiver) it is the peer's name, so
``mirrorkit_lag_seconds{member="node2"}`` means "node2's lag" whichever
member reported it. A value missing from the status (or not a number) yields
no sample rather than a made-up 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["CONTENT_TYPE", "ROLES", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROLES = ("primary", "backup", "async", "arbiter")

# name, status key, help; all gauges (LSNs and terms restart with a rebuilt
# member, so they are not Prometheus counters).
_OWN = (
    ("mirrorkit_term", "term", "Mirror term (one more per promotion) as this member knows it."),
    ("mirrorkit_lsn", "lsn", "Last log sequence number written (primary) or received (receiver)."),
    ("mirrorkit_applied_lsn", "applied_lsn", "Last log sequence number durably applied."),
)
_LAG = (
    ("mirrorkit_lag_bytes", "lag_bytes", "Bytes of mirror log the member is behind the primary."),
    ("mirrorkit_lag_records", "lag_records", "Records the member is behind the primary."),
    ("mirrorkit_lag_seconds", "lag_seconds", "Seconds the member is behind the primary."),
)
_FLAGS = (
    ("mirrorkit_fenced", "fenced", "1 when this member is fenced (writes refused)."),
    ("mirrorkit_active", "active", "1 when this member is an active (promotable) backup."),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Any) -> str | None:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return None


class _Family:
    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.samples: list[str] = []

    def add(self, labels: dict[str, str], value: Any) -> None:
        text = _number(value)
        if text is None:
            return
        body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        self.samples.append(f"{self.name}{{{body}}} {text}")

    def render(self) -> list[str]:
        if not self.samples:
            return []
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", *self.samples]


def render_metrics(status: Mapping[str, Any]) -> str:
    """The ``/metrics`` body for a ``/status`` dict (see docs/architecture.md)."""
    host = str(status.get("host", ""))
    mirrors = status.get("mirrors")
    fams: dict[str, _Family] = {}

    def fam(name: str, help_text: str) -> _Family:
        if name not in fams:
            fams[name] = _Family(name, help_text)
        return fams[name]

    fam("mirrorkit_up", "1 while the agent answers.").add({"member": host}, 1)
    for mirror, m in sorted((mirrors or {}).items()) if isinstance(mirrors, Mapping) else ():
        if not isinstance(m, Mapping):
            continue
        own = {"mirror": str(mirror), "member": host}
        for name, key, help_text in _OWN + _LAG + _FLAGS:
            fam(name, help_text).add(own, m.get(key))
        role = m.get("role")
        roles = fam("mirrorkit_role", "1 for this member's current role in the mirror, else 0.")
        for candidate in ROLES:
            roles.add({**own, "role": candidate}, 1 if role == candidate else 0)
        peers = m.get("peers")
        if not isinstance(peers, Mapping):
            continue
        for peer, p in sorted(peers.items()):
            if not isinstance(p, Mapping) or str(peer) == host:
                continue
            labels = {"mirror": str(mirror), "member": str(peer)}
            fam(
                "mirrorkit_peer_connected", "1 when this member is connected to that peer."
            ).add(labels, p.get("connected"))
            for name, key, help_text in _LAG:
                fam(name, help_text).add(labels, p.get(key))
    lines: list[str] = []
    for family in fams.values():
        lines.extend(family.render())
    return "\n".join(lines) + "\n"
