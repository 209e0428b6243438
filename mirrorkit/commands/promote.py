"""`mirrorkit promote INVENTORY --host HOST [--mirror M] [--force]`: make
HOST the primary of the mirror.

A DR copy without ``--force`` is promoted by a switchover to it from the
live primary (it drains first: no loss). Otherwise it is asked of HOST's
agent (``mirrorkit-agent promote ... --json`` over SSH, as root like
``resync``), which refuses while the old primary may still be
writable. ``--force`` overrides that, for a disaster: the command first
prints what that risks (:data:`FORCE_RISK`) and what the controller itself
sees of the other members (a member that still answers as primary is named),
then promotes and reports the LSN gap — how many log records of the old
primary never reached HOST. Exit 0 promoted, 1 refused or unreachable, 2 on
a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from mirrorkit.agent.cli.operations import FORCE_RISK, OPERATION_TIMEOUT, format_promote
from mirrorkit.commands.common import add_inventory_argument, load_valid_inventory
from mirrorkit.commands.live import add_mirror_argument, live_view, operation_answer, pick_mirror
from mirrorkit.commands.switchover import switchover
from mirrorkit.errors import UsageError
from mirrorkit.inventory.model import Mirror
from mirrorkit.remote import AgentRunner, SshAgents

SSH_MARGIN = 30.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "promote",
        help="promote a member (a backup, or a DR copy) to primary; --force for a disaster",
        description=(
            "Promote HOST to primary of the mirror. Refused while the old primary may still "
            "be writable, unless --force (which explains the risk first). Exit 0 promoted, "
            "1 refused or unreachable, 2 on a usage error."
        ),
    )
    add_inventory_argument(parser)
    parser.add_argument("--host", required=True, metavar="HOST", help="the member to promote")
    add_mirror_argument(parser)
    parser.add_argument("--force", action="store_true",
                        help="even if the old primary may still be writable (two primaries "
                             "are then possible: read the warning it prints)")
    parser.set_defaults(func=run)


def check_host(mirror: Mirror, host: str) -> None:
    roles = mirror.members()
    if host not in roles:
        raise UsageError(f"--host {host!r} is not a member of mirror {mirror.name} (members: "
                         f"{', '.join(roles)})")
    if roles[host] == "arbiter":
        raise UsageError(f"--host {host!r} is the arbiter of {mirror.name}: it holds no data "
                         "and is never promoted")
    member = mirror.async_member(host)
    if member is not None and member.kind == "reporting":
        raise UsageError(f"--host {host!r} is a reporting copy of {mirror.name}: reporting "
                         "copies are never promoted (only dr copies and the backup)")


def risk_lines(run_agent: AgentRunner, mirror: Mirror, host: str) -> list[str]:
    """The warning --force prints: the risk, and who still answers as primary."""
    lines = [f"WARNING: {FORCE_RISK.replace('this member', host)}"]
    others = [h for h, r in mirror.members().items() if h != host and r != "arbiter"]
    view = live_view(run_agent, mirror, others)
    for other, term in sorted(view.primaries()):
        lines.append(f"WARNING: {other} answers right now as the primary of {mirror.name} "
                     f"(term {term}): forcing makes two writable primaries until it learns "
                     f"the higher term; a planned `mirrorkit switchover --to {host}` loses "
                     "nothing")
    silent = sorted(set(others) & set(view.errors))
    if silent:
        lines.append(f"note: no answer from {', '.join(silent)} (from this controller; its "
                     "clients may still reach it)")
    return lines


def promote(run_agent: AgentRunner, mirror: Mirror, host: str, force: bool,
            say: Callable[[str], None], warn: Callable[[str], None]) -> None:
    if not force and mirror.async_member(host) is not None:
        # A planned DR promotion loses nothing: the live primary drains and
        # hands over to the DR copy (a switchover to it).
        say(f"{mirror.name}: planned promotion of {host}: a switchover to it from the live "
            "primary (drain first, no loss)")
        switchover(run_agent, mirror, host, None, False, say)
        return
    if force:
        for line in risk_lines(run_agent, mirror, host):
            warn(line)
    words = ["promote", "--mirror", mirror.name, "--json"] + (["--force"] if force else [])
    result = run_agent(host, words, OPERATION_TIMEOUT + SSH_MARGIN)
    say(format_promote(operation_answer(
        result, f"{mirror.name}: promotion of {host} refused"), host))


def run(args: argparse.Namespace) -> int:
    inventory = load_valid_inventory(args.inventory)
    mirror = pick_mirror(inventory, args.mirror)
    check_host(mirror, args.host)
    with SshAgents(inventory.hosts) as agents:
        promote(agents, mirror, args.host, args.force, lambda line: print(line, flush=True),
                lambda line: print(line, file=sys.stderr, flush=True))
    return 0
