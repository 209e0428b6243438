"""`mirrorkit maintenance on|off INVENTORY [--mirror M]`: the mirror's
no-failover flag, set on every failover member.

While it is on, nothing of the mirror fails over automatically (each
decision skipped for it is in the events); planned operations still work.
The flag is each member's own (the agent persists it), so it is set on the
primary and on the backup — ``mirrorkit-agent maintenance on|off --mirror M
--json`` on each, over SSH; the SSH user must be root, as for ``resync``.
Each member's answer is printed; exit 1 when any member did not confirm
(the message says which state the mirror is left in), 2 on a usage error.

(``mirrorkit maintenance run`` — rolling planned downtime of one member —
is the maintenance playbook's command and registers beside these.)
"""

from __future__ import annotations

import argparse
from typing import Any

from mirrorkit.agent.cli.operations import MAINTENANCE_TIMEOUT, format_maintenance
from mirrorkit.commands import maintenance_run
from mirrorkit.commands.common import add_inventory_argument, load_valid_inventory
from mirrorkit.commands.live import add_mirror_argument, on_each, pick_mirror
from mirrorkit.inventory.model import Mirror
from mirrorkit.remote import AgentResult, AgentRunner, SshAgents

SSH_MARGIN = 20.0  # on top of the agent's own wait: connecting, starting Python


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "maintenance",
        help="maintenance mode of a mirror: on (no automatic failover) or off",
        description="Maintenance operations of a mirror.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for state, text in (("on", "turn automatic failover off for the mirror (on every "
                               "failover member)"),
                        ("off", "allow automatic failover again")):
        sub = actions.add_parser(
            state, help=text,
            description=f"{text[0].upper()}{text[1:]}. Exit 0 when every failover member "
                        "confirmed, 1 when one did not, 2 on a usage error.")
        add_inventory_argument(sub)
        add_mirror_argument(sub)
        sub.set_defaults(func=run, state=state)
    maintenance_run.add_run_parser(actions)


def set_maintenance(run_agent: AgentRunner, mirror: Mirror, on: bool) -> dict[str, AgentResult]:
    words = ["maintenance", "on" if on else "off", "--mirror", mirror.name, "--json"]
    return on_each(mirror.failover_hosts(),
                   lambda h: run_agent(h, words, MAINTENANCE_TIMEOUT + SSH_MARGIN))


def report(mirror: Mirror, on: bool, results: dict[str, AgentResult]) -> tuple[list[str], int]:
    """The lines to print and the exit status."""
    lines: list[str] = []
    confirmed: list[str] = []
    failed: list[str] = []
    for host, result in results.items():
        answer, why = result.json()
        if answer is not None and "error" in answer:
            why, answer = str(answer["error"]), None
        if answer is None or "maintenance" not in answer:
            failed.append(host)
            lines.append(f"{host}: FAILED: {why or 'unexpected answer'}")
        elif bool(answer["maintenance"]) != on:
            failed.append(host)
            lines.append(f"{host}: FAILED: maintenance is still "
                         f"{'on' if answer['maintenance'] else 'off'}")
        else:
            confirmed.append(host)
            lines.append(f"{host}: {format_maintenance(answer)}")
    state = "on" if on else "off"
    if not failed:
        return lines, 0
    if confirmed:
        lines.append(
            f"{mirror.name}: maintenance is {state} on {', '.join(confirmed)} but NOT on "
            f"{', '.join(failed)}"
            + (": a member without it may still take part in an automatic failover" if on
               else ": a member that still has it on does not fail over automatically")
            + f"; run `mirrorkit maintenance {state}` again once they answer")
    else:
        lines.append(f"{mirror.name}: maintenance unchanged: no failover member confirmed")
    return lines, 1


def run(args: argparse.Namespace) -> int:
    inventory = load_valid_inventory(args.inventory)
    mirror = pick_mirror(inventory, args.mirror)
    on = args.state == "on"
    with SshAgents(inventory.hosts) as agents:
        results = set_maintenance(agents, mirror, on)
    lines, status = report(mirror, on, results)
    for line in lines:
        print(line)
    return status
