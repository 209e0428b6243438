"""`mirrorkit lab` on real podman: a throwaway 2-host lab on 198.18.9.0/24.

The tests run in file order on one lab: up, up again, ssh, stop/start, down.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrorkit.lab.podman import inspect
from mirrorkit.lab.spec import LabSpec, load_spec

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed"),
]

INVENTORY = """\
all:
  hosts:
    lt1: {ansible_host: 198.18.9.11}
    lt2: {ansible_host: 198.18.9.12}
  vars:
    mirrorkit_lab: {network: mk-labtest, subnet: 198.18.9.0/24, prefix: mk-labtest-}
"""


def lab(*argv: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `mirrorkit lab ARGV` (as `python -m mirrorkit.lab`)."""
    proc = subprocess.run([sys.executable, "-m", "mirrorkit.lab", *argv],
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"mirrorkit lab {' '.join(argv)} -> {proc.returncode}\n{proc.stderr}")
    return proc


def ssh(inv: Path, host: str, command: str) -> subprocess.CompletedProcess[str]:
    return lab("ssh", host, "-i", str(inv), "--", command, check=False, timeout=30)


def container_ids(spec: LabSpec) -> dict[str, str | None]:
    result: dict[str, str | None] = {}
    for h in spec.hosts:
        info = inspect("container", h.container)
        result[h.name] = None if info is None else str(info["Id"])
    return result


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("lab") / "labtest.yml"
    path.write_text(INVENTORY)
    lab("down", str(path))  # leftovers of an earlier run
    start = time.monotonic()
    lab("up", str(path))
    print(f"lab up (2 hosts): {time.monotonic() - start:.1f} s")
    yield path
    lab("down", str(path), check=False)


def test_hosts_run_systemd_and_answer_ssh(inv: Path) -> None:
    for host in ("lt1", "lt2"):
        proc = ssh(inv, host, "hostname; systemctl is-system-running; "
                   "dpkg-query -W -f='${Status}\\n' keepalived; "
                   "systemctl is-enabled keepalived; systemctl is-active keepalived")
        lines = proc.stdout.split()
        assert lines[0] == host, proc.stderr
        assert proc.stdout.splitlines()[1] in ("running", "degraded"), proc.stdout
        assert "install ok installed" in proc.stdout
        assert proc.stdout.splitlines()[-2:] == ["disabled", "inactive"]


def test_hosts_reach_each_other_by_name(inv: Path) -> None:
    proc = ssh(inv, "lt1", "ping -c1 -W2 lt2 >/dev/null && ip -o -4 addr show eth0")
    assert proc.returncode == 0, proc.stderr
    assert "198.18.9.11/24" in proc.stdout


def test_ssh_passes_the_exit_status(inv: Path) -> None:
    assert ssh(inv, "lt2", "exit 7").returncode == 7


def test_up_again_leaves_containers_alone(inv: Path) -> None:
    spec = load_spec(inv)
    before = container_ids(spec)
    start = time.monotonic()
    proc = lab("up", str(inv))
    assert time.monotonic() - start < 20
    assert container_ids(spec) == before
    assert proc.stdout.count("unchanged") == 2


def test_stop_pulls_the_plug_and_start_brings_it_back(inv: Path) -> None:
    lab("stop", "lt1", str(inv))
    assert ssh(inv, "lt1", "true").returncode != 0
    assert ssh(inv, "lt2", "true").returncode == 0
    status = lab("status", str(inv), check=False)
    assert status.returncode == 1 and "exited" in status.stdout
    lab("start", "lt1", str(inv))
    assert ssh(inv, "lt1", "systemctl is-system-running").returncode in (0, 1)
    assert ssh(inv, "lt1", "true").returncode == 0


def test_up_recreates_a_stopped_host(inv: Path) -> None:
    spec = load_spec(inv)
    before = container_ids(spec)
    lab("stop", "lt2", str(inv))
    proc = lab("up", str(inv))
    after = container_ids(spec)
    assert after["lt1"] == before["lt1"] and after["lt2"] != before["lt2"]
    assert "recreated" in proc.stdout
    assert ssh(inv, "lt2", "true").returncode == 0


def test_bad_inventory_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(INVENTORY.replace("198.18.9.12", "10.9.9.9"))
    proc = lab("up", str(bad), check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "host lt2.ansible_host: 10.9.9.9 is outside" in proc.stderr


def test_down_removes_containers_and_network(inv: Path) -> None:
    spec = load_spec(inv)
    lab("down", str(inv))
    assert container_ids(spec) == {"lt1": None, "lt2": None}
    assert inspect("network", spec.network) is None
    lab("down", str(inv))  # absent: still fine
