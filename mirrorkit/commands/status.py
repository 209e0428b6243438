"""`mirrorkit status INVENTORY`: every member's live view in one table.

Each member's agent is asked over SSH (fabric, with the inventory's own
connection variables) for its loopback ``/status``; failover members are also
asked which addresses they hold, to name the VIP holder.

A receiver's lag is the live primary's view of it when the primary answered
(``lag_source: "primary"``): the primary knows its own LSN, a disconnected
receiver does not. Otherwise it is the receiver's own view (``"self"``: the
last primary LSN it heard, seconds growing since it lost the primary).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rich.console import Console
from rich.markup import escape as markup_escape
from rich.table import Table

from mirrorkit.agent.util.logsafe import escape_controls
from mirrorkit.agent.util.timespec import format_epoch
from mirrorkit.commands.common import add_inventory_argument, load_valid_inventory
from mirrorkit.remote import HostProbe, probe_host

AGENT = "/opt/mirrorkit/venv/bin/mirrorkit-agent"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show every member's live role, term, connectivity, lag and the VIP holder",
        description=(
            "Ask every member's agent for its live state and print one table. Exit status "
            "0 when every member answered, 1 when any could not be reached."
        ),
    )
    add_inventory_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON (see README)")
    parser.set_defaults(func=run)


def _fmt_lag(member: dict[str, Any]) -> str:
    resync = member.get("resyncing")
    if member.get("lag_bytes") is None:
        return f"resyncing {resync}" if resync else "-"
    records = member.get("lag_records")
    text = f"{member['lag_bytes']} B"
    if records is not None:
        text += f", {records} rec"
    text = f"{text}, {member['lag_seconds']:.1f} s"
    return f"resyncing {resync} ({text})" if resync else text


def _percent(resync: Any) -> str:
    if not isinstance(resync, dict) or not resync.get("bytes_total"):
        return "?%"
    return f"{min(100, 100 * int(resync.get('bytes_done') or 0) // resync['bytes_total'])}%"


def _resyncing(live: dict[str, Any], peer: dict[str, Any] | None) -> str | None:
    """``"42%"`` while the member resyncs (its own view, else the primary's)."""
    for view in (live, peer or {}):
        if view.get("resyncing"):
            return _percent(view.get("resync"))
    return None


def _primary_peers(probes: dict[str, HostProbe], mirror: str) -> dict[str, Any]:
    """The live primary's ``peers`` of ``mirror`` (empty if none answered)."""
    for probe in probes.values():
        live = ((probe.status or {}).get("mirrors") or {}).get(mirror) or {}
        if live.get("role") == "primary":
            return dict(live.get("peers") or {})
    return {}


def _connected(member: dict[str, Any]) -> str:
    value = member.get("connected")
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return "yes" if value else "NO"


def build_report(inventory: Any, probes: dict[str, HostProbe]) -> dict[str, Any]:
    """The JSON document `status --json` prints (documented in the README)."""
    mirrors: dict[str, Any] = {}
    for mirror in inventory.mirrors.values():
        members = []
        vip_holders: list[str] = []
        primary_peers = _primary_peers(probes, mirror.name)
        for host, inv_role in mirror.members().items():
            probe = probes[host]
            live = (
                (probe.status or {}).get("mirrors", {}).get(mirror.name) if probe.status else None
            )
            entry: dict[str, Any] = {
                "host": host,
                "inventory_role": inv_role,
                "reachable": probe.error is None,
                "error": probe.error,
                "role": None,
                "term": None,
                "connected": None,
                "lsn": None,
                "applied_lsn": None,
                "lag_bytes": None,
                "lag_records": None,
                "lag_seconds": None,
                "vip": False,
                "resync": None,  # a receiver's current or last resync (agent/resync.py)
                "alive": None,
                "lag_source": None,  # "primary" (its view of this member) or "self"
                "resyncing": None,  # "42%" while the member resyncs
                # The agent's own answers, passed through (None from an agent
                # that does not report them): the no-failover flag, the HA
                # loop's last decision, and quarantined data it holds.
                "maintenance": None,
                "ha": None,
                "quarantine": None,
            }
            if live is not None:
                entry.update(
                    role=live.get("role"),
                    term=live.get("term"),
                    lsn=live.get("lsn"),
                    applied_lsn=live.get("applied_lsn"),
                    lag_bytes=live.get("lag_bytes"),
                    lag_records=live.get("lag_records"),
                    lag_seconds=live.get("lag_seconds"),
                    resync=live.get("resync"),
                    alive=live.get("alive"),
                    lag_source="self",
                    maintenance=live.get("maintenance"),
                    ha=live.get("ha") if isinstance(live.get("ha"), dict) else None,
                    quarantine=live.get("quarantine")
                    if isinstance(live.get("quarantine"), dict) else None,
                )
                if live.get("error"):
                    entry["error"] = live["error"]
                peers = live.get("peers") or {}
                if live.get("role") in ("primary", "arbiter"):
                    up = sum(1 for p in peers.values() if p.get("connected"))
                    entry["connected"] = f"{up}/{len(peers)} peers"
                else:
                    entry["connected"] = bool(live.get("connected"))
            elif probe.error is None:
                entry["error"] = f"agent does not serve mirror {mirror.name}"
            receiver = live is None or live.get("role") in ("backup", "async")
            peer = primary_peers.get(host) if receiver else None
            if peer is not None and peer.get("lag_records") is not None:
                entry.update({k: peer.get(k) for k in ("lag_bytes", "lag_records",
                                                      "lag_seconds")})
                entry["lag_source"] = "primary"
            entry["resyncing"] = _resyncing(live or {}, peer)
            if mirror.vip is not None and mirror.vip.address in probe.addresses:
                entry["vip"] = True
                vip_holders.append(host)
            members.append(entry)
        live_primaries = [m["host"] for m in members if m["role"] == "primary"]
        mirrors[mirror.name] = {
            "mode": mirror.mode,
            "primary": live_primaries[0] if len(live_primaries) == 1 else None,
            "primaries": live_primaries,
            "term": max((m["term"] or 0) for m in members) if members else 0,
            "vip": None
            if mirror.vip is None
            else {"address": mirror.vip.cidr, "holders": vip_holders},
            "async_kinds": {a.host: a.kind for a in mirror.asyncs},
            "members": members,
            "maintenance": _maintenance(members, mirror.failover_hosts()),
            "scheduled_switchover": _scheduled(members),
        }
    return {"inventory": str(inventory.path), "mirrors": mirrors}


def _maintenance(members: list[dict[str, Any]], failover: list[str]) -> str | None:
    """"on", "off", "partial" (the failover members disagree) or None (none said)."""
    flags = {m["maintenance"] for m in members
             if m["host"] in failover and isinstance(m["maintenance"], bool)}
    if not flags:
        return None
    if len(flags) == 2:
        return "partial"
    return "on" if flags == {True} else "off"


def _scheduled(members: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The live primary's scheduled switchover ({at, to}), if it has one."""
    for m in members:
        ha = m.get("ha") or {}
        if m["role"] == "primary" and isinstance(ha.get("scheduled_switchover"), dict):
            return dict(ha["scheduled_switchover"])
    return None


def _ha_text(member: dict[str, Any]) -> str:
    ha = member.get("ha") or {}
    parts = []
    if member.get("maintenance") is True:
        parts.append("MAINTENANCE")
    if ha.get("decision"):
        parts.append(markup_escape(escape_controls(str(ha["decision"]))))
    if member["role"] == "backup" and isinstance(ha.get("active"), bool):
        parts.append("active" if ha["active"] else "NOT active")
    return ", ".join(parts)


def _quarantine_text(member: dict[str, Any]) -> str:
    reports = (member.get("quarantine") or {}).get("reports")
    if isinstance(reports, int) and not isinstance(reports, bool) and reports > 0:
        return f"[yellow]{reports} report{'s' if reports != 1 else ''}[/yellow]"
    return ""


def _role_text(member: dict[str, Any], kinds: dict[str, str]) -> str:
    role = member["role"] or f"? ({member['inventory_role']})"
    kind = kinds.get(member["host"])
    return f"{role} ({kind})" if kind and member["role"] == "async" else role


def print_table(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"mirrorkit status: {report['inventory']}")
    for column in ("mirror", "host", "role", "term", "connected", "lag", "LSN", "VIP", "HA",
                   "quarantine"):
        table.add_column(column, no_wrap=True)
    for name, mirror in report["mirrors"].items():
        kinds = mirror.get("async_kinds", {})
        for member in mirror["members"]:
            role = _role_text(member, kinds)
            if not member["reachable"]:
                table.add_row(
                    name,
                    member["host"],
                    f"[red]{role}[/red]",
                    "-",
                    "[red]unreachable[/red]",
                    _fmt_lag(member),  # the primary's view, when it has one
                    "-",
                    "",
                    "",
                    "",
                )
                continue
            holds_data = member["role"] != "arbiter"
            term = "-" if member["term"] is None else str(member["term"])
            lsn = "-" if member["lsn"] is None or not holds_data else str(member["lsn"])
            lag = _fmt_lag(member) if holds_data else "-"
            vip = mirror["vip"]["address"].split("/")[0] if member["vip"] else ""
            table.add_row(name, member["host"], role, term, _connected(member), lag, lsn, vip,
                          _ha_text(member), _quarantine_text(member))
    console.print(table)
    for name, mirror in report["mirrors"].items():
        holders = mirror["vip"]["holders"] if mirror["vip"] else []
        vip_text = (
            "no VIP"
            if mirror["vip"] is None
            else f"VIP {mirror['vip']['address']} on {', '.join(holders) or 'NOBODY'}"
        )
        maintenance = {"on": ", MAINTENANCE ON (no automatic failover)",
                       "partial": ", maintenance on only some failover members",
                       }.get(mirror.get("maintenance") or "", "")
        console.print(
            f"{name}: primary {mirror['primary'] or 'UNKNOWN'}, term {mirror['term']}, "
            f"mode {mirror['mode']}, {vip_text}{maintenance}"
        )
        planned = mirror.get("scheduled_switchover")
        if planned:
            at = planned.get("at")
            when = format_epoch(at) if isinstance(at, int | float) else "?"
            console.print(f"{name}: switchover to {planned.get('to') or 'the active backup'} "
                          f"scheduled for {when} (cancel: mirrorkit switchover INVENTORY "
                          f"--mirror {name} --cancel)", markup=False)
    for name, mirror in report["mirrors"].items():
        for member in mirror["members"]:
            ha = member.get("ha") or {}
            if member["role"] in ("primary", "backup") and ha.get("reason"):
                console.print(f"{name}/{member['host']}: HA "
                              f"{escape_controls(str(ha.get('decision', '?')))}: "
                              f"{escape_controls(str(ha['reason']))}", markup=False)
            q = member.get("quarantine") or {}
            if _quarantine_text(member):
                console.print(f"{name}/{member['host']}: holds quarantined data: "
                              f"{q['reports']} report(s), latest "
                              f"{escape_controls(str(q.get('last') or '?'))}",
                              markup=False)
    for name, mirror in report["mirrors"].items():
        for member in mirror["members"]:
            r = member.get("resync") or {}
            if r.get("state") in ("pending", "manifest", "copying"):
                pct = 100 * r["bytes_done"] // r["bytes_total"] if r["bytes_total"] else 0
                eta = "?" if r.get("eta_seconds") is None else f"{r['eta_seconds']:.0f} s"
                console.print(
                    f"{name}/{member['host']}: {r['mode']} resync {r['state']} {pct}% "
                    f"({r['bytes_done']}/{r['bytes_total']} B, {r['files_done']}/"
                    f"{r['files_total']} files, {r['rate'] / 1e6:.1f} MB/s, ETA {eta})"
                )
    for name, mirror in report["mirrors"].items():
        for member in mirror["members"]:
            if member["error"]:
                console.print(f"[yellow]{name}/{member['host']}: {member['error']}[/yellow]")


def run(args: argparse.Namespace) -> int:
    inventory = load_valid_inventory(args.inventory)
    member_hosts = sorted({h for m in inventory.mirrors.values() for h in m.members()})
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(member_hosts)))) as pool:
        results = pool.map(lambda h: probe_host(inventory.hosts[h], AGENT), member_hosts)
        probes = dict(zip(member_hosts, results, strict=True))
    report = build_report(inventory, probes)
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print_table(report, Console(width=max(120, Console().width)))
    return 0 if all(p.error is None for p in probes.values()) else 1
