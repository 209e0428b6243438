"""Fixtures for every test directory.

``as_nobody``: the argv prefix that runs this checkout's Python code as the
real unprivileged user ``nobody`` (through ``runuser``), for tests of what
a local user other than root is refused. Skips the test when that cannot
be done: not root, no ``runuser``, or no Python that ``nobody`` may run
with this checkout's dependencies.

``nobody_request``: send one raw request as ``nobody`` to a Unix socket
(a path) or a loopback TCP port (an int) with a standard-library client;
returns ``{"uid", "pid", "connect": "ok" | errno name, "answer": raw text}``.

Fuzzing (hypothesis): the ``ci`` profile, the default, runs every property
test with a fixed seed (``derandomize``) and a bounded example count, so
``make test`` is repeatable and stays short; ``make fuzz`` selects the
``fuzz`` profile (``HYPOTHESIS_PROFILE=fuzz``): many more examples, random
seeds, a found case printed to be pasted into a regular test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import mirrorkit

settings.register_profile(
    "ci", derandomize=True, max_examples=200, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

NOBODY = "nobody"
REPO = Path(mirrorkit.__file__).resolve().parents[1]
NobodyRequest = Callable[[str | int, bytes], dict[str, Any]]

_CLIENT = r"""
import errno, json, os, socket, sys
where = sys.argv[1]
tcp = where.isdigit()
s = socket.socket(socket.AF_INET if tcp else socket.AF_UNIX)
s.settimeout(30)
out = {"pid": os.getpid(), "uid": os.getuid()}
try:
    s.connect(("127.0.0.1", int(where)) if tcp else where)
except OSError as exc:
    out["connect"] = errno.errorcode.get(exc.errno, str(exc))
else:
    out["connect"] = "ok"
    s.sendall(sys.stdin.buffer.read())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    out["answer"] = data.decode(errors="replace")
print(json.dumps(out))
"""


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


@pytest.fixture(scope="session")
def nobody_request(as_nobody: list[str]) -> NobodyRequest:
    def send(where: str | int, raw: bytes) -> dict[str, Any]:
        got = subprocess.run([*as_nobody, "-c", _CLIENT, str(where)], input=raw, cwd="/",
                             capture_output=True, timeout=60, check=False)
        assert got.returncode == 0, got.stderr.decode(errors="replace")
        answer: dict[str, Any] = json.loads(got.stdout)
        return answer

    return send
