#!/usr/bin/env python3
"""Failover, switchover and false failovers as a client of records-app on the VIP sees it
(issue 8 part 11), on the repository lab (inventories/lab.yml), in one run.

    make bench-failover                                  # everything, ~30 min
    PYTHONPATH=. .venv/bin/python bench/failover.py --phases failover,switchover \
        --runs 3 --fault-seconds 300
    .venv/bin/python bench/failover.py --render-only      # re-render the section

Needs the lab up and converged (``mirrorkit lab up`` + ``mirrorkit apply``);
the benchmark only kills, starts and switches over what is already there.

* **client**: a thread POSTs a small record to ``http://VIP:8080/records``
  every ``--interval`` s, each on a new TCP connection (connect timeout
  0.1 s: that is the resolution of "first successful write"), and keeps
  (sent, answered, ok, host) of every attempt.
* **floor**: a second keepalived on node1 and node2 (its own config, pid
  files, router id and VIP 198.18.7.101, same advert interval, no track
  script), so keepalived alone moving a VIP is measured on the same kill.
  A prober thread TCP-connects to FLOOR_VIP:22 every 10 ms.
* **failover** (per timer set): ``podman kill`` of the primary's container
  (SIGKILL: the host is gone); times from just before the kill command to
  the first write answered 201 by the new primary and to the floor VIP
  answering. Then restore: start the container, wait until it is a backup
  again (active), ``mirrorkit switchover --to`` it, wait for writes from it.
* **switchover**: the longest gap between two successful writes around
  ``mirrorkit switchover`` (alternately to node2 and back to node1).
* **faults**: term changes (failovers) while (a) the primary's agent is
  SIGSTOPped for arbiter/2 s once a minute, (b) 10% loss between primary and
  backup, (c) the arbiter's agent is restarted once a minute.

Results go to bench/work/failover.json (one entry per phase and timer set;
a later run replaces the same entries) and are rendered into bench/RESULTS.md,
section "Failover (issue 8)", between markers; bench/failover-notes.md (the
reading of the figures, by hand) is rendered after the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import itertools
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"
STORE = WORK / "failover.json"
RESULTS = ROOT / "bench" / "RESULTS.md"
NOTES = ROOT / "bench" / "failover-notes.md"
LAB_INVENTORY = ROOT / "inventories" / "lab.yml"
TUNED_INVENTORY = WORK / "lab-tuned.yml"
MIRROR = "records"
FLOOR_VIP = "198.18.7.101"
FLOOR_ROUTER_ID = 201
APP_PORT = 8080
BEGIN = "<!-- failover:begin (bench/failover.py --render-only rewrites this part) -->"
END = "<!-- failover:end -->"
TUNED = {"heartbeat": 0.1, "qos": 0.4, "arbiter": 0.7}
TUNED_ADVERT = 0.1
DEFAULT_ADVERT = 0.2  # roles/mirrorkit_vip/defaults/main.yml


# --- pure helpers (tests/unit/test_bench_failover.py) ------------------------------


@dataclass(frozen=True)
class Attempt:
    sent: float      # time.time() when the connection was opened
    done: float      # when the answer (or the failure) came
    ok: bool         # 201 with a JSON body naming a host
    host: str = ""   # the host that stored it


def first_ok_after(attempts: Sequence[Attempt], start: float, host: str = "") -> Attempt | None:
    """The first successful attempt sent at or after ``start`` (stored on ``host``, if given)."""
    for a in sorted(attempts, key=lambda a: a.done):
        if a.ok and a.sent >= start and (not host or a.host == host):
            return a
    return None


def max_gap(attempts: Sequence[Attempt], start: float, end: float) -> float:
    """The longest time without a successful write within [start, end]: between two
    successive successes' answers, or from ``start`` / to ``end`` when none came.
    The window's edges count as successes so a window with no success is one gap."""
    marks = [start, *sorted(a.done for a in attempts if a.ok and start <= a.done <= end), end]
    return max(b - a for a, b in itertools.pairwise(marks))


def summary(values: Sequence[float]) -> str:
    """``median (min-max)`` in seconds, 2 decimals; '—' for no values."""
    if not values:
        return "—"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


def first_success_from(samples: Sequence[tuple[float, bool]], start: float) -> float | None:
    """The first successful probe started at or after ``start`` (``start``: when the
    kill command returned, so the old holder is gone and whoever answers is the new
    one; a failed probe in between is no evidence: a 50 ms connect to a live host can
    fail on a loaded machine)."""
    for t, ok in sorted(samples):
        if t >= start and ok:
            return t
    return None


def count_term_changes(terms: Sequence[int]) -> int:
    """How many times the observed term went up (a failover or switchover each)."""
    return sum(1 for a, b in itertools.pairwise(terms) if b > a)


def floor_config(host: str, src: str, peer: str, priority: int, advert: float) -> str:
    """keepalived.conf of the floor: keepalived alone holding FLOOR_VIP, no track script."""
    return f"""# bench/failover.py: keepalived alone (the floor), not mirrorkit's
global_defs {{
    router_id bench_floor_{host}
    vrrp_version 3
}}
vrrp_instance bench_floor {{
    state BACKUP
    # like mirrorkit's VIP after a failover: a restarted member does not take it back
    nopreempt
    interface eth0
    virtual_router_id {FLOOR_ROUTER_ID}
    priority {priority}
    advert_int {advert:g}
    unicast_src_ip {src}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        {FLOOR_VIP}/24 dev eth0
    }}
}}
"""


# --- the lab ----------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"{datetime.datetime.now(datetime.UTC):%H:%M:%S} {msg}", flush=True)


def mk_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", "mirrorkit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


class Lab:
    def __init__(self, inventory: Path) -> None:
        from mirrorkit.commands.common import load_valid_inventory
        from mirrorkit.lab.spec import load_spec
        from mirrorkit.remote import SshAgents

        self.inventory_path = inventory
        self.inventory = load_valid_inventory(str(inventory))
        self.mirror = self.inventory.mirrors[MIRROR]
        self.spec = load_spec(LAB_INVENTORY)
        self.agents = SshAgents(self.inventory.hosts)
        vip = self.mirror.vip
        assert vip is not None, "the lab inventory's mirror has a VIP"
        self.vip = str(vip.address).split("/")[0]

    def container(self, host: str) -> str:
        return self.spec.host(host).container

    def address(self, host: str) -> str:
        return self.spec.host(host).address

    def podman(self, *args: str, timeout: float = 60,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        from mirrorkit.lab import podman as pm
        return pm.podman(*args, timeout=timeout, check=check)

    def sh(self, host: str, script: str, timeout: float = 60,
           check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.podman("exec", self.container(host), "sh", "-c", script,
                           timeout=timeout, check=check)

    def states(self) -> dict[str, dict[str, object]]:
        from mirrorkit.commands.live import live_view
        hosts = [h for h in (self.mirror.primary, self.mirror.backup, self.mirror.arbiter) if h]
        return live_view(self.agents, self.mirror, hosts).states

    def terms(self) -> dict[str, int]:
        out = {}
        for host, st in self.states().items():
            term = st.get("term")
            if isinstance(term, int):
                out[host] = term
        return out

    def primary(self) -> str | None:
        prim = [h for h, st in self.states().items() if st.get("role") == "primary"]
        return prim[0] if len(prim) == 1 else None

    def wait(self, what: str, cond: Any, deadline: float = 180, every: float = 0.5) -> Any:
        end = time.monotonic() + deadline
        last_err = ""
        while time.monotonic() < end:
            try:
                got = cond()
                if got:
                    return got
            except Exception as exc:  # a member restarting does not answer: ask again
                last_err = f"{type(exc).__name__}: {exc}"
            time.sleep(every)
        raise RuntimeError(f"timed out after {deadline:g} s waiting for {what} {last_err}")

    def is_active_backup(self, host: str) -> bool:
        st = self.states().get(host, {})
        ha = st.get("ha")
        return st.get("role") == "backup" and isinstance(ha, dict) and bool(ha.get("active"))

    def agent_pid(self, host: str) -> int:
        out = self.sh(host, "systemctl show -p MainPID --value mirrorkit-agent").stdout.strip()
        pid = int(out or "0")
        if pid <= 0:
            raise RuntimeError(f"{host}: mirrorkit-agent is not running")
        return pid

    # -- the floor keepalived --
    def floor_start(self, advert: float, hosts: Sequence[str] | None = None) -> None:
        a, b = self.mirror.primary, self.mirror.backup
        assert a and b
        pairs = {a: (b, 150), b: (a, 100)}
        for host in hosts or (a, b):
            peer, prio = pairs[host]
            conf = floor_config(host, self.address(host), self.address(peer), prio, advert)
            self.sh(host, "mkdir -p /run/bench-floor && cat > /run/bench-floor/keepalived.conf "
                          f"<<'EOF'\n{conf}EOF\n"
                          "pkill -F /run/bench-floor/keepalived.pid 2>/dev/null; sleep 0.2; "
                          "keepalived --vrrp -f /run/bench-floor/keepalived.conf "
                          "-p /run/bench-floor/keepalived.pid -r /run/bench-floor/vrrp.pid "
                          "-i bench_floor")

    def floor_stop(self) -> None:
        for host in (self.mirror.primary, self.mirror.backup):
            if host:
                self.sh(host, "test -f /run/bench-floor/keepalived.pid && "
                              "pkill -F /run/bench-floor/keepalived.pid; "
                              f"ip addr del {FLOOR_VIP}/24 dev eth0 2>/dev/null; true",
                        check=False)

    def floor_holder(self) -> str | None:
        for host in (self.mirror.primary, self.mirror.backup):
            assert host
            out = self.sh(host, "ip -4 -o addr show dev eth0", check=False).stdout
            if f" {FLOOR_VIP}/" in out:
                return host
        return None


# --- the client -------------------------------------------------------------------


class Writer(threading.Thread):
    """POST /records on the VIP every ``interval`` s; every attempt kept (bounded)."""

    MAX_ATTEMPTS = 200_000

    def __init__(self, vip: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.vip, self.interval = vip, interval
        self.attempts: list[Attempt] = []
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            n += 1
            sent = time.time()
            ok, host = self._one(n)
            with self.lock:
                if len(self.attempts) < self.MAX_ATTEMPTS:
                    self.attempts.append(Attempt(sent, time.time(), ok, host))
            rest = self.interval - (time.time() - sent)
            if rest > 0:
                self.stop_event.wait(rest)

    def _one(self, n: int) -> tuple[bool, str]:
        body = json.dumps({"bench": n, "at": time.time()}).encode()
        try:
            sock = socket.create_connection((self.vip, APP_PORT), timeout=0.1)
        except OSError:
            return False, ""
        conn = http.client.HTTPConnection(self.vip, APP_PORT)
        try:
            sock.settimeout(3.0)
            conn.sock = sock
            conn.request("POST", "/records", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read(4096)
            if resp.status != 201:
                return False, ""
            answer = json.loads(data)
            return True, str(answer.get("host", ""))
        except (OSError, http.client.HTTPException, ValueError):
            return False, ""
        finally:
            conn.close()

    def snapshot(self) -> list[Attempt]:
        with self.lock:
            return list(self.attempts)

    def last_ok_host(self) -> str:
        with self.lock:
            for a in reversed(self.attempts):
                if a.ok:
                    return a.host
        return ""


class FloorProber(threading.Thread):
    """TCP connect to FLOOR_VIP:22 every 10 ms; times of successful connects (bounded)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, bool]] = []
        self.answered: dict[float, float] = {}
        self.stop_event = threading.Event()
        self.armed_since = 0.0

    def run(self) -> None:
        while not self.stop_event.is_set():
            t = time.time()
            if t >= self.armed_since > 0:
                try:
                    with socket.create_connection((FLOOR_VIP, 22), timeout=0.05):
                        pass
                    ok = True
                except OSError:
                    ok = False
                if len(self.samples) < 500_000:
                    # (probe started, ok): the connect answered some time after t;
                    # the figure is when it answered, kept apart as answered
                    self.samples.append((t, ok))
                    if ok:
                        self.answered[t] = time.time()
            self.stop_event.wait(0.01)

    def first_after(self, t: float) -> float | None:
        """When the first probe started at or after ``t`` was answered."""
        started = first_success_from(list(self.samples), t)
        return None if started is None else self.answered[started]


@contextlib.contextmanager
def writing(lab: Lab, interval: float) -> Iterator[Writer]:
    w = Writer(lab.vip, interval)
    w.start()
    try:
        yield w
    finally:
        w.stop_event.set()
        w.join(10)


# --- phases -----------------------------------------------------------------------


def event_lines(inventory: Path, last: int = 60) -> str:
    proc = mk_cli("events", str(inventory), "--last", str(last), timeout=120)
    return proc.stdout + proc.stderr


def restore(lab: Lab, victim: str, floor_advert: float) -> None:
    """Start the killed host again and wait until it is an active backup. No switch
    back: the next run kills the other host (see the notes: a switchover to a member
    that has just rejoined did not stick under load, so the runs do not depend on one)."""
    log(f"restore: start {victim}, wait for it as active backup")
    proc = mk_cli("lab", "start", victim, str(LAB_INVENTORY), timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"lab start {victim}: {proc.stdout}{proc.stderr}")
    lab.wait(f"{victim} active backup", lambda: lab.is_active_backup(victim), 240, 1.0)
    lab.floor_start(floor_advert, [victim])


ANOMALIES: list[str] = []


def heal_stuck(lab: Lab) -> None:
    """A member left claiming the primary role in a lower term than the live primary
    (seen after a switchover that did not stick): restart its agent, and say so."""
    states = lab.states()
    prims = {h: st.get("term") for h, st in states.items() if st.get("role") == "primary"}
    if len(prims) < 2:
        return
    top = max(prims, key=lambda h: int(prims[h] or 0))  # type: ignore[call-overload]
    for host in prims:
        if host != top:
            msg = (f"{host} stuck as primary of term {prims[host]} while {top} is primary of "
                   f"term {prims[top]}: restarted its agent")
            log(msg)
            ANOMALIES.append(f"{datetime.datetime.now(datetime.UTC):%H:%M:%S} {msg}")
            lab.sh(host, "systemctl restart mirrorkit-agent", timeout=120)
            lab.wait(f"{host} active backup", lambda h=host: lab.is_active_backup(h), 120, 1.0)


def switchover(lab: Lab, to: str, deadline: float = 300) -> float:
    """mirrorkit switchover --to TO, retried while it is refused; its duration."""
    end = time.monotonic() + deadline
    while True:
        t = time.monotonic()
        proc = mk_cli("switchover", str(lab.inventory_path), "--to", to, timeout=180)
        took = time.monotonic() - t
        if proc.returncode == 0:
            try:
                lab.wait(f"{to} primary", lambda: lab.primary() == to, 30)
                time.sleep(2.0)  # and still so a moment later (see the notes: it may not be)
                if lab.primary() == to:
                    return took
            except RuntimeError:
                pass
            msg = (f"switchover to {to} exited 0 but {to} is not the primary 30 s later "
                   f"(terms {lab.terms()})")
            log(msg + "; again")
            ANOMALIES.append(f"{datetime.datetime.now(datetime.UTC):%H:%M:%S} {msg}")
            with contextlib.suppress(Exception):
                heal_stuck(lab)
        if time.monotonic() > end:
            raise RuntimeError(f"switchover to {to} refused: {proc.stdout}{proc.stderr}")
        log(f"switchover to {to} refused, retrying: {(proc.stdout + proc.stderr).strip()[-200:]}")
        if "several members say they are the primary" in proc.stdout + proc.stderr:
            with contextlib.suppress(Exception):
                heal_stuck(lab)
        time.sleep(3)


def failover_runs(lab: Lab, label: str, runs: int, advert: float) -> dict[str, Any]:
    x, y = lab.mirror.primary, lab.mirror.backup
    assert x and y
    a = lab.wait("one primary", lab.primary, 120)
    b = y if a == x else x
    lab.floor_stop()
    lab.floor_start(advert, [a])
    lab.wait(f"floor VIP on {a}", lambda: lab.floor_holder() == a, 30)
    lab.floor_start(advert, [b])
    prober = FloorProber()
    prober.start()
    out: list[dict[str, Any]] = []
    try:
        for i in range(runs):
            a = lab.wait("one primary", lab.primary, 120)
            b = y if a == x else x
            lab.wait(f"{b} active backup", lambda: lab.is_active_backup(b), 120, 1.0)
            lab.wait(f"floor VIP on {a}", lambda: lab.floor_holder() == a, 30)
            term_before = max(lab.terms().values())
            with writing(lab, 0.01) as w:
                lab.wait(f"writes stored on {a}", lambda: w.last_ok_host() == a, 60, 0.2)
                time.sleep(1.0)
                prober.armed_since = time.time()
                time.sleep(0.5)
                log(f"{label} run {i + 1}/{runs}: podman kill {lab.container(a)} (primary)")
                t_kill = time.time()
                lab.podman("kill", lab.container(a))
                kill_took = time.time() - t_kill
                first = lab.wait(f"a write stored on {b}",
                                 lambda: first_ok_after(w.snapshot(), t_kill, b), 60, 0.05)
                time.sleep(0.5)
                attempts = w.snapshot()
            floor_t = prober.first_after(t_kill + kill_took)
            last_before = [x.done for x in attempts if x.ok and x.host == a and x.done <= t_kill]
            run = {
                "killed": a,
                "kill_at": t_kill,
                "kill_command_s": round(kill_took, 3),
                "write_s": round(first.done - t_kill, 3),
                "floor_s": round(floor_t - t_kill, 3) if floor_t else None,
                "last_write_before_kill_s": round(t_kill - max(last_before), 3)
                if last_before else None,
                "failed_attempts": sum(1 for x in attempts if not x.ok and x.sent >= t_kill),
                "term_changes": max(lab.terms().values()) - term_before,
            }
            log(f"{label} run {i + 1}: {run}")
            events = event_lines(lab.inventory_path)
            since = datetime.datetime.fromtimestamp(t_kill - 2).strftime("%Y-%m-%d %H:%M:%S")
            journal = lab.sh(b, f"journalctl -o short-precise --no-pager --since '{since}' "
                                "-u keepalived -u records-app | tail -n 60",
                             check=False).stdout
            events += f"\n--- {b}: keepalived and records-app journal (container clock) ---\n"
            events += journal
            (WORK / f"failover-events-{label}-{i + 1}.txt").write_text(events)
            out.append(run)
            restore(lab, a, advert)
    finally:
        prober.stop_event.set()
        lab.floor_stop()
    return {"runs": out, "advert": advert, "anomalies": list(ANOMALIES)}


def switchover_runs(lab: Lab, label: str, runs: int) -> dict[str, Any]:
    a, b = lab.mirror.primary, lab.mirror.backup
    assert a and b
    out: list[dict[str, Any]] = []
    for i in range(runs):
        cur = lab.wait("one primary", lab.primary, 120)
        to = b if cur == a else a
        lab.wait(f"{to} active backup", lambda: lab.is_active_backup(to), 120, 1.0)
        with writing(lab, 0.01) as w:
            lab.wait(f"writes stored on {cur}", lambda: w.last_ok_host() == cur, 60, 0.2)
            time.sleep(1.0)
            term_before = max(lab.terms().values())
            t0 = time.time()
            log(f"{label} switchover {i + 1}/{runs}: {cur} -> {to}")
            took = switchover(lab, to)
            lab.wait(f"writes stored on {to}",
                     lambda: first_ok_after(w.snapshot(), t0, to), 60, 0.05)
            time.sleep(1.0)
            t1 = time.time()
            attempts = w.snapshot()
        run = {"from": cur, "to": to, "pause_s": round(max_gap(attempts, t0, t1), 3),
               "command_s": round(took, 2),
               "term_changes": max(lab.terms().values()) - term_before,
               "failed_attempts": sum(1 for x in attempts if not x.ok and t0 <= x.sent <= t1)}
        log(f"{label} switchover {i + 1}: {run}")
        out.append(run)
    return {"runs": out, "anomalies": list(ANOMALIES)}


def fault_phase(lab: Lab, kind: str, seconds: float, arbiter_timeout: float) -> dict[str, Any]:
    x, y, arb = lab.mirror.primary, lab.mirror.backup, lab.mirror.arbiter
    assert x and y and arb
    a = lab.wait("one primary", lab.primary, 120)
    b = y if a == x else x
    lab.wait(f"{b} active backup", lambda: lab.is_active_backup(b), 120, 1.0)
    terms: list[int] = []
    primaries: list[str] = []
    injections = 0
    start_terms = lab.terms()
    log(f"fault {kind} for {seconds:g} s (terms {start_terms})")
    with writing(lab, 0.05) as w:
        t0 = time.time()
        end = time.monotonic() + seconds
        next_fault = time.monotonic() + 5
        if kind == "loss":
            proc = mk_cli("lab", "loss", a, b, "10", str(LAB_INVENTORY), timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"lab loss: {proc.stdout}{proc.stderr}")
        try:
            while time.monotonic() < end:
                if kind != "loss" and time.monotonic() >= next_fault:
                    next_fault += 60
                    injections += 1
                    if kind == "pause":
                        pid = lab.agent_pid(a)
                        hold = arbiter_timeout / 2
                        log(f"SIGSTOP agent {pid} on {a} for {hold:g} s")
                        lab.sh(a, f"trap 'kill -CONT {pid}' EXIT; kill -STOP {pid}; "
                                  f"sleep {hold:g}")
                    elif kind == "arbiter":
                        log(f"restart mirrorkit-agent on {arb}")
                        lab.sh(arb, "systemctl restart mirrorkit-agent", timeout=120)
                with contextlib.suppress(Exception):
                    t = lab.terms()
                    if t:
                        terms.append(max(t.values()))
                    primaries.append(lab.primary() or "?")
                time.sleep(1.0)
        finally:
            if kind == "loss":
                mk_cli("lab", "loss", a, b, "0", str(LAB_INVENTORY), timeout=60)
        t1 = time.time()
        attempts = w.snapshot()
    end_terms = lab.wait("terms", lab.terms, 60)
    events = event_lines(lab.inventory_path, 200)
    (WORK / f"faults-events-{kind}.txt").write_text(events)
    term_changes = max(end_terms.values()) - max(start_terms.values())
    ok = [x for x in attempts if x.ok]
    res = {
        "seconds": seconds,
        "injections": injections,
        "term_changes": term_changes,
        "term_ups_seen": count_term_changes(terms),
        "primary_changes_seen": sum(1 for p, q in itertools.pairwise(primaries)
                                    if p != q and "?" not in (p, q)),
        "writes_ok": len(ok),
        "writes_failed": len(attempts) - len(ok),
        "max_write_gap_s": round(max_gap(attempts, t0 + 1, t1), 3),
        "hosts": sorted({x.host for x in ok}),
        "primary_at_start": a,
    }
    log(f"fault {kind}: {res}")
    return res


# --- tuned inventory --------------------------------------------------------------


def write_tuned_inventory() -> Path:
    import yaml
    data = yaml.safe_load(LAB_INVENTORY.read_text())
    all_vars = data["all"]["vars"]
    all_vars["mirrorkit_mirrors"][MIRROR]["timeouts"] = dict(TUNED)
    all_vars["mirrorkit_vip_advert_int"] = TUNED_ADVERT
    WORK.mkdir(parents=True, exist_ok=True)
    text = ("# Written by bench/failover.py: inventories/lab.yml with tuned failover timers\n"
            "# (timeouts heartbeat/qos/arbiter and the VIP's advert interval).\n"
            + yaml.safe_dump(data, sort_keys=False))
    TUNED_INVENTORY.write_text(text)
    return TUNED_INVENTORY


def apply_inventory(path: Path) -> None:
    proc = mk_cli("validate", str(path), timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"validate {path}: {proc.stdout}{proc.stderr}")
    log(f"apply {path.relative_to(ROOT)}")
    proc = mk_cli("apply", str(path), timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"apply {path}: {proc.stdout[-3000:]}{proc.stderr[-2000:]}")


# --- store and render -------------------------------------------------------------


def load_store() -> dict[str, Any]:
    if STORE.exists():
        return dict(json.loads(STORE.read_text()))
    return {}


def save(key: str, value: dict[str, Any], command: str) -> None:
    store = load_store()
    value = dict(value, date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                 load=" ".join(f"{x:.2f}" for x in os.getloadavg()), command=command)
    store[key] = value
    WORK.mkdir(parents=True, exist_ok=True)
    STORE.write_text(json.dumps(store, indent=1))
    render()


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render() -> None:
    store = load_store()
    lines = [BEGIN, "", "## Failover (issue 8)", ""]
    rows = []
    for label, goal in (("defaults", 3.0), ("tuned", 1.0)):
        f = store.get(f"failover-{label}")
        if not f:
            continue
        runs = f["runs"]
        writes = [r["write_s"] for r in runs]
        floors = [r["floor_s"] for r in runs if r["floor_s"] is not None]
        rows.append((label, f, writes, floors, goal))
    if rows:
        lines += ["### Kill the primary container → first write stored by the new primary",
                  "",
                  "Seconds from just before `podman kill` of the live primary's container "
                  "(SIGKILL; node1 and node2 in turn, the killed host restarted as backup "
                  "between runs) to the first `POST /records` on the VIP answered 201 by the "
                  "survivor (client: a new "
                  "connection every 10 ms, 0.1 s connect timeout); beside it, keepalived alone "
                  "(the floor: a second keepalived on node1/node2, VIP 198.18.7.101, same advert "
                  "interval, no track script) on the same kill, to its VIP accepting a TCP "
                  "connection on port 22. Median (min-max) of N runs.",
                  "",
                  "| timers | N | mirrorkit: first write on new primary | keepalived alone (floor) "
                  "| `podman kill` command | goal | date, load avg |",
                  "|---|---|---|---|---|---|---|"]
        for label, f, writes, floors, goal in rows:
            timers = ("defaults (heartbeat 0.25, qos 1, arbiter 2, advert 0.2)" if label ==
                      "defaults" else "tuned (heartbeat 0.1, qos 0.4, arbiter 0.7, advert 0.1)")
            kills = [r["kill_command_s"] for r in f["runs"]]
            lines.append(f"| {timers} | {len(writes)} | {summary(writes)} s | {summary(floors)} s "
                         f"| {summary(kills)} s | ≤ {goal:g} s: {_met(max(writes) <= goal)} "
                         f"| {f['date']}, {f['load']} |")
        lines += ["", "Each run: " + "; ".join(
            f"{label} " + ", ".join(f"{r['write_s']:.2f}/{r['floor_s'] or float('nan'):.2f}"
                                    for r in f["runs"])
            for label, f, *_ in rows) + " (mirrorkit/floor, s).", ""]
    for label in ("defaults", "tuned"):
        s = store.get(f"switchover-{label}")
        if not s:
            continue
        pauses = [r["pause_s"] for r in s["runs"]]
        cmds = [r["command_s"] for r in s["runs"]]
        lines += [f"### Switchover: client-visible write pause ({label} timers)", "",
                  "Longest gap between two successful writes on the VIP (one every 10 ms) "
                  "around `mirrorkit switchover --to HOST`, alternately node1→node2 and back.",
                  "",
                  "| N | write pause | whole `mirrorkit switchover` command | goal "
                  "| date, load avg |",
                  "|---|---|---|---|---|",
                  f"| {len(pauses)} | {summary(pauses)} s | {summary(cmds)} s "
                  f"| ≤ 1 s: {_met(max(pauses) <= 1.0)} | {s['date']}, {s['load']} |", ""]
    fault_rows = []
    for label in ("defaults", "tuned"):
        for kind, what in (("pause", "primary agent SIGSTOPped for arbiter/2 once a minute"),
                           ("loss", "10% packet loss between primary and backup"),
                           ("arbiter", "arbiter agent restarted once a minute")):
            r = store.get(f"faults-{kind}-{label}")
            if r:
                fault_rows.append(
                    f"| {what} | {label} | {r['seconds']:g} s | {r['injections'] or '—'} "
                    f"| {r['term_changes']} | {r['max_write_gap_s']:.2f} s "
                    f"| {r['writes_failed']} of {r['writes_ok'] + r['writes_failed']} "
                    f"| {_met(r['term_changes'] == 0)} | {r['date']}, {r['load']} |")
    if fault_rows:
        lines += ["### False failovers (term changes) under faults", "",
                  "Term of the mirror before and after each phase (and polled every second); "
                  "writes on the VIP every 50 ms throughout.", "",
                  "| fault | timers | duration | injections | term changes | longest write gap "
                  "| failed writes | goal 0 | date, load avg |",
                  "|---|---|---|---|---|---|---|---|---|", *fault_rows, ""]
    anomalies = sorted({a for v in store.values() if isinstance(v, dict)
                        for a in v.get("anomalies", [])})
    if anomalies:
        lines += ["### Anomalies seen during the run", "",
                  *[f"- {a}" for a in anomalies], ""]
    commands = sorted({v["command"] for v in store.values() if isinstance(v, dict)
                       and "command" in v})
    lines += ["Produced by: " + "; ".join(f"`{c}`" for c in commands) + ". Raw figures: "
              "bench/work/failover.json; agents' events of each run: "
              "bench/work/failover-events-*.txt, faults-events-*.txt (bench/work/ is not "
              "committed).", ""]
    if NOTES.exists():
        lines += [NOTES.read_text().rstrip(), ""]
    lines.append(END)
    section = "\n".join(lines) + "\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


# --- main -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--phases", default="failover,switchover,faults,tuned",
                   help="comma list of failover, switchover, faults, tuned (tuned: apply the "
                        "tuned inventory, failover and switchover with it, then apply the lab "
                        "inventory again)")
    p.add_argument("--runs", type=int, default=3, help="failovers and switchovers per timer set")
    p.add_argument("--fault-seconds", type=float, default=300.0,
                   help="duration of each fault phase (default 300)")
    p.add_argument("--faults", default="pause,loss,arbiter")
    p.add_argument("--tuned-faults", action="store_true",
                   help="also run the fault phases with tuned timers")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    if args.render_only:
        render()
        return 0
    if args.runs < 1 or args.fault_seconds <= 0:
        p.error("--runs must be >= 1 and --fault-seconds > 0")
    command = "bench/failover.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    WORK.mkdir(parents=True, exist_ok=True)

    def run_set(label: str, inventory: Path, advert: float, arb_timeout: float,
                faults: bool) -> None:
        lab = Lab(inventory)
        try:
            if "failover" in phases or label == "tuned":
                save(f"failover-{label}", failover_runs(lab, label, args.runs, advert), command)
            if "switchover" in phases or label == "tuned":
                save(f"switchover-{label}", switchover_runs(lab, label, args.runs), command)
            if faults:
                for kind in [k.strip() for k in args.faults.split(",") if k.strip()]:
                    save(f"faults-{kind}-{label}",
                         fault_phase(lab, kind, args.fault_seconds, arb_timeout), command)
        finally:
            lab.agents.close()

    # Order: the timings first (defaults, then tuned), the long fault phases last.
    if "failover" in phases or "switchover" in phases:
        run_set("defaults", LAB_INVENTORY, DEFAULT_ADVERT, 2.0, False)
    if "tuned" in phases:
        apply_inventory(write_tuned_inventory())
        try:
            run_set("tuned", TUNED_INVENTORY, TUNED_ADVERT, TUNED["arbiter"], args.tuned_faults)
        finally:
            apply_inventory(LAB_INVENTORY)
    if "faults" in phases:
        phases = [x for x in phases if x not in ("failover", "switchover")]
        run_set("defaults", LAB_INVENTORY, DEFAULT_ADVERT, 2.0, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
