"""Authenticated control on real lab members (podman, systemd, the role's
sandboxed unit): ``nobody`` on the primary is refused every mutating route
through every path, and root succeeds, from the member and from the
controller's CLI over SSH.

A throwaway 2-host lab of its own (primary ctl1, async DR ctl2) on
198.18.10.0/24 with its own PKI store, converged with ``mirrorkit apply``;
the tests run in file order on it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrorkit.agent.api.control import control_routes

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed"),
]

MIRROR = "records"
AGENT = "/opt/mirrorkit/venv/bin/mirrorkit-agent"
SOCKET = "/run/mirrorkit/control.sock"
API_PORT = 7480
DATA = "/srv/records"
INVENTORY = """\
all:
  hosts:
    ctl1: {ansible_host: 198.18.10.11}
    ctl2: {ansible_host: 198.18.10.12}
  vars:
    ansible_user: root
    ansible_ssh_private_key_file: ~/.mirrorkit/lab/id_ed25519
    ansible_ssh_common_args: >-
      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
    ansible_python_interpreter: /usr/bin/python3
    mirrorkit_lab: {network: mk-ctltest, subnet: 198.18.10.0/24, prefix: mk-ctltest-}
    mirrorkit_pki_dir: ~/.mirrorkit/ctltest/pki
    mirrorkit_mirrors:
      records:
        paths: [/srv/records]
        mode: async
        primary: ctl1
        async:
          - {host: ctl2, kind: dr}
"""

# A standard-library client run on the member: argv[1] a Unix socket path or
# a TCP port on 127.0.0.1, argv[2] the raw request in hex.
CLIENT = r"""
import errno, json, os, socket, sys
where, raw = sys.argv[1], bytes.fromhex(sys.argv[2])
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
    s.sendall(raw)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    out["answer"] = data.decode(errors="replace")
print(json.dumps(out))
"""


def run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def mirrorkit(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "mirrorkit", *argv], timeout)


def ssh(inv: Path, host: str, command: str) -> subprocess.CompletedProcess[str]:
    return mirrorkit("lab", "ssh", host, "-i", str(inv), "--", command, timeout=120)


def as_nobody(inv: Path, command: str) -> subprocess.CompletedProcess[str]:
    return ssh(inv, "ctl1", f"runuser -u nobody -- {command}")


def nobody_request(inv: Path, where: str | int, raw: bytes) -> dict[str, Any]:
    proc = as_nobody(inv, shlex.join(["python3", "-c", CLIENT, str(where), raw.hex()]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer


def http_post(target: str, body: bytes = b"") -> bytes:
    return f"POST {target} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def code_of(answer: str) -> int:
    return int(answer.split(" ", 2)[1])


def status(inv: Path, host: str) -> dict[str, Any]:
    proc = ssh(inv, host, f"{AGENT} status --json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mirror: dict[str, Any] = json.loads(proc.stdout)["mirrors"][MIRROR]
    return mirror


def eventually(check: Callable[[], bool], what: str, deadline: float = 60) -> None:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > deadline:
            pytest.fail(f"{what}: not true within {deadline:.0f} s")
        time.sleep(1)


def primary_view(inv: Path) -> tuple[int, Any]:
    """(ctl1's LSN, its view of ctl2's resync)."""
    m = status(inv, "ctl1")
    return int(m["lsn"]), m["peers"]["ctl2"]["resync"]


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("ctl") / "ctltest.yml"
    path.write_text(INVENTORY)
    mirrorkit("lab", "down", str(path))  # leftovers of an earlier run
    proc = mirrorkit("lab", "up", str(path))
    assert proc.returncode == 0, proc.stderr
    proc = mirrorkit("apply", str(path), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    ssh(path, "ctl1", f"echo one > {DATA}/a.txt && echo two > {DATA}/b.txt")
    eventually(lambda: ssh(path, "ctl2", f"cat {DATA}/b.txt").stdout.strip() == "two",
               "first copy on ctl2")
    yield path
    mirrorkit("lab", "down", str(path))


def test_the_unit_makes_the_socket_root_only(inv: Path) -> None:
    proc = ssh(inv, "ctl1", "systemctl show -p RuntimeDirectory -p RuntimeDirectoryMode "
                            f"mirrorkit-agent; stat -c '%a %U %F' /run/mirrorkit {SOCKET}")
    lines = proc.stdout.splitlines()
    assert "RuntimeDirectory=mirrorkit" in lines and "RuntimeDirectoryMode=0700" in lines
    assert lines[-2:] == ["700 root directory", "600 root socket"], lines


def test_nobody_is_refused_every_mutating_route(inv: Path) -> None:
    routes = sorted(control_routes({}))
    before = primary_view(inv)
    body = json.dumps({"paths": [f"{DATA}/a.txt"]}).encode()
    # the loopback TCP API: reads for anyone, no POST at all
    got = nobody_request(inv, API_PORT, b"GET /health HTTP/1.1\r\n\r\n")
    assert code_of(got["answer"]) == 200, got
    for route in routes:
        got = nobody_request(inv, API_PORT, http_post(f"{route}?mirror={MIRROR}", body))
        assert code_of(got["answer"]) == 405 and SOCKET in got["answer"], got
    # the control socket: refused at connect
    for route in routes:
        got = nobody_request(inv, SOCKET, http_post(f"{route}?mirror={MIRROR}", body))
        assert got["connect"] == "EACCES", got
    # the agent commands: a clear message, exit 1
    for command in (f"resync --mirror {MIRROR}", f"repair --mirror {MIRROR} {DATA}/a.txt"):
        proc = as_nobody(inv, f"{AGENT} {command}")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"must be run as root: the control socket {SOCKET} is root-only" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert primary_view(inv) == before  # nothing started, nothing re-sent


def test_nobody_is_refused_even_with_the_modes_opened(inv: Path) -> None:
    routes = sorted(control_routes({}))
    before = primary_view(inv)
    since = ssh(inv, "ctl1", "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    ssh(inv, "ctl1", f"chmod 755 /run/mirrorkit && chmod 666 {SOCKET}")
    try:
        refused = []
        for route in routes:
            got = nobody_request(inv, SOCKET, http_post(f"{route}?mirror={MIRROR}", b"{}"))
            assert got["connect"] == "ok" and code_of(got["answer"]) == 403, got
            refused.append(got)
        proc = as_nobody(inv, f"{AGENT} resync --mirror {MIRROR}")
        assert proc.returncode == 1 and "must be run as root" in proc.stderr, proc.stderr
    finally:
        ssh(inv, "ctl1", f"chmod 700 /run/mirrorkit && chmod 600 {SOCKET}")
    journal = ssh(inv, "ctl1", f"journalctl -u mirrorkit-agent --since '{since}' -o cat").stdout
    for got in refused:
        assert f"refused uid {got['uid']} (pid {got['pid']})" in journal, journal[-3000:]
    assert primary_view(inv) == before


def test_root_succeeds_on_the_member_and_from_the_controller(inv: Path) -> None:
    before = primary_view(inv)
    proc = ssh(inv, "ctl1", f"{AGENT} resync --mirror {MIRROR} --member ctl2 --json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rid = json.loads(proc.stdout)["resyncs"]["ctl2"]
    eventually(lambda: (primary_view(inv)[1] or {}).get("id") == rid
               and primary_view(inv)[1]["state"] == "done", "root's resync done")
    proc = ssh(inv, "ctl1", f"{AGENT} repair --mirror {MIRROR} {DATA}/a.txt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["resent"] == [f"{DATA}/a.txt"]
    assert primary_view(inv)[0] > before[0]
    # the controller's commands, over SSH as the inventory's user (root)
    proc = mirrorkit("resync", str(inv), "--mirror", MIRROR, "--member", "ctl2",
                     "--mode", "checksum")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ssh(inv, "ctl2", f"echo ONE > {DATA}/a.txt")  # same size, other content
    proc = mirrorkit("verify", str(inv), "--mirror", MIRROR, "--repair", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)["mirrors"][MIRROR]
    assert report["repair"]["resent"] == [f"{DATA}/a.txt"], report
    assert ssh(inv, "ctl2", f"cat {DATA}/a.txt").stdout.strip() == "one"
