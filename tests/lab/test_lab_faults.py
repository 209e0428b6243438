"""`mirrorkit lab partition|heal|loss|pause|resume` on real podman hosts
(issue 8, part 9): a throwaway 3-host lab (fa1, fa2, fa3 standing in for
node1, node2, arb1) on 198.18.12.0/24; the tests run in file order on it.

Reachability is judged from inside the hosts with bash's /dev/tcp to sshd
(port 22), each attempt bounded by `timeout`, waiting with a generous
deadline for the expected answer.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_lab import lab  # one runner of `mirrorkit lab` for the lab tests

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed"),
]

ADDRESSES = {"fa1": "198.18.12.11", "fa2": "198.18.12.12", "fa3": "198.18.12.13"}
INVENTORY = """\
all:
  hosts:
    fa1: {ansible_host: 198.18.12.11}
    fa2: {ansible_host: 198.18.12.12}
    fa3: {ansible_host: 198.18.12.13}
  vars:
    mirrorkit_lab: {network: mk-faults, subnet: 198.18.12.0/24, prefix: mk-faults-}
"""




def ssh(inv: Path, host: str, command: str, timeout: float = 30
        ) -> subprocess.CompletedProcess[str]:
    return lab("ssh", host, "-i", str(inv), "--", command, check=False, timeout=timeout)


def reaches(inv: Path, src: str, dst: str) -> bool:
    """One bounded TCP connect from SRC to DST's sshd."""
    probe = f'timeout 2 bash -c "</dev/tcp/{ADDRESSES[dst]}/22" && echo open || echo closed'
    return ssh(inv, src, probe).stdout.strip().endswith("open")


def eventually(check: object, want: bool, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        got = check() if callable(check) else check
        if got == want or time.monotonic() > deadline:
            return bool(got == want)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("faults") / "faults.yml"
    path.write_text(INVENTORY)
    lab("down", str(path))  # leftovers of an earlier run
    lab("up", str(path))
    yield path
    lab("down", str(path), check=False)


def test_partition_cuts_one_link_both_ways_and_nothing_else(inv: Path) -> None:
    assert reaches(inv, "fa1", "fa2") and reaches(inv, "fa2", "fa1")
    out = lab("partition", "fa1", "fa2", str(inv))
    assert "partitioned" in out.stderr
    assert eventually(lambda: reaches(inv, "fa1", "fa2"), False)
    assert not reaches(inv, "fa2", "fa1")
    assert reaches(inv, "fa1", "fa3") and reaches(inv, "fa2", "fa3")
    assert ssh(inv, "fa1", "true").returncode == 0  # the controller still reaches both
    lab("partition", "fa1", "fa2", str(inv))  # again: fine, still one rule each way
    rules = ssh(inv, "fa1", "nft list table inet mirrorkit_lab_faults").stdout
    assert rules.count("mirrorkit partition 198.18.12.12") == 2, rules  # input + output


def test_heal_the_pair_restores_it(inv: Path) -> None:
    lab("heal", "fa1", "fa2", str(inv))
    assert eventually(lambda: reaches(inv, "fa1", "fa2"), True)
    assert reaches(inv, "fa2", "fa1")


def test_heal_everything_restores_every_link(inv: Path) -> None:
    lab("partition", "fa1", "fa2", str(inv))
    lab("partition", "fa2", "fa3", str(inv))
    assert eventually(lambda: reaches(inv, "fa2", "fa3"), False)
    lab("heal", str(inv))
    assert eventually(lambda: reaches(inv, "fa1", "fa2"), True)
    assert reaches(inv, "fa2", "fa3")
    assert ssh(inv, "fa2", "nft list table inet mirrorkit_lab_faults").returncode != 0


def test_loss_drops_about_that_share_of_packets(inv: Path) -> None:
    lab("loss", "fa1", "fa2", "50", str(inv))
    # 200 UDP datagrams fa1 -> fa2 with a counter on fa2's side: the rule
    # drops each with probability 0.5 (a wide window, no timing involved).
    count = ("nft add table inet lossprobe; nft add chain inet lossprobe c "
             "'{ type filter hook input priority 0; }'; "
             "nft add rule inet lossprobe c udp dport 9 counter")
    assert ssh(inv, "fa2", count).returncode == 0
    # A datagram dropped on output fails its sendto with EPERM: counted, not fatal.
    send = ("python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(200):\n"
            "    try: s.sendto(b'x', ('198.18.12.12', 9))\n"
            "    except PermissionError: pass\"")
    assert ssh(inv, "fa1", send).returncode == 0
    listing = ssh(inv, "fa2", "nft list chain inet lossprobe c").stdout
    ssh(inv, "fa2", "nft delete table inet lossprobe")
    packets = int(listing.split("counter packets ")[1].split()[0])
    assert 40 <= packets <= 160, listing
    lab("loss", "fa1", "fa2", "0", str(inv))
    rules = ssh(inv, "fa1", "nft list table inet mirrorkit_lab_faults").stdout
    assert "loss" not in rules


def test_pause_freezes_a_host_and_resume_thaws_it(inv: Path) -> None:
    lab("pause", "fa2", str(inv))
    assert ssh(inv, "fa2", "true", timeout=20).returncode != 0  # sshd frozen: no answer
    assert reaches(inv, "fa1", "fa3")
    lab("pause", "fa2", str(inv))  # again: fine
    refused = lab("partition", "fa1", "fa2", str(inv), check=False)
    assert refused.returncode == 1 and "fa2 is paused" in refused.stderr
    assert "Traceback" not in refused.stderr
    lab("resume", "fa2", str(inv))
    assert ssh(inv, "fa2", "true").returncode == 0
    assert "was not paused" in lab("resume", "fa2", str(inv)).stderr


def test_up_thaws_a_paused_host_instead_of_recreating_it(inv: Path) -> None:
    ssh(inv, "fa2", "echo kept > /root/marker")
    lab("pause", "fa2", str(inv))
    assert "resumed" in lab("up", str(inv)).stdout
    assert ssh(inv, "fa2", "cat /root/marker").stdout.strip() == "kept"


def test_faults_on_hosts_that_are_not_there_are_clear_errors(inv: Path) -> None:
    proc = lab("partition", "fa1", "nosuch", str(inv), check=False)
    assert proc.returncode == 1 and "no lab host 'nosuch'" in proc.stderr
    lab("stop", "fa3", str(inv))
    proc = lab("pause", "fa3", str(inv), check=False)
    assert proc.returncode == 1 and "fa3 is not running" in proc.stderr
    assert "lab start fa3" in proc.stderr
    heal = lab("heal", str(inv))
    assert "not healed: fa3 is not running" in heal.stderr
