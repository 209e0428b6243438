"""molecule/default verify, after the routine applies and before the
failover behaviours (file order): a local user against the primary's agent,
on the scenario's converged lab (moved here from two labs of their own in
tests/lab, which each cost a lab up and a full apply).

Authenticated control (issue 6): ``nobody`` on the primary (mol-node1) is
refused every mutating route through every path — the loopback TCP API
(405), the root-only control socket (EACCES at connect; 403 and a journal
line even with its modes opened) and the agent's commands (a clear message,
exit 1) — and nothing starts; root succeeds on the member and from the
controller's CLI over SSH.

The VIP under attack (issue 7, item 2): while ``nobody`` on mol-node1 holds
600 idle and 600 slowloris connections to the API and floods it with 400
concurrent ``GET /health`` for 30 s, the records VIP is on mol-node1 in every
sample (every 0.5 s) and on mol-node2 in none, and keepalived on mol-node1
never leaves MASTER. The agent's VRRP track file (issue 8, part 5), flipped,
releases and retakes the VIP at once.

Everything is left as it was found (modes, track file, files), so the
failover behaviours start from the fleet as converged.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Any

from test_z_failover import (
    ADDRESS,
    DR,
    INVENTORY,
    MUX,
    NODE1,
    NODE2,
    VIP,
    eventually,
    mirrorkit,
    ssh,
)

from mirrorkit.agent.api.control import control_routes
from mirrorkit.lab.sshkey import ssh_command

MIRROR = "records"
AGENT = "/opt/mirrorkit/venv/bin/mirrorkit-agent"
SOCKET = "/run/mirrorkit/control.sock"
API_PORT = 7480
DATA = "/srv/records"
PROBE = f"{DATA}/hostile"  # the control tests' files, removed at the end

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

# Standard library only, run as nobody on the primary for SECONDS: N idle, N
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

TRACK = f"/run/mirrorkit/{MIRROR}.vrrp"
FLIP = (f"printf '{{value}}\\n' > /run/mirrorkit/.{MIRROR}.vrrp.flip && "
        f"mv /run/mirrorkit/.{MIRROR}.vrrp.flip {TRACK}")
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


# -- plumbing ---------------------------------------------------------------------------


def run_on(host: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return ssh(host, command, timeout=timeout)


def popen_on(host: str, command: str) -> subprocess.Popen[str]:
    argv = ssh_command(ADDRESS[host], [command], batch=True, connect_timeout=5)
    return subprocess.Popen([argv[0], *MUX, *argv[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def as_nobody(command: str) -> subprocess.CompletedProcess[str]:
    return run_on(NODE1, f"runuser -u nobody -- {command}")


def nobody_request(where: str | int, raw: bytes) -> dict[str, Any]:
    proc = as_nobody(shlex.join(["python3", "-c", CLIENT, str(where), raw.hex()]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer


def http_post(target: str, body: bytes = b"") -> bytes:
    return f"POST {target} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def code_of(answer: str) -> int:
    return int(answer.split(" ", 2)[1])


def status(host: str) -> dict[str, Any]:
    proc = run_on(host, f"{AGENT} status --json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mirror: dict[str, Any] = json.loads(proc.stdout)["mirrors"][MIRROR]
    return mirror


def primary_view() -> tuple[int, Any]:
    """(the primary's LSN, its view of the DR copy's resync)."""
    m = status(NODE1)
    return int(m["lsn"]), m["peers"][DR]["resync"]


def vip_on(host: str) -> bool:
    return f" {VIP}/" in run_on(host, "ip -o -4 addr show dev eth0").stdout


# -- authenticated control --------------------------------------------------------------


def test_the_unit_makes_the_socket_root_only() -> None:
    proc = run_on(NODE1, "systemctl show -p RuntimeDirectory -p RuntimeDirectoryMode "
                         f"mirrorkit-agent; stat -c '%a %U %F' /run/mirrorkit {SOCKET}")
    lines = proc.stdout.splitlines()
    assert "RuntimeDirectory=mirrorkit" in lines and "RuntimeDirectoryMode=0700" in lines
    assert lines[-2:] == ["700 root directory", "600 root socket"], lines


def test_nobody_is_refused_every_mutating_route() -> None:
    run_on(NODE1, f"mkdir -p {PROBE} && echo one > {PROBE}/a.txt")
    eventually(lambda: run_on(DR, f"cat {PROBE}/a.txt").stdout.strip() == "one",
               f"{PROBE}/a.txt on {DR}")
    routes = sorted(control_routes({}))
    before = primary_view()
    body = json.dumps({"paths": [f"{PROBE}/a.txt"]}).encode()
    # the loopback TCP API: reads for anyone, no POST at all
    got = nobody_request(API_PORT, b"GET /health HTTP/1.1\r\n\r\n")
    assert code_of(got["answer"]) == 200, got
    for route in routes:
        got = nobody_request(API_PORT, http_post(f"{route}?mirror={MIRROR}", body))
        assert code_of(got["answer"]) == 405 and SOCKET in got["answer"], got
    # the control socket: refused at connect
    for route in routes:
        got = nobody_request(SOCKET, http_post(f"{route}?mirror={MIRROR}", body))
        assert got["connect"] == "EACCES", got
    # the agent commands: a clear message, exit 1
    for command in (f"resync --mirror {MIRROR}", f"repair --mirror {MIRROR} {PROBE}/a.txt"):
        proc = as_nobody(f"{AGENT} {command}")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"must be run as root: the control socket {SOCKET} is root-only" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert primary_view() == before  # nothing started, nothing re-sent


def test_nobody_is_refused_even_with_the_modes_opened() -> None:
    routes = sorted(control_routes({}))
    before = primary_view()
    since = run_on(NODE1, "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    run_on(NODE1, f"chmod 755 /run/mirrorkit && chmod 666 {SOCKET}")
    try:
        refused = []
        for route in routes:
            got = nobody_request(SOCKET, http_post(f"{route}?mirror={MIRROR}", b"{}"))
            assert got["connect"] == "ok" and code_of(got["answer"]) == 403, got
            refused.append(got)
        proc = as_nobody(f"{AGENT} resync --mirror {MIRROR}")
        assert proc.returncode == 1 and "must be run as root" in proc.stderr, proc.stderr
    finally:
        run_on(NODE1, f"chmod 700 /run/mirrorkit && chmod 600 {SOCKET}")
    journal = run_on(NODE1, f"journalctl -u mirrorkit-agent --since '{since}' -o cat").stdout
    for got in refused:
        assert f"refused uid {got['uid']} (pid {got['pid']})" in journal, journal[-3000:]
    assert primary_view() == before


def test_root_succeeds_on_the_member_and_from_the_controller() -> None:
    before = primary_view()
    proc = run_on(NODE1, f"{AGENT} resync --mirror {MIRROR} --member {DR} --json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rid = json.loads(proc.stdout)["resyncs"][DR]
    eventually(lambda: (primary_view()[1] or {}).get("id") == rid
               and primary_view()[1]["state"] == "done", "root's resync done", 120)
    proc = run_on(NODE1, f"{AGENT} repair --mirror {MIRROR} {PROBE}/a.txt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["resent"] == [f"{PROBE}/a.txt"]
    assert primary_view()[0] > before[0]
    # the controller's commands, over SSH as the inventory's user (root)
    proc = mirrorkit("resync", str(INVENTORY), "--mirror", MIRROR, "--member", DR,
                     "--mode", "checksum")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_on(DR, f"echo ONE > {PROBE}/a.txt")  # same size, other content
    proc = mirrorkit("verify", str(INVENTORY), "--mirror", MIRROR, "--repair", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)["mirrors"][MIRROR]
    assert report["repair"]["resent"] == [f"{PROBE}/a.txt"], report
    assert run_on(DR, f"cat {PROBE}/a.txt").stdout.strip() == "one"
    run_on(NODE1, f"rm -rf {PROBE}")
    eventually(lambda: run_on(DR, f"test -e {PROBE}").returncode != 0,
               f"{PROBE} gone from {DR} too")


# -- the VIP under attack ---------------------------------------------------------------


def test_the_vip_stays_on_the_primary_while_nobody_attacks_its_api() -> None:
    eventually(lambda: vip_on(NODE1) and not vip_on(NODE2), f"the VIP on {NODE1} only")
    since = run_on(NODE1, "date +%s").stdout.strip()
    seconds, samples = 30, 50
    attack = popen_on(NODE1, "ulimit -n 8192; runuser -u nobody -- python3 -c "
                             f"{shlex.quote(ATTACK)} 600 400 {seconds}")
    try:
        subprocess.run(["sleep", "5"], check=False)  # let the attack build up
        samplers = {host: popen_on(host, SAMPLE.format(n=samples, vip=VIP))
                    for host in (NODE1, NODE2)}
        seen = {host: p.communicate(timeout=120)[0].split() for host, p in samplers.items()}
        out, err = attack.communicate(timeout=120)
    finally:
        if attack.poll() is None:
            attack.kill()
    counts = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    transitions = run_on(NODE1, f"journalctl -u keepalived --since @{since} --no-pager "
                                "| grep -E 'Entering (FAULT|BACKUP)' || true").stdout
    print("attacker saw:", counts, err[-500:])
    assert counts.get("opened", 0) > 1600, counts  # the attack ran, as nobody
    assert counts.get("flood 200", 0) > 0 and counts.get("flood 503", 0) == 0, counts
    assert seen[NODE1] == ["1"] * samples, seen
    assert seen[NODE2] == ["0"] * samples, seen
    assert transitions.strip() == "", transitions


def test_the_track_file_moves_the_vip_at_once() -> None:
    """The agent's verdict as the track file says it: "1" on the primary
    releases the VIP without waiting for the script's interval * fall, "0"
    takes it back. (The file is the agent's; the test writes it to play a
    step-down; the agent writes it only when its own verdict changes, so it
    does not undo the test's value.)"""
    assert run_on(NODE1, f"cat {TRACK}").stdout == "0\n"
    assert run_on(NODE2, f"cat {TRACK}").stdout == "1\n"  # the backup: FAULT
    try:
        proc = run_on(NODE1, FLIP.format(value=1) + " && " + WAIT_VIP.format(vip=VIP, want=0))
        released = proc.stdout.strip()
        assert released != "timeout" and proc.returncode == 0, proc.stdout + proc.stderr
        # No threshold: without track_file nothing would release it at all
        # (the primary file still says primary), and the wait would time out.
        assert not vip_on(NODE2)  # not the agent's primary there: FAULT, no VIP
        proc = run_on(NODE1, FLIP.format(value=0) + " && " + WAIT_VIP.format(vip=VIP, want=1))
        assert proc.stdout.strip() != "timeout", proc.stdout + proc.stderr
        print(f"VIP released {released} s after the track file said 1, "
              f"back {proc.stdout.strip()} s after it said 0")
    finally:
        run_on(NODE1, FLIP.format(value=0))
