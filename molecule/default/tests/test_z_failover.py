"""molecule/default verify, last module (the ``z``: file order, after
test_routine_apply.py, which wants the fleet exactly as converged): the
failover behaviours of issue 8 (part 10), in order, on the scenario's
converged lab, as a client of records-app on the VIP sees them. They share
the scenario's lab rather than bringing up their own: no second create and
converge (about 3.5 minutes here); see molecule/README.md.

Every behaviour starts from the same state (the ``reset`` fixture): every
host running and thawed, no network fault, maintenance off, mol-node1 the
writable primary holding the VIP with records-app answering on it, mol-node2
its active backup, mol-dr1 connected. Faults come from `mirrorkit lab stop|start|partition|heal`.

Expected timing with the inventory's defaults (heartbeat 0.25 s, qos 1 s,
arbiter 2 s, VRRPv3 advert 0.2 s; docs/architecture.md "Failover timing",
"VIP timing"): a failover is the arbiter's 2 s of silence + up to one
heartbeat + the promotion (term persisted, on_promote starts records-app)
+ the VIP move (3 x advert + skew, ~0.7 s): about 3 s from the kill to the
first write acknowledged by the new primary through the VIP. A switchover
pauses client writes for the drain plus the VIP move (under 2 s). The
figures are printed ("[ha] ...") and kept in
$MOLECULE_EPHEMERAL_DIRECTORY/ha-figures.json; the assertions only wait for
conditions with generous deadlines (never a wall-clock threshold: a shared,
loaded machine), so a slow run is reported by its figures, not failed.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirrorkit.lab.sshkey import ssh_command

SCENARIO = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).parent.parent))
INVENTORY = SCENARIO / "inventory.yml"
MIRRORKIT = str(Path(sys.executable).parent / "mirrorkit")
_INV = yaml.safe_load(INVENTORY.read_text())["all"]
ADDRESS = {name: h["ansible_host"] for name, h in _INV["hosts"].items()}
MIRROR = "records"
_SPEC = _INV["vars"]["mirrorkit_mirrors"][MIRROR]
NODE1, NODE2, ARB, DR = _SPEC["primary"], _SPEC["backup"], _SPEC["arbiter"], "mol-dr1"
VIP = _SPEC["vip"]["address"].split("/")[0]
APP = f"http://{VIP}:8080"
APP_DIR = "/srv/records/app"
API_PORT = 7480
# Generous deadlines for conditions (the expected figures are far smaller).
DEADLINE = 60.0
NO_FAILOVER_WAIT = 8.0  # 4 x arbiter: long enough that a failover would have happened
FIGURES: dict[str, Any] = {}


# -- plumbing ---------------------------------------------------------------------------


# The behaviours poll the agents over SSH hundreds of times: one connection
# per host, reused (a fresh one was ~0.35 s of each poll). A connection to a
# restarted host fails at its first use (the new host resets it), one to a
# host that is gone within ~6 s (ServerAlive): that one command fails, as a
# fresh connection to a host that is down would, and the next starts a new
# connection (every call to a host that was restarted is in an `eventually`).
# Its own ControlPath: these options are the master's, whoever opens it.
MUX = ("-o", "ControlMaster=auto", "-o", "ControlPersist=30s",
       "-o", "ControlPath=/tmp/mk-molecule-ha-%C",
       "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3")


def ssh(host: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    argv = ssh_command(ADDRESS[host], [command], batch=True, connect_timeout=5)
    return subprocess.run([argv[0], *MUX, *argv[1:]], capture_output=True, text=True,
                          timeout=timeout, check=False)


def mirrorkit(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([MIRRORKIT, *argv], capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, "NO_COLOR": "1"})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def lab(*argv: str) -> None:
    proc = mirrorkit("lab", *argv, str(INVENTORY))
    assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)


def agent_status(host: str, mirror: str = MIRROR) -> dict[str, Any] | None:
    """The mirror's entry of the agent's /status on HOST; None when it does not answer."""
    script = ("import urllib.request,sys\n"
              f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{API_PORT}/status',"
              "timeout=3).read().decode())")
    try:
        proc = ssh(host, f"python3 -c {shlex.quote(script)}", timeout=15)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    try:
        entry: dict[str, Any] = json.loads(proc.stdout)["mirrors"][mirror]
    except (ValueError, KeyError):
        return None
    return entry


def events(host: str, mirror: str = MIRROR) -> list[dict[str, Any]]:
    script = ("import urllib.request,sys\n"
              f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{API_PORT}/events"
              f"?mirror={mirror}&limit=1000',timeout=3).read().decode())")
    proc = ssh(host, f"python3 -c {shlex.quote(script)}")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    found: list[dict[str, Any]] = data["events"] if isinstance(data, dict) else data
    return found


def is_writable_primary(host: str, mirror: str = MIRROR) -> bool:
    s = agent_status(host, mirror)
    return bool(s and s.get("role") == "primary" and not s.get("fenced")
                and not s.get("starting"))


def role(host: str) -> str | None:
    s = agent_status(host)
    return None if s is None else s.get("role")


def holds_vip(host: str, vip: str = VIP) -> bool:
    proc = ssh(host, "ip -o -4 addr show")
    return proc.returncode == 0 and f" {vip}/" in proc.stdout


def app_running(host: str) -> bool:
    return ssh(host, "systemctl is-active records-app").stdout.strip() == "active"


def eventually(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > deadline:
            pytest.fail(f"{what}: not true within {deadline:.0f} s")
        time.sleep(0.3)
    return time.monotonic() - start


def post(body: bytes, timeout: float = 1.0, app: str = APP) -> dict[str, Any] | None:
    """One write to records-app through the VIP: its answer, None when it failed."""
    request = urllib.request.Request(f"{app}/records", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            if answer.status != 201:
                return None
            result: dict[str, Any] = json.loads(answer.read())
            return result
    except (OSError, ValueError, urllib.error.URLError):
        return None


def records_on(host: str, directory: str = APP_DIR) -> set[str]:
    proc = ssh(host, f"ls -1 {directory} 2>/dev/null || true")
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()}


def record(name: str, figures: dict[str, Any]) -> None:
    figures["loadavg"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    FIGURES[name] = figures
    if "MOLECULE_EPHEMERAL_DIRECTORY" in os.environ:
        out = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ha-figures.json"
        out.write_text(json.dumps(FIGURES, indent=2) + "\n")
    print(f"\n[ha] {name}: {json.dumps(figures)}", flush=True)


@dataclass
class Write:
    sent: float
    answered: float
    id: str | None
    host: str | None


@dataclass
class Writer:
    """A client writing to records-app through the VIP every 50 ms (each
    request bounded by a 1 s timeout) until stopped; every answer kept."""

    writes: list[Write] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __enter__(self) -> Writer:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        eventually(lambda: bool(self.acked()), "the writer's first write is acknowledged", 30)
        return self

    def _run(self) -> None:
        tag = uuid.uuid4().hex[:8]
        n = 0
        end = time.time() + 600  # bounded whatever happens to the test
        while not self.stop.is_set() and time.time() < end:
            n += 1
            sent = time.time()
            answer = post(f"{tag} {n}\n".encode())
            self.writes.append(Write(sent, time.time(), answer and answer.get("id"),
                                     answer and answer.get("host")))
            time.sleep(max(0.0, 0.05 - (time.time() - sent)))

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def acked(self, host: str | None = None, after: float = 0.0) -> list[Write]:
        return [w for w in list(self.writes)
                if w.id and (host is None or w.host == host) and w.sent >= after]

    def longest_pause(self, start: float, end: float) -> float:
        """Longest time between two acknowledged writes around [start, end]
        (the last before start, the first after it)."""
        ok = [w.answered for w in self.writes if w.id]
        before = [t for t in ok if t <= start] or [start]
        times = [before[-1], *[t for t in ok if start < t <= end + 30]]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def failover_members_ready() -> bool:
    n1, n2 = agent_status(NODE1), agent_status(NODE2)
    return bool(n1 and n2 and n1.get("role") == "primary" and not n1.get("fenced")
                and n2.get("role") == "backup" and (n2.get("ha") or {}).get("active"))


def wait_until_backup_active(host: str) -> None:
    eventually(lambda: bool((s := agent_status(host)) and s.get("role") == "backup"
                            and (s.get("ha") or {}).get("active")),
               f"{host} is an active backup", 120)


def live_primary() -> str | None:
    for host in (NODE1, NODE2, DR):
        if is_writable_primary(host):
            return host
    return None


# -- the reset between behaviours -------------------------------------------------------


@pytest.fixture
def reset() -> Iterator[None]:
    restore_lab()
    yield


def restore_lab() -> None:
    """mol-node1 primary with the VIP and records-app, mol-node2 its active
    backup, mol-dr1 connected to it, every host up, no fault, maintenance off."""
    for host in ADDRESS:
        state = subprocess.run(
            ["podman", "inspect", "-f", "{{.State.Status}}", host], capture_output=True,
            text=True, check=False, env={**os.environ, "CONTAINERS_CONF": containers_conf()},
        ).stdout.strip()
        if state == "paused":
            lab("resume", host)
        elif state != "running":
            lab("start", host)
    lab("heal")
    mirrorkit("maintenance", "off", str(INVENTORY), "--mirror", MIRROR)
    eventually(lambda: live_primary() is not None, "some member is the writable primary", 120)
    primary = live_primary()
    if primary != NODE1:
        eventually(lambda: role(NODE1) in ("backup", "async")
                   and bool((agent_status(NODE1) or {}).get("connected", True)),
                   f"{NODE1} follows {primary}", 120)
        if primary == DR:
            # Back from a DR promotion: mol-node2 may be a backup of dr1 or
            # an async follower; switch to node1 directly.
            pass
        else:
            wait_until_backup_active(NODE1)
        proc = mirrorkit("switchover", str(INVENTORY), "--mirror", MIRROR, "--to", NODE1)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    eventually(failover_members_ready, f"{NODE1} primary and {NODE2} its active backup", 120)
    # The DR copy too (a behaviour may switch over to it): after a restart of
    # mol-node1 it reconnects a little after mol-node2 does, and a reset that
    # polls quickly could end before it has.
    eventually(lambda: bool((s := agent_status(DR)) and s.get("role") == "async"
                            and s.get("connected")), f"{DR} follows {NODE1}", 120)
    eventually(lambda: holds_vip(NODE1) and not holds_vip(NODE2), f"the VIP is on {NODE1}")
    eventually(lambda: post(b"reset\n", timeout=2) is not None,
               "records-app answers through the VIP")


def containers_conf() -> str:
    import mirrorkit.lab

    return str(Path(mirrorkit.lab.__file__).parent / "containers.conf")


# -- the behaviours ---------------------------------------------------------------------


def test_failover_when_the_primary_dies(reset: None) -> None:
    """Kill mol-node1 (SIGKILL to its container): mol-node2 is the primary
    with the VIP and records-app, expected ~3 s after the kill (arbiter 2 s
    + heartbeat + promotion + VIP move); every record acknowledged through
    the VIP and replicated to mol-node2 before the kill is there."""
    with Writer() as writer:
        time.sleep(2)
        replicated = records_on(NODE2)
        acked_before = {w.id for w in writer.acked()}
        kill = time.time()
        lab("stop", NODE1)
        killed = time.time()  # `podman kill` returned (its own time grows with the load)
        promoted = eventually(lambda: is_writable_primary(NODE2), f"{NODE2} is promoted")
        eventually(lambda: holds_vip(NODE2), f"the VIP moves to {NODE2}")
        eventually(lambda: bool(writer.acked(NODE2, kill)),
                   f"a write through the VIP is acknowledged by {NODE2}")
        time.sleep(1)
    first = min(w.answered for w in writer.acked(NODE2, kill))
    last_old = max((w.answered for w in writer.acked(NODE1)), default=kill)
    after = records_on(NODE2)
    lost_replicated = (acked_before & replicated) - after
    record("failover", {
        "expected_s": "~3 (arbiter 2 + heartbeat 0.25 + promotion + VIP ~0.7)",
        "kill_issued_to_first_write_via_vip_s": round(first - kill, 3),
        "kill_returned_to_first_write_via_vip_s": round(first - killed, 3),
        "client_outage_last_ack_old_to_first_ack_new_s": round(first - last_old, 3),
        "kill_returned_to_promoted_seen_by_test_s": round(promoted, 1),
        "acked_before_kill": len(acked_before),
        "acked_before_kill_not_replicated_at_kill": len(acked_before - replicated),
        "acked_before_kill_missing_on_new_primary": len(acked_before - after),
    })
    assert not lost_replicated, f"replicated before the kill, missing on {NODE2}: " \
                                f"{sorted(lost_replicated)[:5]}"
    assert app_running(NODE2)
    ev = events(NODE2)
    assert any(e.get("kind") == "decision" and e.get("situation") == "promote" for e in ev), ev


def test_switchover_pauses_writes_briefly(reset: None) -> None:
    """`mirrorkit switchover --to mol-node2`: no acknowledged write lost,
    the client's write pause measured (drain + VIP move, expected < 2 s)."""
    with Writer() as writer:
        time.sleep(1)
        start = time.time()
        proc = mirrorkit("switchover", str(INVENTORY), "--mirror", MIRROR, "--to", NODE2)
        end = time.time()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        eventually(lambda: bool(writer.acked(NODE2, start)),
                   f"a write through the VIP is acknowledged by {NODE2}")
        time.sleep(1)
    acked = {w.id for w in writer.acked()}
    eventually(lambda: acked <= records_on(NODE2), f"every acknowledged record is on {NODE2}",
               30)
    record("switchover", {
        "expected_s": "< 2 (drain + VIP move ~0.7)",
        "client_write_pause_s": round(writer.longest_pause(start, end), 3),
        "command_s": round(end - start, 2),
        "agent_says": proc.stdout.strip().splitlines()[-1],
        "acked": len(acked),
    })
    assert role(NODE1) == "backup"


MAINTENANCE_TASKS = """
- name: Molecule maintenance | leave a marker on the member
  ansible.builtin.copy:
    dest: /tmp/mk-maintained
    content: "maintained {{ inventory_hostname }}\\n"
    mode: "0644"
"""


def test_maintenance_run_of_the_primary_switches_away_and_back(reset: None,
                                                                tmp_path: Path) -> None:
    """`mirrorkit maintenance run --host mol-node1 --tasks F --switch-back`:
    mol-node1 hands over to mol-node2, the tasks run on mol-node1 (a marker
    file), it catches up and the switch-back makes it primary again with the
    VIP; every write acknowledged before and during is on it."""
    ssh(NODE1, "rm -f /tmp/mk-maintained")
    tasks = tmp_path / "tasks.yml"
    tasks.write_text(MAINTENANCE_TASKS)
    with Writer() as writer:
        time.sleep(1)
        start = time.time()
        proc = mirrorkit("maintenance", "run", str(INVENTORY), "--mirror", MIRROR,
                         "--host", NODE1, "--tasks", str(tasks), "--switch-back", timeout=600)
        end = time.time()
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
        eventually(lambda: bool(writer.acked(NODE1, end)),
                   f"a write through the VIP is acknowledged by {NODE1} after the switch-back")
        time.sleep(1)
    assert ssh(NODE1, "cat /tmp/mk-maintained").stdout == f"maintained {NODE1}\n", \
        "the operator's tasks did not run on the member under maintenance"
    assert writer.acked(NODE2, start), f"no write was acknowledged by {NODE2} while away"
    assert is_writable_primary(NODE1) and holds_vip(NODE1), f"{NODE1} is not primary again"
    assert role(NODE2) == "backup"
    assert agent_status(NODE1)["maintenance"] is False  # type: ignore[index]
    assert agent_status(NODE2)["maintenance"] is False  # type: ignore[index]
    acked = {w.id for w in writer.acked()}
    eventually(lambda: acked <= records_on(NODE1), f"every acknowledged record is on {NODE1}",
               30)
    record("maintenance_run_switch_back", {
        "command_s": round(end - start, 2),
        "client_write_pause_s": round(writer.longest_pause(start, end), 3),
        "acked": len(acked),
    })


def test_maintenance_mode_blocks_failover_until_off(reset: None) -> None:
    """Maintenance on, kill mol-node1: no failover for 4 x arbiter, and
    mol-node2's events say why; maintenance off: failover (~3 s)."""
    proc = mirrorkit("maintenance", "on", str(INVENTORY), "--mirror", MIRROR)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lab("stop", NODE1)
    time.sleep(NO_FAILOVER_WAIT)
    assert role(NODE2) == "backup" and not holds_vip(NODE2)
    ev = events(NODE2)
    assert any(e.get("situation") == "maintenance" and "maintenance mode is on"
               in e.get("message", "") for e in ev), ev
    off = time.time()
    # node1 is down: the controller sets node2 and reports node1 (exit 1)
    # once its SSH to node1 has timed out.
    mirrorkit("maintenance", "off", str(INVENTORY), "--mirror", MIRROR)
    off_done = time.time()
    assert agent_status(NODE2)["maintenance"] is False  # type: ignore[index]
    took = eventually(lambda: is_writable_primary(NODE2), f"{NODE2} is promoted once off")
    eventually(lambda: post(b"after maintenance\n", timeout=2) is not None,
               "records-app answers through the VIP")
    record("maintenance", {"expected_s": "~2.5 after off (arbiter already silent)",
                           "off_command_s": round(off_done - off, 2),
                           "off_returned_to_writes_via_vip_s": round(time.time() - off_done, 2),
                           "off_returned_to_promoted_seen_by_test_s": round(took, 1)})


def test_backup_cut_from_the_primary_while_the_arbiter_sees_it(reset: None) -> None:
    """Partition mol-node2 from mol-node1 (both still see the arbiter): no
    failover, the primary keeps serving, mol-node2's events say why."""
    with Writer() as writer:
        start = time.time()
        lab("partition", NODE1, NODE2)
        time.sleep(NO_FAILOVER_WAIT)
        assert is_writable_primary(NODE1) and role(NODE2) == "backup"
        assert holds_vip(NODE1) and not holds_vip(NODE2)
        ev = events(NODE2)
        assert any(e.get("situation") == "arbiter-sees-primary" for e in ev), ev
        lab("heal", NODE1, NODE2)
        assert {w.host for w in writer.acked(after=start)} == {NODE1}
        pause = writer.longest_pause(start, time.time())
    record("partition_backup", {"expected": "no failover; writes go on",
                                "client_write_pause_s": round(pause, 3)})


def test_primary_cut_from_both_fences_itself(reset: None) -> None:
    """Partition mol-node1 from mol-node2 and the arbiter: within its lease
    (qos 1 s) it fences itself (records-app stopped, VIP released), and only
    after that mol-node2 takes over (arbiter 2 s)."""
    with Writer() as writer:
        lab("partition", NODE1, NODE2)
        cut = time.time()  # the backup is already cut: this cuts the last peer
        lab("partition", NODE1, ARB)
        cut_done = time.time()
        eventually(lambda: is_writable_primary(NODE2), f"{NODE2} is promoted")
        eventually(lambda: not app_running(NODE1), f"records-app stops on {NODE1}")
        eventually(lambda: not holds_vip(NODE1), f"the VIP leaves {NODE1}")
        s1 = agent_status(NODE1)
        assert s1 is not None and (s1.get("role") != "primary" or s1.get("fenced")), s1
        eventually(lambda: bool(writer.acked(NODE2, cut)), f"{NODE2} acknowledges writes")
    fenced = [e["time"] for e in events(NODE1)
              if e.get("kind") == "not-writable" and e["time"] >= cut - 1]
    promoted = [e["time"] for e in events(NODE2)
                if e.get("kind") == "decision" and e.get("situation") == "promote"
                and e["time"] >= cut - 1]
    last_old = max((w.answered for w in writer.acked(NODE1, cut - 5)), default=cut)
    first_new = min(w.answered for w in writer.acked(NODE2, cut))
    record("partition_primary", {
        "expected_s": "fenced ~1 (qos) after the cut, promoted ~2.25 after (~1.25 after "
                      "the fence)",
        "cut_to_fenced_s": round(fenced[0] - cut, 3) if fenced else None,
        "cut_to_promoted_s": round(promoted[0] - cut, 3) if promoted else None,
        "cut_to_first_write_via_vip_s": round(first_new - cut, 3),
        "partition_command_s": round(cut_done - cut, 3),
        "fenced_to_promoted_s": round(promoted[0] - fenced[0], 3) if fenced and promoted
        else None,
        "last_ack_by_old_primary_after_cut_s": round(last_old - cut, 3),
    })
    # Containers share the host's clock: the event times compare.
    assert fenced and promoted and fenced[0] < promoted[0], (fenced, promoted)
    assert last_old < promoted[0], "the old primary acknowledged a write after the promotion"
    lab("heal")
    eventually(lambda: role(NODE1) == "backup", f"{NODE1} rejoins as backup after healing")


def test_rejoin_quarantines_the_writes_the_new_primary_never_got(reset: None) -> None:
    """Cut mol-node2 from mol-node1 (no failover: the arbiter sees the
    primary), write on mol-node1 directly under /srv/records (logged there,
    never shipped to mol-node2), kill mol-node1: mol-node2 is promoted
    without those writes. mol-node1 started again rejoins as backup, its
    diverged writes quarantined with a report, marked by `mirrorkit status`."""
    reports_before = ((agent_status(NODE1) or {}).get("quarantine") or {}).get("reports", 0)
    lab("partition", NODE1, NODE2)
    time.sleep(3)  # mol-node2 has lost the primary (qos 1 s), the arbiter still sees it
    name = f"diverged-{uuid.uuid4().hex[:8]}"
    assert ssh(NODE1, f"echo only-on-node1 > /srv/records/{name}").returncode == 0
    before = (agent_status(NODE1) or {}).get("lsn")
    time.sleep(2)  # captured and logged on mol-node1
    lab("stop", NODE1)
    lab("heal")
    eventually(lambda: is_writable_primary(NODE2), f"{NODE2} is promoted")
    assert ssh(NODE2, f"test -e /srv/records/{name}").returncode != 0
    lab("start", NODE1)
    eventually(lambda: role(NODE1) == "backup", f"{NODE1} rejoins as backup", 120)
    eventually(lambda: ((agent_status(NODE1) or {}).get("quarantine") or {}).get("reports", 0)
               > reports_before, f"{NODE1} reports quarantined data", 60)
    last = agent_status(NODE1)["quarantine"]["last"]  # type: ignore[index]
    assert Path(last).name.startswith("diverged-"), last
    report = ssh(NODE1, f"cat {shlex.quote(last)}/REPORT.txt")
    assert report.returncode == 0 and name in report.stdout, report.stdout + report.stderr
    assert ssh(NODE1, f"grep -rl only-on-node1 {shlex.quote(last)}").returncode == 0
    eventually(lambda: ssh(NODE1, f"test -e /srv/records/{name}").returncode != 0,
               f"{NODE1} ends equal to the new primary")
    status = mirrorkit("status", str(INVENTORY))
    assert re.search(rf"^\S*{NODE1}\S*: holds quarantined data", status.stdout, re.M), \
        status.stdout
    record("rejoin", {"lsn_on_node1_at_write": before, "report": last})


def test_planned_promotion_of_the_dr_copy(reset: None) -> None:
    """`mirrorkit promote --host mol-dr1`: a switchover to it, drained first,
    no acknowledged write lost."""
    acked = set()
    for n in range(20):
        answer = post(f"before dr {n}\n".encode(), timeout=2)
        if answer:
            acked.add(answer["id"])
    start = time.time()
    proc = mirrorkit("promote", str(INVENTORY), "--mirror", MIRROR, "--host", DR)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "switching over to" in proc.stdout, proc.stdout
    eventually(lambda: is_writable_primary(DR), f"{DR} is the primary")
    assert acked <= records_on(DR)
    record("promote_dr_planned", {"command_s": round(time.time() - start, 2),
                                  "says": proc.stdout.strip().splitlines()[-1]})


def test_forced_promotion_of_the_dr_copy(reset: None) -> None:
    """With mol-node1 dead and maintenance on (so mol-node2 does not take
    over): `mirrorkit promote --host mol-dr1` is refused, `--force` warns
    and promotes it, reporting the gap."""
    mirrorkit("maintenance", "on", str(INVENTORY), "--mirror", MIRROR)
    lab("stop", NODE1)
    refused = mirrorkit("promote", str(INVENTORY), "--mirror", MIRROR, "--host", DR)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    forced = mirrorkit("promote", str(INVENTORY), "--mirror", MIRROR, "--host", DR, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "WARNING" in forced.stderr, forced.stderr
    eventually(lambda: is_writable_primary(DR), f"{DR} is the primary")
    record("promote_dr_forced", {"refused": refused.stderr.strip().splitlines()[-1:],
                                 "says": forced.stdout.strip().splitlines()[-1:]})


def test_zz_the_lab_comes_back(reset: None) -> None:
    """The reset works from the last behaviour too (the next run of any
    scenario starts from destroy anyway)."""
    assert is_writable_primary(NODE1)
