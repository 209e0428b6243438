"""The VIP stays on the primary while a local user attacks its status API
(issue 7, item 2), on real lab members: podman, systemd, keepalived and the
role's tracking script.

A throwaway 3-host lab (primary va1, backup va2, arbiter va3, VIP
198.18.11.100) on 198.18.11.0/24, converged with ``mirrorkit apply``. On
va1, ``nobody`` holds 600 idle and 600 slowloris connections to the API and
floods it with 400 concurrent ``GET /health`` for 30 s, while both failover
members sample their addresses every 0.5 s: the VIP must be on va1 in every
sample and on va2 in none, and keepalived on va1 must never leave MASTER.

On the same lab (issue 8, part 5): the agent's VRRP track file, flipped,
releases and retakes the VIP at once.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed"),
]

VIP = "198.18.11.100"
INVENTORY = f"""\
all:
  hosts:
    va1: {{ansible_host: 198.18.11.11}}
    va2: {{ansible_host: 198.18.11.12}}
    va3: {{ansible_host: 198.18.11.13}}
  vars:
    ansible_user: root
    ansible_ssh_private_key_file: ~/.mirrorkit/lab/id_ed25519
    ansible_ssh_common_args: >-
      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
    ansible_python_interpreter: /usr/bin/python3
    mirrorkit_lab: {{network: mk-vipattack, subnet: 198.18.11.0/24, prefix: mk-va-}}
    mirrorkit_pki_dir: ~/.mirrorkit/vipattack/pki
    mirrorkit_mirrors:
      records:
        paths: [/srv/records]
        mode: async
        primary: va1
        backup: va2
        arbiter: va3
        vip: {{address: {VIP}/24, interface: eth0}}
"""

# Standard library only, run as nobody on va1 for SECONDS: N idle, N
# slowloris (half a header, never finished) and M flood connections, each
# reopened when the agent closes it. Prints what it saw.
ATTACK = r"""
import asyncio, collections, json, sys
idle, flood, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
seen = collections.Counter()
async def hold(kind):
    while True:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", 7480)
        except OSError:
            seen["connect failed"] += 1
            await asyncio.sleep(0.05)
            continue
        seen["opened"] += 1
        if kind == "slowloris":
            w.write(b"GET /health HTTP/1.1\r\nX-Slow: ")
        elif kind == "flood":
            w.write(b"GET /health HTTP/1.1\r\n\r\n")
        try:
            data = await r.read()
            seen[f"{kind} " + (data.split(b" ", 2)[1].decode() if data else "closed")] += 1
        except OSError:
            seen["reset"] += 1
        w.close()
async def main():
    kinds = ["idle"] * idle + ["slowloris"] * idle + ["flood"] * flood
    tasks = [asyncio.ensure_future(hold(k)) for k in kinds]
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
asyncio.run(main())
print(json.dumps(seen))
"""

SAMPLE = ("for i in $(seq {n}); do ip -o -4 addr show dev eth0 | grep -c ' {vip}/' ; "
          "sleep 0.5; done")


def run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def mirrorkit(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "mirrorkit", *argv], timeout)


def ssh_argv(inv: Path, host: str, command: str) -> list[str]:
    return [sys.executable, "-m", "mirrorkit", "lab", "ssh", host, "-i", str(inv), "--", command]


def ssh(inv: Path, host: str, command: str) -> subprocess.CompletedProcess[str]:
    return run(ssh_argv(inv, host, command), 120)


def vip_on(inv: Path, host: str) -> bool:
    return f" {VIP}/" in ssh(inv, host, "ip -o -4 addr show dev eth0").stdout


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("va") / "vipattack.yml"
    path.write_text(INVENTORY)
    mirrorkit("lab", "down", str(path))  # leftovers of an earlier run
    proc = mirrorkit("lab", "up", str(path))
    assert proc.returncode == 0, proc.stderr
    try:
        proc = mirrorkit("apply", str(path), timeout=1800)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        yield path
    finally:
        mirrorkit("lab", "down", str(path))


def test_the_vip_stays_on_the_primary_while_nobody_attacks_its_api(inv: Path) -> None:
    for _ in range(60):
        if vip_on(inv, "va1"):
            break
        run(["sleep", "1"])
    assert vip_on(inv, "va1") and not vip_on(inv, "va2")
    since = ssh(inv, "va1", "date +%s").stdout.strip()
    seconds, samples = 30, 50
    attack = subprocess.Popen(ssh_argv(inv, "va1", (
        "ulimit -n 8192; runuser -u nobody -- python3 -c "
        f"{shlex.quote(ATTACK)} 600 400 {seconds}")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run(["sleep", "5"])  # let the attack build up
    samplers = {host: subprocess.Popen(ssh_argv(inv, host, SAMPLE.format(n=samples, vip=VIP)),
                                       stdout=subprocess.PIPE, text=True)
                for host in ("va1", "va2")}
    seen = {host: p.communicate(timeout=120)[0].split() for host, p in samplers.items()}
    out, err = attack.communicate(timeout=120)
    counts = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    transitions = ssh(inv, "va1", f"journalctl -u keepalived --since @{since} --no-pager "
                                  "| grep -E 'Entering (FAULT|BACKUP)' || true").stdout
    print("attacker saw:", counts, err[-500:])
    assert counts.get("opened", 0) > 1600, counts  # the attack ran, as nobody
    assert counts.get("flood 200", 0) > 0 and counts.get("flood 503", 0) == 0, counts
    assert seen["va1"] == ["1"] * samples, seen
    assert seen["va2"] == ["0"] * samples, seen
    assert transitions.strip() == "", transitions


# -- VIP timing (issue 8, part 5): keepalived tracks the agent's track file -------

TRACK = "/run/mirrorkit/records.vrrp"
FLIP = ("printf '{value}\\n' > /run/mirrorkit/.records.vrrp.flip && "
        "mv /run/mirrorkit/.records.vrrp.flip " + TRACK)
# Polls until the VIP is (want=1) or is not (want=0) on eth0; prints the seconds it took.
WAIT_VIP = ("python3 -c \"import subprocess, sys, time\n"
            "want, t0 = sys.argv[1] == '1', time.monotonic()\n"
            "while time.monotonic() - t0 < 60:\n"
            "    out = subprocess.run(['ip', '-o', '-4', 'addr', 'show', 'dev', 'eth0'],\n"
            "                         capture_output=True, text=True).stdout\n"
            "    if (' {vip}/' in out) == want:\n"
            "        print(round(time.monotonic() - t0, 3)); break\n"
            "    time.sleep(0.01)\n"
            "else: print('timeout')\" {want}")


def test_the_track_file_moves_the_vip_at_once(inv: Path) -> None:
    """The agent's verdict as the track file says it: "1" on the primary
    releases the VIP without waiting for the script's interval * fall (3 s),
    "0" takes it back. (The file is the agent's; the test writes it to play
    a step-down; the agent writes it only when its own verdict changes, so
    it does not undo the test's value.)"""
    assert ssh(inv, "va1", f"cat {TRACK}").stdout == "0\n"
    assert ssh(inv, "va2", f"cat {TRACK}").stdout == "1\n"  # the backup: FAULT
    try:
        proc = ssh(inv, "va1", FLIP.format(value=1) + " && "
                   + WAIT_VIP.format(vip=VIP, want=0))
        released = proc.stdout.strip()
        assert released != "timeout" and proc.returncode == 0, proc.stdout + proc.stderr
        # No threshold: without track_file nothing would release it at all
        # (the primary file still says primary), and the wait would time out.
        assert not vip_on(inv, "va2")  # not the agent's primary there: FAULT, no VIP
        proc = ssh(inv, "va1", FLIP.format(value=0) + " && "
                   + WAIT_VIP.format(vip=VIP, want=1))
        assert proc.stdout.strip() != "timeout", proc.stdout + proc.stderr
        print(f"VIP released {released} s after the track file said 1, "
              f"back {proc.stdout.strip()} s after it said 0")
    finally:
        ssh(inv, "va1", FLIP.format(value=0))
