"""`mirrorkit migrate INVENTORY --from HOST --to HOST [--mirror M]`: move a
failover member to new hardware (playbooks/migrate.yml). The inventory has
been edited first: NEW replaces OLD as the mirror's backup, OLD stays in
the inventory's hosts so it can be retired."""

from __future__ import annotations

import argparse
from typing import Any

from mirrorkit.commands.common import add_inventory_argument, load_valid_inventory
from mirrorkit.commands.live import add_mirror_argument, pick_mirror
from mirrorkit.commands.playbook import run_playbook
from mirrorkit.errors import MirrorkitError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "migrate",
        help="replace a failover member: switch away from it, retire it, converge and catch "
             "up the new one, switch over to it",
        description=(
            "Run playbooks/migrate.yml. Edit the inventory first: NEW replaces OLD in the "
            "mirror as its backup, and OLD stays in the inventory's hosts (outside every "
            "mirror) so it can be reached. OLD is switched away from if it is the live "
            "primary, then retired (agent and keepalived stopped, disabled and removed, data "
            "kept); the fleet is converged; once NEW has caught up it becomes primary if OLD "
            "was."
        ),
    )
    add_inventory_argument(parser)
    parser.add_argument("--from", dest="old", required=True, metavar="HOST",
                        help="the member being replaced")
    parser.add_argument("--to", dest="new", required=True, metavar="HOST",
                        help="the new member (the mirror's backup in the edited inventory)")
    add_mirror_argument(parser)
    parser.set_defaults(func=run)


def extra_vars(inventory_path: str, mirror_name: str, old: str, new: str) -> dict[str, Any]:
    inventory = load_valid_inventory(inventory_path)
    mirror = pick_mirror(inventory, mirror_name)
    if old == new:
        raise MirrorkitError(f"--from and --to are both {old}: name the member being replaced "
                             "and the one replacing it")
    if old not in inventory.hosts:
        raise MirrorkitError(f"--from {old}: not a host of the inventory; keep it in all.hosts "
                             f"(outside every mirror) so it can be reached and retired")
    if old in mirror.members():
        raise MirrorkitError(f"--from {old}: still a member of {mirror.name} in the inventory; "
                             f"edit the inventory first so that {new} replaces it")
    if mirror.backup != new:
        raise MirrorkitError(
            f"--to {new}: must be the backup of {mirror.name} in the edited inventory (it is "
            f"{mirror.backup or 'none'}): a fresh member starts in its inventory role, and a "
            f"fresh primary beside the live one would be a second primary")
    return {"mirrorkit_op_mirror": mirror.name, "mirrorkit_op_from": old, "mirrorkit_op_to": new}


def run(args: argparse.Namespace) -> int:
    return run_playbook(args.inventory, "migrate.yml",
                        extra_vars(args.inventory, args.mirror, args.old, args.new), "migrate")
