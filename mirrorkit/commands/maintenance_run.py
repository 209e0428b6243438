"""`mirrorkit maintenance run INVENTORY --host HOST --tasks FILE
[--mirror M] [--switch-back]`: rolling planned downtime of one member
(playbooks/maintenance.yml). Meant to be scheduled: see
examples/mirrorkit-maintenance.{service,timer,cron} and docs/operations.md.

:func:`add_run_parser` adds ``run`` to the ``maintenance`` command's
actions (beside ``on`` and ``off``, commands/maintenance.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mirrorkit.commands.common import add_inventory_argument, load_valid_inventory
from mirrorkit.commands.live import add_mirror_argument, pick_mirror
from mirrorkit.commands.playbook import run_playbook
from mirrorkit.errors import MirrorkitError


def add_run_parser(actions: Any) -> None:
    parser = actions.add_parser(
        "run",
        help="rolling planned downtime of one member: switch away, run a tasks file on it, "
             "wait for its catch-up, optionally switch back",
        description=(
            "Run playbooks/maintenance.yml: if HOST is the live primary, switch over to its "
            "backup; hold automatic failover off (maintenance mode on both failover members); "
            "run the tasks FILE on HOST; start its agent again and wait until it has caught "
            "up; maintenance mode off (also when a step failed); with --switch-back, switch "
            "back to HOST if it was the primary."
        ),
    )
    add_inventory_argument(parser)
    parser.add_argument("--host", required=True, metavar="HOST", help="the member to maintain")
    parser.add_argument("--tasks", required=True, metavar="FILE",
                        help="Ansible tasks file run on HOST (examples/maintenance-tasks.yml)")
    add_mirror_argument(parser)
    parser.add_argument("--switch-back", action="store_true",
                        help="switch back to HOST afterwards if it was the primary")
    parser.set_defaults(func=run)


def extra_vars(inventory_path: str, mirror_name: str, host: str, tasks: str,
               switch_back: bool) -> dict[str, Any]:
    inventory = load_valid_inventory(inventory_path)
    mirror = pick_mirror(inventory, mirror_name)
    if host not in mirror.members():
        raise MirrorkitError(f"--host {host}: not a member of {mirror.name} (members: "
                             f"{', '.join(mirror.members())})")
    path = Path(tasks).expanduser()
    if not path.is_file():
        raise MirrorkitError(f"--tasks {tasks}: no such file; give an Ansible tasks file "
                             "(see examples/maintenance-tasks.yml)")
    return {"mirrorkit_op_mirror": mirror.name, "mirrorkit_op_host": host,
            "mirrorkit_op_tasks": str(path.resolve()), "mirrorkit_op_switch_back": switch_back}


def run(args: argparse.Namespace) -> int:
    return run_playbook(args.inventory, "maintenance.yml",
                        extra_vars(args.inventory, args.mirror, args.host, args.tasks,
                                   args.switch_back), "maintenance")
