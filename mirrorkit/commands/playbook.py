"""Running an operation playbook for a command: the ``--mirror`` default,
the ``ansible-playbook`` command line, and the subprocess.

The playbooks read the live roles from the agents themselves (their
pre-check plays); the commands only validate the inventory and the
arguments first, so a typo is an error here, before Ansible starts.
Extra variables go as one JSON ``-e`` so that booleans stay booleans and
no value needs shell or key=value quoting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mirrorkit.project import ansible_env, project_root, venv_bin


def playbook_command(inventory: Path, root: Path, playbook: str,
                     extra_vars: Mapping[str, Any]) -> list[str]:
    """``ansible-playbook -i INVENTORY <root>/playbooks/PLAYBOOK -e JSON``."""
    return [venv_bin("ansible-playbook"), "-i", str(inventory),
            str(root / "playbooks" / playbook), "-e", json.dumps(dict(extra_vars), sort_keys=True)]


def run_playbook(inventory: str, playbook: str, extra_vars: Mapping[str, Any],
                 what: str) -> int:
    """Run ``playbook`` on ``inventory`` with ``extra_vars``; Ansible's output
    streams straight through. 0 on success, 1 (with a line saying so) otherwise."""
    root = project_root()
    command = playbook_command(Path(inventory).resolve(), root, playbook, extra_vars)
    print(f"running playbooks/{playbook}", flush=True)
    completed = subprocess.run(command, cwd=root, env=ansible_env(root), check=False)
    if completed.returncode != 0:
        print(f"mirrorkit: {what} failed (ansible-playbook exit {completed.returncode}); "
              "the playbook's last task says why", file=sys.stderr)
        return 1
    return 0
