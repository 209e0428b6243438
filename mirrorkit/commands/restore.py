"""`mirrorkit restore INVENTORY [--mirror M] [--to HOST]`: bring the
original primary back (catch up, then switch over): playbooks/restore.yml."""

from __future__ import annotations

import argparse
from typing import Any

from mirrorkit.commands.common import add_inventory_argument, load_valid_inventory
from mirrorkit.commands.live import add_mirror_argument, pick_mirror
from mirrorkit.commands.playbook import run_playbook
from mirrorkit.errors import MirrorkitError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "restore",
        help="bring the original primary back: wait for its catch-up, then switch over to it",
        description=(
            "Run playbooks/restore.yml: the member (default: the inventory's primary of the "
            "mirror) must be the live backup; wait until it is connected and caught up, then "
            "switch over to it. Nothing to do when it is already the live primary."
        ),
    )
    add_inventory_argument(parser)
    add_mirror_argument(parser)
    parser.add_argument("--to", default="", metavar="HOST",
                        help="the failover member to restore (default: the inventory's primary)")
    parser.set_defaults(func=run)


def extra_vars(inventory_path: str, mirror_name: str, to: str) -> dict[str, Any]:
    inventory = load_valid_inventory(inventory_path)
    mirror = pick_mirror(inventory, mirror_name)
    if to and to not in mirror.failover_hosts():
        raise MirrorkitError(f"--to {to}: not a failover member of {mirror.name} (failover "
                             f"members: {', '.join(mirror.failover_hosts())})")
    return {"mirrorkit_op_mirror": mirror.name, "mirrorkit_op_to": to or mirror.primary}


def run(args: argparse.Namespace) -> int:
    return run_playbook(args.inventory, "restore.yml",
                        extra_vars(args.inventory, args.mirror, args.to), "restore")
