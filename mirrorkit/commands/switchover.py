"""`mirrorkit switchover INVENTORY [--mirror M] [--to HOST] [--at TIME]
[--cancel]`: a planned switchover, run by the mirror's live primary.

The live primary is found by asking every member's agent (``status
--json``), never from the inventory: after a failover it is the former
backup. The switchover is then asked of that primary's agent
(``mirrorkit-agent switchover ... --json`` over SSH, as root like
``resync``), which refuses (exit 1, with its reason) when the mirror is not
healthy enough. With ``--at`` the primary's agent schedules it (persisted,
shown by ``mirrorkit status``) and runs it then — only if the mirror is
healthy then; ``--cancel`` cancels it. TIME is read here, on the controller
(ISO 8601 with a zone, ``+30s``/``+5m``/``+2h``/``+1d``), and handed over as
epoch seconds. Exit 0 done/scheduled/cancelled, 1 refused or unreachable,
2 on a usage error.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from mirrorkit.agent.cli.operations import (
    OPERATION_TIMEOUT,
    format_switchover,
    switchover_usage_error,
)
from mirrorkit.agent.util.timespec import TimeSpecError, format_epoch, parse_time
from mirrorkit.commands.common import add_inventory_argument, load_valid_inventory
from mirrorkit.commands.live import (
    add_mirror_argument,
    live_primary,
    live_view,
    operation_answer,
    pick_mirror,
)
from mirrorkit.errors import MirrorkitError, UsageError
from mirrorkit.inventory.model import Mirror
from mirrorkit.remote import AgentRunner, SshAgents

SSH_MARGIN = 30.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "switchover",
        help="planned switchover of a mirror to its backup (now, at a time, or cancel)",
        description=(
            "Switch a mirror's primary role over to another member without data loss, run by "
            "the live primary. Exit 0 when done, scheduled or cancelled; 1 when refused or a "
            "member cannot be reached; 2 on a usage error."
        ),
    )
    add_inventory_argument(parser)
    add_mirror_argument(parser)
    parser.add_argument("--to", default="", metavar="HOST",
                        help="the member to switch to (default: the active backup)")
    parser.add_argument("--at", default="", metavar="TIME",
                        help="schedule it on the primary's agent: ISO 8601 with a zone "
                             "(2026-12-02T03:00:00Z) or +30s, +5m, +2h, +1d")
    parser.add_argument("--cancel", action="store_true",
                        help="cancel the scheduled switchover")
    parser.set_defaults(func=run)


def check_args(mirror: Mirror, to: str, at: str, cancel: bool, now: float) -> float | None:
    """The epoch of ``--at`` (None without it); a UsageError for options
    that cannot work, before anything is asked of a member."""
    problem = switchover_usage_error(to, at, cancel)
    if problem is not None:
        raise UsageError(problem)
    if to:
        roles = mirror.members()
        if to not in roles:
            raise UsageError(f"--to {to!r} is not a member of mirror {mirror.name} (members: "
                             f"{', '.join(roles)})")
        if roles[to] == "arbiter":
            raise UsageError(f"--to {to!r} is the arbiter of {mirror.name}: it holds no data")
        member = mirror.async_member(to)
        if member is not None and member.kind == "reporting":
            raise UsageError(f"--to {to!r} is a reporting copy of {mirror.name}: it is never "
                             "promoted")
    if not at:
        return None
    try:
        return parse_time(at, now)
    except TimeSpecError as exc:
        raise UsageError(f"--at: {exc}") from None


def agent_args(mirror: str, to: str, at: float | None, cancel: bool) -> list[str]:
    words = ["switchover", "--mirror", mirror, "--json"]
    if to:
        words += ["--to", to]
    if at is not None:
        words += ["--at", f"@{at:.3f}"]
    if cancel:
        words.append("--cancel")
    return words


def switchover(run_agent: AgentRunner, mirror: Mirror, to: str, at: float | None,
               cancel: bool, say: Callable[[str], None]) -> None:
    """Find the live primary and ask it, telling ``say`` as it goes. Raises
    MirrorkitError when the primary cannot be found or refuses."""
    primary = live_primary(live_view(run_agent, mirror))
    if to and to == primary and not cancel:
        raise MirrorkitError(f"{mirror.name}: {to} is already the primary; nothing to do")
    if cancel:
        doing = "cancelling the scheduled switchover"
    elif at is not None:
        doing = f"scheduling the switchover for {format_epoch(at)}"
    else:
        doing = "switching over" + (f" to {to}" if to else "")
    say(f"{mirror.name}: live primary {primary}; {doing}")
    result = run_agent(primary, agent_args(mirror.name, to, at, cancel),
                       OPERATION_TIMEOUT + SSH_MARGIN)
    say(format_switchover(operation_answer(
        result, f"{mirror.name}: switchover refused by {primary}"), to))


def run(args: argparse.Namespace) -> int:
    inventory = load_valid_inventory(args.inventory)
    mirror = pick_mirror(inventory, args.mirror)
    at = check_args(mirror, args.to, args.at, args.cancel, time.time())
    with SshAgents(inventory.hosts) as agents:
        switchover(agents, mirror, args.to, at, args.cancel,
                   lambda line: print(line, flush=True))
    return 0
