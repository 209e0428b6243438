"""`mirrorkit resync INVENTORY --mirror M [--member H] [--mode MODE]`.

Finds the live primary of M (asking the failover members' agents over SSH,
like ``mirrorkit status``), starts the resync there with
``mirrorkit-agent resync`` (which POSTs to the primary's root-only control
socket, so the inventory's SSH user must be root), then
polls the primary's status and shows a progress bar (bytes, files, rate,
ETA) until every asked member is done. Exit 0 when all finished, 1 when one
failed or the primary cannot be found or reached, 2 for a usage error
(unknown mirror or member).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from mirrorkit.agent.resync.compare import MODES
from mirrorkit.commands.common import add_inventory_argument, load_valid_inventory
from mirrorkit.errors import MirrorkitError
from mirrorkit.inventory.model import Host
from mirrorkit.remote import connect, probe_host

AGENT = "/opt/mirrorkit/venv/bin/mirrorkit-agent"
POLL_SECONDS = 1.0
# run(command) -> (exit status, stdout, stderr) on the primary.
Runner = Callable[[str], tuple[int, str, str]]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "resync",
        help="resync replicas of a mirror from its live primary, with a compare mode",
        description=(
            "Start a resync on the live primary and follow it with a progress bar. "
            "Exit 0 when done, 1 on failure, 2 on a usage error."
        ),
    )
    add_inventory_argument(parser)
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--member", default="", help="one receiver (default: all receivers)")
    parser.add_argument("--mode", choices=MODES, default="checksum",
                        help="compare mode (default: checksum)")
    parser.add_argument("--keep-orphans", action="store_true",
                        help="report files only a replica has instead of quarantining them")
    parser.set_defaults(func=run)


def agent_command(args: argparse.Namespace, agent: str = AGENT) -> str:
    words = [agent, "resync", "--mirror", args.mirror, "--mode", args.mode, "--json"]
    if args.member:
        words += ["--member", args.member]
    if args.keep_orphans:
        words.append("--keep-orphans")
    return shlex.join(words)


def resync_views(status: dict[str, Any], mirror: str,
                 ids: dict[str, int]) -> dict[str, dict[str, Any] | None]:
    """Per asked member, its resync in the primary's status (``None`` until
    the primary shows the asked id)."""
    peers = status.get("mirrors", {}).get(mirror, {}).get("peers", {})
    out: dict[str, dict[str, Any] | None] = {}
    for member, rid in ids.items():
        view = (peers.get(member) or {}).get("resync")
        out[member] = view if isinstance(view, dict) and view.get("id") == rid else None
    return out


def follow(run_cmd: Runner, start: str, status_cmd: str, mirror: str, console: Console,
           poll: float = POLL_SECONDS) -> int:
    """Start the resync with ``start`` and follow it by ``status_cmd``."""
    code, out, err = run_cmd(start)
    try:
        answer = json.loads(out) if out.strip() else {}
    except ValueError:
        answer = {}
    if code != 0 or "resyncs" not in answer:
        console.print(f"[red]resync refused: {answer.get('error') or err.strip() or out}[/red]")
        return 1
    ids: dict[str, int] = answer["resyncs"]
    finished: dict[str, dict[str, Any]] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TextColumn("{task.fields[files]} files"), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        tasks = {m: bar.add_task(f"{mirror}/{m} pending", total=None, files="0/?")
                 for m in ids}
        while len(finished) < len(ids):
            time.sleep(poll)
            code, out, err = run_cmd(status_cmd)
            if code != 0:
                console.print(f"[yellow]status not available: {err.strip()}[/yellow]")
                continue
            for member, view in resync_views(json.loads(out), mirror, ids).items():
                if view is None or member in finished:
                    continue
                bar.update(tasks[member], total=view["bytes_total"] or None,
                           completed=view["bytes_done"],
                           description=f"{mirror}/{member} {view['mode']} {view['state']}",
                           files=f"{view['files_done']}/{view['files_total']}")
                if view["state"] in ("done", "failed"):
                    finished[member] = view
    failed = 0
    for member, view in sorted(finished.items()):
        if view["state"] == "failed":
            failed += 1
            console.print(f"[red]{mirror}/{member}: resync FAILED: {view['error']}[/red]")
        else:
            console.print(f"{mirror}/{member}: {view['mode']} resync done: "
                          f"{view['files_done']} files compared, {view['bytes_sent']} of "
                          f"{view['bytes_done']} bytes sent, {view['orphans']} orphan(s)")
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    inventory = load_valid_inventory(args.inventory)
    console = Console()
    mirror = inventory.mirrors.get(args.mirror)
    if mirror is None:
        console.print(f"[red]no mirror {args.mirror!r} in the inventory (mirrors: "
                      f"{', '.join(sorted(inventory.mirrors))})[/red]")
        return 2
    members = mirror.members()
    receivers = [h for h, r in members.items() if r in ("backup", "async")]
    if args.member and args.member not in receivers:
        console.print(f"[red]{args.member!r} is not a receiver of {args.mirror} (receivers: "
                      f"{', '.join(receivers) or 'none'})[/red]")
        return 2
    candidates = [h for h, r in members.items() if r in ("primary", "backup")]
    primary = None
    for host in candidates:
        probe = probe_host(inventory.hosts[host], AGENT)
        live = ((probe.status or {}).get("mirrors") or {}).get(args.mirror) or {}
        if live.get("role") == "primary":
            primary = host
            break
    if primary is None:
        raise MirrorkitError(f"no live primary of {args.mirror} among {', '.join(candidates)}")
    console.print(f"{args.mirror}: live primary {primary}; starting a {args.mode} resync")
    return resync_on_primary(inventory.hosts[primary], args, console)


def resync_on_primary(primary: Host, args: argparse.Namespace, console: Console) -> int:
    """Start the resync ``args`` describe on the live ``primary`` and follow it."""
    with connect(primary) as conn:

        def run_cmd(command: str) -> tuple[int, str, str]:
            result = conn.run(command, hide=True, warn=True, timeout=60)
            return int(result.exited), str(result.stdout), str(result.stderr)

        return follow(run_cmd, agent_command(args), f"{AGENT} status --json", args.mirror,
                      console)
