"""Live-role filters of mirrorkit's playbooks (pre-check plays).

    {{ mirrorkit_mirrors | mirrorkit_live_layout(live, members) }}

`live` maps every member to what its agent said on GET /status (the parsed
JSON), or to None when no agent answers (fresh host, agent stopped). The
result tells who is primary of each mirror *now* and in which order to touch
the members: hosts that are neither primary nor backup of anything first
(arbiters, async), then failover members that are not a current primary, then
the current primaries, each band in inventory order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError


def _failover_hosts(spec: Mapping[str, Any]) -> list[str]:
    return [h for h in (spec.get("primary"), spec.get("backup")) if h]


def _live_primary(
    mirror: str, spec: Mapping[str, Any], live: Mapping[str, Any]
) -> tuple[str, str, int | None, list[str]]:
    """(primary host, source 'live'|'inventory', term, notes) of one mirror."""
    reports = {}
    for host, status in live.items():
        if isinstance(status, Mapping):
            m = (status.get("mirrors") or {}).get(mirror)
            if isinstance(m, Mapping):
                reports[host] = m
    if not reports:
        return str(spec.get("primary")), "inventory", None, []
    term = max(int(r.get("term") or 0) for r in reports.values())
    claimants = sorted(
        h for h, r in reports.items()
        if r.get("role") == "primary" and not r.get("fenced") and int(r.get("term") or 0) == term
    )
    if len(claimants) > 1:
        raise AnsibleFilterError(
            f"mirror {mirror!r}: {', '.join(claimants)} all report being the writable primary in "
            f"term {term}; refusing to converge (resolve the split first: `mirrorkit status`)"
        )
    notes = []
    if claimants:
        primary = claimants[0]
    else:
        named = sorted({
            str(r.get("primary")) for r in reports.values()
            if r.get("primary") and int(r.get("term") or 0) == term
        })
        if len(named) == 1:
            primary = named[0]
            notes.append(f"{primary} is named primary in term {term} but did not answer itself")
        else:
            primary = str(spec.get("primary"))
            notes.append(f"no member reports a writable primary in term {term}")
            return primary, "inventory", term, notes
    if primary != spec.get("primary"):
        notes.append(
            f"live primary {primary} differs from the inventory's preferred primary "
            f"{spec.get('primary')}; the agents' state wins, the inventory does not force it back"
        )
    return primary, "live", term, notes


def mirrorkit_live_layout(
    mirrors: Mapping[str, Any], live: Mapping[str, Any], members: Sequence[str]
) -> dict[str, Any]:
    if not isinstance(mirrors, Mapping):
        raise AnsibleFilterError("mirrorkit_live_layout: mirrors must be a mapping")
    layout: dict[str, Any] = {}
    primaries: set[str] = set()
    failover: set[str] = set()
    for name in sorted(mirrors):
        spec = mirrors[name] or {}
        primary, source, term, notes = _live_primary(name, spec, live)
        layout[name] = {"primary": primary, "source": source, "term": term, "notes": notes}
        primaries.add(primary)
        failover.update(_failover_hosts(spec))
    ordered = list(members)
    bands = {
        "others": [h for h in ordered if h not in failover and h not in primaries],
        "backups": [h for h in ordered if h in failover and h not in primaries],
        "primaries": [h for h in ordered if h in primaries],
    }
    agents = {
        h: ("answered" if isinstance(live.get(h), Mapping) else "none") for h in ordered
    }
    report = [f"agent {h}: {'answered' if agents[h] == 'answered' else 'not running or not installed'}"
              for h in ordered]
    for name, entry in layout.items():
        term = "-" if entry["term"] is None else entry["term"]
        report.append(f"mirror {name}: primary {entry['primary']} ({entry['source']}, term {term})")
        report.extend(f"mirror {name}: {note}" for note in entry["notes"])
    report.append("converge order: " + ", ".join(bands["others"] + bands["backups"] + bands["primaries"]))
    return {
        "report": report,
        "mirrors": layout,
        "agents": agents,
        "order": bands["others"] + bands["backups"] + bands["primaries"],
        **bands,
    }


class FilterModule:
    """Filters of mirrorkit's playbooks."""

    def filters(self) -> dict[str, Any]:
        return {"mirrorkit_live_layout": mirrorkit_live_layout}
