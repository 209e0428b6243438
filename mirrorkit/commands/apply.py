"""`mirrorkit apply INVENTORY`: validate, then converge the fleet with site.yml."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from mirrorkit.commands.common import add_inventory_argument, load_valid_inventory
from mirrorkit.project import ansible_env, project_root, venv_bin


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "apply",
        help="validate the inventory and converge every member to it",
        description=(
            "Validate INVENTORY, then run playbooks/site.yml on it. The playbook reads the "
            "live roles from the agents first: a routine apply never moves the primary or "
            "the VIP, and never forces the inventory's primary over a newer one."
        ),
    )
    add_inventory_argument(parser)
    parser.add_argument(
        "--check", action="store_true", help="report what would change, change nothing"
    )
    parser.add_argument("--diff", action="store_true", help="show the changes made to files")
    parser.add_argument("--limit", metavar="HOSTS", help="only these hosts (Ansible host pattern)")
    parser.set_defaults(func=run)


def playbook_command(
    inventory: Path, root: Path, *, check: bool, diff: bool, limit: str | None
) -> list[str]:
    command = [
        venv_bin("ansible-playbook"),
        "-i",
        str(inventory),
        str(root / "playbooks" / "site.yml"),
    ]
    if check:
        command.append("--check")
    if diff:
        command.append("--diff")
    if limit:
        command += ["--limit", limit]
    return command


def run(args: argparse.Namespace) -> int:
    inventory = load_valid_inventory(args.inventory)
    root = project_root()
    print(
        f"inventory {args.inventory}: valid ({len(inventory.mirrors)} mirrors); "
        f"running playbooks/site.yml{' in check mode' if args.check else ''}",
        flush=True,
    )
    command = playbook_command(
        Path(args.inventory).resolve(), root, check=args.check, diff=args.diff, limit=args.limit
    )
    # Ansible's output streams straight through: operators read it as it runs.
    completed = subprocess.run(command, cwd=root, env=ansible_env(root), check=False)
    if completed.returncode != 0:
        print(
            f"mirrorkit: apply failed (ansible-playbook exit {completed.returncode})",
            file=sys.stderr,
        )
        return 1
    return 0
