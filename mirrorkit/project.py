"""Where mirrorkit's Ansible content lives on the controller.

mirrorkit runs from its source tree (``make demo`` / ``make test`` install it
editable into ``.venv``), so the playbooks, roles and ``ansible.cfg`` sit next
to the package. ``MIRRORKIT_HOME`` points elsewhere when they were copied.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mirrorkit.errors import MirrorkitError


def project_root() -> Path:
    env = os.environ.get("MIRRORKIT_HOME")
    root = Path(env) if env else Path(__file__).resolve().parent.parent
    if not (root / "playbooks" / "site.yml").is_file():
        raise MirrorkitError(
            f"no playbooks found under {root}; run mirrorkit from its source tree "
            "or set MIRRORKIT_HOME to the directory holding playbooks/ and roles/"
        )
    return root


def venv_bin(name: str) -> str:
    """A console script installed beside the running interpreter (the venv's)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def ansible_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(root / "ansible.cfg")
    # ansible-playbook must find the venv's python tools (pip wheel, molecule).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("ANSIBLE_FORCE_COLOR", "1" if sys.stdout.isatty() else "0")
    return env
