"""Filters of the operation playbooks (switchover, maintenance, promote,
restore, migrate): one mirror's live layout, and the checks that decide
whether an operation may go ahead.

    {{ mirrorkit_mirrors | mirrorkit_op_live(mirror, live) }}
    {{ layout | mirrorkit_op_switchover_check(to, max_lag_bytes) }}
    {{ layout | mirrorkit_op_promote_check(host, force) }}
    {{ record_text | mirrorkit_op_members_record(members[, retired]) }}
    {{ records | mirrorkit_op_former_report(groups['all']) }}

`live` maps hosts to what their agent said on GET /status (the parsed JSON),
or to None when no agent answered; or it is the `results` list of a looped
`uri` task (each with `item`, `status` and `json`). Roles come from those answers only: the
inventory says which hosts are failover members, never who is primary now.
Each check answers {"ok": bool, "reason": str, ...}; the playbook asserts
`ok` with `reason` as its message, so every refusal says what is wrong and
what to do, and the rules are unit-tested here instead of living in Jinja.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

# Fields of a member's /status entry the playbooks look at.
_FIELDS = ("role", "term", "primary", "fenced", "alive", "connected", "lag_bytes",
           "lag_records", "lag_seconds", "resyncing", "apply_failure", "maintenance", "kind")


def _spec(mirrors: Mapping[str, Any], mirror: str) -> Mapping[str, Any]:
    if not isinstance(mirrors, Mapping) or not mirrors:
        raise AnsibleFilterError("the inventory declares no mirrorkit_mirrors")
    if mirror not in mirrors:
        raise AnsibleFilterError(
            f"no mirror {mirror!r} in the inventory (mirrors: {', '.join(sorted(mirrors))})")
    spec = mirrors[mirror]
    return spec if isinstance(spec, Mapping) else {}


def inventory_roles(spec: Mapping[str, Any]) -> dict[str, str]:
    """host -> inventory role (primary, backup, arbiter, async) of one mirror."""
    roles: dict[str, str] = {}
    for role in ("primary", "backup", "arbiter"):
        if spec.get(role):
            roles[str(spec[role])] = role
    for member in spec.get("async") or []:
        if isinstance(member, Mapping) and member.get("host"):
            roles[str(member["host"])] = "async"
    return roles


def _member(mirror: str, status: Any, inventory_role: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"inventory_role": inventory_role, "answered": False}
    if not isinstance(status, Mapping):
        return entry
    m = (status.get("mirrors") or {}).get(mirror)
    if not isinstance(m, Mapping):
        entry["answered"] = True
        entry["serves_mirror"] = False
        return entry
    entry.update({"answered": True, "serves_mirror": True})
    entry.update({key: m.get(key) for key in _FIELDS})
    entry["term"] = int(m.get("term") or 0)
    ha = m.get("ha") if isinstance(m.get("ha"), Mapping) else {}
    entry.update({"decision": ha.get("decision"), "reason": ha.get("reason"),
                  "active": ha.get("active"), "scheduled": ha.get("scheduled_switchover")})
    entry["writable"] = (m.get("role") == "primary" and m.get("fenced") is False
                         and m.get("alive") is True)
    return entry


def _answers(live: Any) -> dict[str, Any]:
    if isinstance(live, Mapping):
        return dict(live)
    if isinstance(live, list):
        return {str(r["item"]): r.get("json") if r.get("status") == 200 else None
                for r in live if isinstance(r, Mapping) and "item" in r}
    raise AnsibleFilterError("mirrorkit_op_live: live must be a mapping or a uri results list")


def mirrorkit_op_live(mirrors: Mapping[str, Any], mirror: str, live: Any) -> dict[str, Any]:
    """The live layout of `mirror` from its members' answers (see module doc)."""
    spec = _spec(mirrors, mirror)
    live = _answers(live)
    roles = inventory_roles(spec)
    hosts = list(roles) + [h for h in live if h not in roles]
    members = {h: _member(mirror, live.get(h), roles.get(h)) for h in hosts}
    terms = [m["term"] for m in members.values() if m.get("serves_mirror")]
    term = max(terms) if terms else None
    writable = sorted(h for h, m in members.items() if m.get("writable") and m["term"] == term)
    problems: list[str] = []
    if len(writable) > 1:
        problems.append(f"{', '.join(writable)} all report being the writable primary in term "
                        f"{term}: resolve the split first (`mirrorkit status`)")
    elif not writable:
        fenced = sorted(h for h, m in members.items() if m.get("role") == "primary")
        problems.append(
            f"no member answers as the writable primary of {mirror}"
            + (f" ({', '.join(fenced)} report primary but fenced, dead or of an older term)"
               if fenced else "")
            + "; unanswered: " + (", ".join(h for h, m in members.items() if not m["answered"])
                                  or "none"))
    primary = writable[0] if len(writable) == 1 else None
    failover = [h for h in (spec.get("primary"), spec.get("backup")) if h]
    partner = next((h for h in failover if h != primary), None) if primary in failover else None
    report = [f"mirror {mirror}: live primary {primary or 'NONE'} (term {term})"]
    for host, m in members.items():
        if not m["answered"]:
            report.append(f"{host}: no answer from its agent (inventory role "
                          f"{m['inventory_role'] or 'none'})")
        elif not m.get("serves_mirror"):
            report.append(f"{host}: its agent does not serve {mirror}")
        else:
            lag = "" if m["role"] == "primary" else (
                f", {'connected' if m['connected'] else 'DISCONNECTED'}, lag "
                f"{m['lag_bytes']} B / {m['lag_seconds']} s")
            report.append(f"{host}: {m['role']} of term {m['term']}{lag}"
                          f"{', maintenance on' if m['maintenance'] else ''}"
                          f"{', FENCED' if m['role'] == 'primary' and m['fenced'] else ''}")
    report.extend(f"mirror {mirror}: {p}" for p in problems)
    return {"mirror": mirror, "term": term, "primary": primary, "partner": partner,
            "failover": failover, "inventory_primary": spec.get("primary"),
            "members": members, "problems": problems, "report": report}


def _refuse(reason: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "reason": reason, **extra}


def mirrorkit_op_switchover_check(layout: Mapping[str, Any], to: str | None = None,
                                  max_lag_bytes: int = 64 << 20) -> dict[str, Any]:
    """May the live primary hand over to `to` (default: its failover partner)
    now? The agent checks again and drains before it hands over; this check
    refuses early, with the operator's words, what it would refuse."""
    name, primary = layout["mirror"], layout.get("primary")
    if primary is None:
        return _refuse(f"mirror {name}: " + "; ".join(layout["problems"]))
    target = to or layout.get("partner")
    if not target:
        return _refuse(f"mirror {name} has no backup to switch over to")
    if target == primary:
        return _refuse(f"{target} is already the live primary of {name}: nothing to do",
                       noop=True, **{"from": primary, "to": target})
    m = layout["members"].get(target)
    # A DR copy may be the target too: a planned DR promotion, no loss.
    dr = m is not None and m.get("kind") == "dr" and m.get("role") == "async"
    if m is None or (target not in layout["failover"] and not dr):
        return _refuse(f"{target} is not a failover member or a DR copy of {name} (failover "
                       f"members: {', '.join(layout['failover'])}); a reporting copy is "
                       f"never promoted")
    where = {"from": primary, "to": target}
    if not m["answered"] or not m.get("serves_mirror"):
        return _refuse(f"{target}'s agent does not answer for {name}: it cannot take over",
                       **where)
    if m["role"] != ("async" if dr else "backup"):
        return _refuse(f"{target} is {m['role']} of term {m['term']}, not the backup", **where)
    if m["connected"] is not True:
        return _refuse(f"backup {target} is not connected to the primary {primary}", **where)
    if m["resyncing"] or m["apply_failure"]:
        return _refuse(f"backup {target} is resyncing or waiting for one: wait until it has "
                       f"finished (`mirrorkit status`)", **where)
    lag = m["lag_bytes"]
    if not isinstance(lag, int) or lag > max_lag_bytes:
        return _refuse(f"backup {target} is {lag} B behind (bound {max_lag_bytes} B, "
                       f"mirrorkit_op_max_lag_bytes): wait for it to catch up", **where)
    note = (f"; note: maintenance is on at {target} (it blocks automatic failover, "
            f"not a planned switchover)" if m["maintenance"] else "")
    return {"ok": True, "reason": f"{primary} -> {target}: backup connected, {lag} B behind"
            f"{note}", **where}


def mirrorkit_op_promote_check(layout: Mapping[str, Any], host: str,
                               force: bool = False) -> dict[str, Any]:
    """May `host` be promoted by an operator? Planned: only a backup whose
    primary no longer answers as writable (else it is a switchover); the
    agent applies the failover rules again and decides. Forced: any answering
    backup or DR copy, with the risk in `warnings`. A planned promotion of a DR
    copy is a switchover to it (playbooks/switchover.yml); reporting copies
    are never promoted (the agent refuses them too)."""
    name = layout["mirror"]
    m = layout["members"].get(host)
    if m is None:
        return _refuse(f"{host} is not a member of mirror {name}")
    dr = m["inventory_role"] == "async" or m.get("role") == "async"
    if dr and not force:
        return _refuse(
            f"{host} is an async member of {name}: its planned promotion is a switchover to "
            f"it from the live primary, which drains first and loses nothing "
            f"(playbooks/switchover.yml -e mirrorkit_op_to={host}, which `mirrorkit promote "
            f"--host {host}` runs); mirrorkit_op_force=true promotes it at once, for a disaster")
    if dr and m.get("kind") == "reporting":
        return _refuse(f"{host} is a reporting copy of {name}: reporting copies are never "
                       f"promoted")
    if m["inventory_role"] == "arbiter":
        return _refuse(f"{host} is the arbiter of {name}: it holds no data")
    if not m["answered"] or not m.get("serves_mirror"):
        return _refuse(f"{host}'s agent does not answer for {name}: it cannot be promoted")
    if m["role"] != ("async" if dr else "backup"):
        return _refuse(f"{host} is {m['role']} of term {m['term']}, not the backup"
                       + (": nothing to promote" if m["role"] == "primary" else ""))
    gap = {"gap_bytes": m["lag_bytes"], "gap_records": m["lag_records"],
           "gap_seconds": m["lag_seconds"]}
    gap_text = (f"{host} is {m['lag_records']} records / {m['lag_bytes']} B / "
                f"{m['lag_seconds']} s behind the last primary LSN it heard of")
    primary = layout.get("primary")
    warnings: list[str] = []
    if primary is not None:
        if not force:
            return _refuse(
                f"the primary {primary} still answers as writable: a planned change of primary "
                f"is a switchover (playbooks/switchover.yml, `mirrorkit switchover`), which "
                f"loses nothing. Forcing (mirrorkit_op_force=true) would make two writable "
                f"primaries until {primary} learns of the new term", **gap)
        warnings.append(f"{primary} still answers as the writable primary: until it learns of "
                        f"the new term, clients writing to it write to a primary whose writes "
                        f"will be quarantined when it rejoins")
    if force:
        warnings.append(f"forced promotion: what the old primary had not shipped is not on "
                        f"{host} ({gap_text}); it is quarantined, not merged, when the old "
                        f"primary rejoins")
    return {"ok": True, "reason": gap_text, "warnings": warnings, **gap}


def _record(text: Any) -> dict[str, list[str]]:
    """A members record (JSON text, '' or None when there is none yet)."""
    if not text:
        return {"members": [], "former": []}
    try:
        doc = json.loads(text) if isinstance(text, str) else text
    except ValueError as exc:
        raise AnsibleFilterError(f"the applied-members record is not JSON ({exc}); remove it, "
                                 f"the next apply writes it again") from None
    if not isinstance(doc, Mapping):
        raise AnsibleFilterError("the applied-members record is not a JSON object; remove it")
    return {key: sorted({str(h) for h in doc.get(key) or []}) for key in ("members", "former")}


def mirrorkit_op_members_record(text: Any, members: list[str],
                                retired: str | None = None) -> dict[str, list[str]]:
    """The applied-members record of a mirror after this run: `members` now,
    and `former`: every host that was a member at an earlier apply and is
    not now, kept until it is retired (`retired`: the host just retired), so
    the report repeats at every apply until someone acts on it."""
    old = _record(text)
    now = sorted(set(members))
    former = (set(old["former"]) | set(old["members"])) - set(now) - {retired}
    return {"members": now, "former": sorted(h for h in former if h)}


def mirrorkit_op_former_report(records: Mapping[str, Any], hosts: list[str]) -> list[str]:
    """Report lines for `{mirror: record}`: former members whose agent (and
    keepalived) may still run, with what to do about each."""
    lines = []
    for mirror in sorted(records):
        for host in records[mirror]["former"]:
            how = (f"`mirrorkit migrate INVENTORY --from {host} --to NEW` if it was replaced, or "
                   f"`ansible-playbook -i INVENTORY playbooks/retire.yml "
                   f"-e mirrorkit_op_host={host}`"
                   if host in hosts else
                   f"it is no longer in the inventory's hosts: add it back to all.hosts (not to a "
                   f"mirror) so it can be reached, then `ansible-playbook -i INVENTORY "
                   f"playbooks/retire.yml -e mirrorkit_op_host={host}`")
            lines.append(f"mirror {mirror}: {host} was a member at an earlier apply and is not "
                         f"one now; its mirrorkit-agent and keepalived keep running there until "
                         f"it is retired: {how}")
    return lines


class FilterModule:
    """Filters of the operation playbooks."""

    def filters(self) -> dict[str, Any]:
        return {
            "mirrorkit_op_live": mirrorkit_op_live,
            "mirrorkit_op_switchover_check": mirrorkit_op_switchover_check,
            "mirrorkit_op_promote_check": mirrorkit_op_promote_check,
            "mirrorkit_op_members_record": mirrorkit_op_members_record,
            "mirrorkit_op_former_report": mirrorkit_op_former_report,
        }
