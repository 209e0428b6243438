"""`mirrorkit verify INVENTORY [--mirror M] [--repair] [--json]`: compare every
member of each mirror with its live primary while replication runs.

The live primary comes from the agents (as in `mirrorkit status`); the
members' manifests are made on the members (`mirrorkit-agent manifest` over
SSH, in parallel) and compared here; the algorithm is in
`mirrorkit/verification.py`. Exit status: 0 every copy matches the primary,
1 a difference, an orphan or an unreachable member, 2 usage error.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mirrorkit.agent.verify.manifest import Key, ManifestError, parse_manifest
from mirrorkit.commands.common import add_inventory_argument, load_valid_inventory
from mirrorkit.commands.resync import resync_on_primary
from mirrorkit.commands.status import AGENT, build_report
from mirrorkit.errors import MirrorkitError
from mirrorkit.inventory.model import Inventory
from mirrorkit.remote import connect, probe_host
from mirrorkit.verification import Manifest, VerifyFailed, verify_mirror

SHOW_PATHS = 20
BARRIER_TIMEOUT = 120.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="compare every member with the primary (online), list differing files",
        description=(
            "Compare every member's copy with the live primary while replication runs and "
            "list the differing, missing and orphan files per member; with --repair the "
            "primary re-sends the differing and missing ones. Exit status 0 when every copy "
            "matches, 1 on any difference, orphan or unreachable member."
        ),
    )
    add_inventory_argument(parser)
    parser.add_argument("--mirror", metavar="M", help="only this mirror (default: all)")
    parser.add_argument("--repair", action="store_true",
                        help="re-send differing and missing files from the primary, re-check")
    parser.add_argument(
        "--delete-orphans", action="store_true",
        help="move files only a member has into that member's quarantine (with a report), "
             "by a checksum resync of that member, then verify again",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (see README)")
    parser.set_defaults(func=run)


class SshTransport:
    """The agent commands run on the members over SSH (fabric)."""

    def __init__(self, inventory: Inventory, agent: str = AGENT) -> None:
        self.inventory = inventory
        self.agent = agent

    def _run(self, host: str, command: str, stdin: str | None = None,
             timeout: float = BARRIER_TIMEOUT + 60) -> str:
        try:
            with connect(self.inventory.hosts[host]) as conn:
                result = conn.run(command, hide=True, warn=True, timeout=timeout,
                                  in_stream=io.StringIO(stdin) if stdin is not None else False)
        except Exception as exc:
            raise VerifyFailed(f"cannot run the agent on {host} over SSH: {exc}") from None
        if not result.ok:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise VerifyFailed(detail[-1] if detail else f"exit status {result.exited}")
        return str(result.stdout)

    def primary_lsn(self, host: str, mirror: str) -> int:
        out = self._run(host, f"{self.agent} status --json", timeout=60)
        try:
            m = json.loads(out)["mirrors"][mirror]
        except (ValueError, KeyError) as exc:
            raise VerifyFailed(f"{host}: no status for {mirror}: {exc}") from None
        if m.get("role") != "primary":
            raise VerifyFailed(f"{host} is no longer the primary of {mirror}")
        return int(m["lsn"])

    def manifest(self, host: str, mirror: str, at_lsn: int | None,
                 only: Sequence[Key] | None) -> Manifest:
        cmd = [self.agent, "manifest", "--mirror", mirror]
        if at_lsn is not None:
            cmd += ["--at-lsn", str(at_lsn), "--timeout", str(BARRIER_TIMEOUT)]
        stdin = None
        if only is not None:
            cmd.append("--paths-stdin")
            stdin = json.dumps([list(k) for k in only])
        out = self._run(host, shlex.join(cmd), stdin)
        try:
            return parse_manifest(out.splitlines())
        except ManifestError as exc:
            raise VerifyFailed(f"{host}: {exc}") from None

    def repair(self, host: str, mirror: str, paths: Sequence[str]) -> dict[str, Any]:
        cmd = shlex.join([self.agent, "repair", "--mirror", mirror])
        try:
            with connect(self.inventory.hosts[host]) as conn:
                result = conn.run(cmd, hide=True, warn=True, timeout=600,
                                  in_stream=io.StringIO("".join(p + "\n" for p in paths)))
        except Exception as exc:
            raise VerifyFailed(f"repair on {host} failed: {exc}") from None
        return repair_answer(host, result.exited, result.stdout, result.stderr)


def repair_answer(host: str, code: int, out: str, err: str) -> dict[str, Any]:
    """The primary's repair result from ``mirrorkit-agent repair``'s output;
    raises VerifyFailed with the agent's own words when it refused (not the
    primary, not root: the control socket is root-only, ...)."""
    try:
        answer: dict[str, Any] = json.loads(out)
    except ValueError:
        answer = {}
    if code != 0 and (not answer or "error" in answer):
        detail = answer.get("error") or (err.strip().splitlines() or [f"exit status {code}"])[-1]
        raise VerifyFailed(f"repair on {host} refused: {detail}")
    return answer


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"mirrorkit verify: {report['inventory']}")
    for column in ("mirror", "member", "role", "compared", "matched", "differing", "missing",
                   "orphans", "changing", "result"):
        table.add_column(column, no_wrap=True)
    for name, m in report["mirrors"].items():
        if m.get("error"):
            table.add_row(name, "-", "-", "-", "-", "-", "-", "-", "-",
                          f"[red]{escape(m['error'])}[/red]")
            continue
        for r in m["members"]:
            if not r["reachable"]:
                table.add_row(name, r["host"], r["role"], "-", "-", "-", "-", "-", "-",
                              "[red]unreachable[/red]")
                continue
            verdict = "[green]match[/green]" if r["ok"] else "[red]DIFFERS[/red]"
            table.add_row(name, r["host"], r["role"], str(r["compared"]), str(r["matched"]),
                          str(len(r["different"])), str(len(r["missing"])),
                          str(len(r["orphans"])), str(len(r["changing"])), verdict)
    console.print(table)
    for name, m in report["mirrors"].items():
        if not m.get("error"):
            console.print(f"{name}: primary {m['primary']}, compared at LSN >= {m['lsn']}")
        for r in m.get("members", []):
            if r["error"]:
                console.print(f"[yellow]{name}/{r['host']}: {escape(r['error'])}[/yellow]")
            lines = [f"differs ({', '.join(d['fields'])}): {d['path']}" for d in r["different"]]
            lines += [f"missing: {p}" for p in r["missing"]]
            lines += [f"orphan (only on {r['host']}): {p}" for p in r["orphans"]]
            lines += [f"changing on the primary (not compared): {p}" for p in r["changing"]]
            for line in lines[:SHOW_PATHS]:
                console.print(f"  {name}/{r['host']}: {escape(line)}")
            if len(lines) > SHOW_PATHS:
                console.print(f"  {name}/{r['host']}: ... and {len(lines) - SHOW_PATHS} more")
            if r["repaired"]:
                console.print(f"  {name}/{r['host']}: re-sent by the primary: "
                              f"{len(r['repaired'])} path(s)")


def run(args: argparse.Namespace) -> int:
    inventory = load_valid_inventory(args.inventory)
    if args.mirror is not None and args.mirror not in inventory.mirrors:
        print(f"mirrorkit verify: error: no mirror {args.mirror!r} in {args.inventory} "
              f"(mirrors: {', '.join(sorted(inventory.mirrors))})", file=sys.stderr)
        return 2
    names = [args.mirror] if args.mirror else sorted(inventory.mirrors)
    hosts = sorted({h for n in names for h in inventory.mirrors[n].members()})
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(hosts)))) as pool:
        probes = dict(zip(hosts, pool.map(lambda h: probe_host(inventory.hosts[h], AGENT),
                                          hosts), strict=True))
    live = build_report(inventory, probes)
    transport = SshTransport(inventory)
    report: dict[str, Any] = {"inventory": str(inventory.path), "mirrors": {}}
    for name in names:
        report["mirrors"][name] = verify_live_mirror(transport, name, live["mirrors"][name],
                                                     repair=args.repair)
    if args.delete_orphans and _quarantine_orphans(inventory, report, args.json):
        for name in names:  # what the members hold now
            report["mirrors"][name] = verify_live_mirror(transport, name, live["mirrors"][name],
                                                         repair=False)
    report["ok"] = all(m.get("ok") for m in report["mirrors"].values())
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print_report(report, Console(width=max(120, Console().width)))
    return 0 if report["ok"] else 1


def verify_live_mirror(transport: SshTransport, name: str, status: dict[str, Any], *,
                       repair: bool) -> dict[str, Any]:
    """One mirror, given its `status --json` entry (live roles)."""
    primary = status.get("primary")
    if primary is None:
        found = ", ".join(status.get("primaries") or []) or "none"
        return {"mirror": name, "ok": False, "members": [],
                "error": f"no single live primary (members saying primary: {found})"}
    receivers: dict[str, str] = {}
    unreachable: list[dict[str, Any]] = []
    for m in status["members"]:
        if m["host"] == primary or "arbiter" in (m["role"], m["inventory_role"]):
            continue
        if m["role"] in ("backup", "async"):
            receivers[m["host"]] = m["role"]
        else:
            unreachable.append({
                "host": m["host"], "role": m["role"] or m["inventory_role"],
                "reachable": False, "ok": False,
                "error": m["error"] or f"live role {m['role']}, not a receiver",
                "compared": 0, "matched": 0, "different": [], "missing": [], "orphans": [],
                "changing": [], "repaired": []})
    try:
        out = verify_mirror(transport, name, primary, receivers, repair=repair)
    except (VerifyFailed, MirrorkitError) as exc:
        return {"mirror": name, "ok": False, "members": unreachable, "error": str(exc)}
    out["members"].extend(unreachable)
    out["ok"] = out["ok"] and not unreachable
    out["error"] = None
    return out


def _quarantine_orphans(inventory: Inventory, report: dict[str, Any], quiet: bool) -> bool:
    """Move every member's orphans into its quarantine: a checksum resync of
    that member (the resync moves files the primary does not have, with a
    REPORT.txt, and re-sends differing blocks). True if any resync ran."""
    ran = False
    console = Console(stderr=quiet)
    for name, mirror in report["mirrors"].items():
        primary = mirror.get("primary")
        for member in mirror.get("members", []):
            if not member.get("orphans") or primary is None:
                continue
            ran = True
            args = argparse.Namespace(mirror=name, member=member["host"], mode="checksum",
                                      keep_orphans=False)
            console.print(f"{name}/{member['host']}: moving {len(member['orphans'])} "
                          "orphan(s) into its quarantine (checksum resync)")
            resync_on_primary(inventory.hosts[primary], args, console)
    return ran
