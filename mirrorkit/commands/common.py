"""Pieces every inventory-driven command shares."""

from __future__ import annotations

import argparse
import sys

from mirrorkit.errors import MirrorkitError
from mirrorkit.inventory.load import InventoryInvalid, load_inventory
from mirrorkit.inventory.model import Inventory


def add_inventory_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inventory", metavar="INVENTORY", help="Ansible inventory file")


def load_valid_inventory(path: str) -> Inventory:
    """Load and validate; an invalid inventory stops the command before it
    touches anything (every error is printed, then exit 1)."""
    try:
        return load_inventory(path)
    except InventoryInvalid as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        n = len(exc.errors)
        raise MirrorkitError(
            f"inventory invalid: {n} error{'s' if n != 1 else ''}; nothing was changed"
        ) from None
