"""Fixtures for every test directory.

``as_nobody``: the argv prefix that runs this checkout's Python code as the
real unprivileged user ``nobody`` (through ``runuser``), for tests of what
a local user other than root is refused. Skips the test when that cannot
be done: not root, no ``runuser``, or no Python that ``nobody`` may run
with this checkout's dependencies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import mirrorkit

NOBODY = "nobody"
REPO = Path(mirrorkit.__file__).resolve().parents[1]


def _candidates() -> list[list[str]]:
    # This interpreter may live where nobody cannot go (a pyenv under /root):
    # then the system's Python with this environment's packages (same ABI).
    packages = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    path = os.pathsep.join([str(REPO), *sorted(packages)])
    out = [["env", f"PYTHONPATH={REPO}", sys.executable]]
    for exe in ("/usr/bin/python3", shutil.which("python3")):
        if exe:
            out.append(["env", f"PYTHONPATH={path}", exe])
    return out


@pytest.fixture(scope="session")
def as_nobody() -> list[str]:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to act as the unprivileged user nobody")
    for python in _candidates():
        argv = ["runuser", "-u", NOBODY, "--", *python]
        probe = subprocess.run([*argv, "-c", "import mirrorkit.agent.cli.main"], cwd="/",
                               capture_output=True, text=True, timeout=60, check=False)
        if probe.returncode == 0:
            return argv
    pytest.skip(f"no Python that {NOBODY} may run with this checkout's packages")
