"""`mirrorkit validate INVENTORY`: check an inventory as a whole, report every error."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mirrorkit.inventory.advice import timing_warnings
from mirrorkit.inventory.load import build_inventory, read_inventory_vars
from mirrorkit.inventory.validate import validate


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check an inventory and report every problem at once",
        description=(
            "Check an inventory: structure, members, addresses, paths, VIP, ports and "
            "timeouts (see docs/inventory.md). Prints every error, one per line, to stderr. "
            "Exit status 0 when valid, 1 otherwise."
        ),
    )
    parser.add_argument("inventory", metavar="INVENTORY", help="Ansible inventory file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    inv_vars = read_inventory_vars(args.inventory)  # MirrorkitError -> exit 1 in cli.main
    for warning in [*inv_vars.warnings, *timing_warnings(inv_vars.all_vars)]:
        print(f"{args.inventory}: warning: {warning}", file=sys.stderr)
    errors = validate(inv_vars)
    if errors:
        for error in errors:
            print(error, file=sys.stderr)
        n = len(errors)
        print(f"inventory invalid: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
        return 1
    inventory = build_inventory(inv_vars)
    members = {h for m in inventory.mirrors.values() for h in m.members()}
    print(
        f"inventory OK: {len(inventory.mirrors)} mirror{'s' if len(inventory.mirrors) != 1 else ''}"
        f", {len(members)} host{'s' if len(members) != 1 else ''}"
    )
    return 0
