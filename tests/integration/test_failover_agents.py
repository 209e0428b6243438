"""Automatic failover, fencing, switchover and maintenance mode between real
agent processes on loopback (real TLS, real files), with the default
timings (heartbeat 0.25 s, qos 1 s, arbiter 2 s); ``four`` (conftest.py) is
the cluster of four_cluster.py, fresh for each test.

Each test states what the rules promise (docs/architecture.md, "Failover
as implemented"); deadlines are generous (the machine is shared), the
order of events is what is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from four_cluster import (  # type: ignore[import-not-found]
    DEFAULT_TIMEOUTS,
    failed,
    hooks_log,
    print_logs,
    route_through_proxy,
    start_four,
    stop_four,
)
from test_loopback import MIRROR, Cluster, make_cluster, wait_for

from mirrorkit.agent.cli.control_client import post
from mirrorkit.agent.config import TlsConfig
from mirrorkit.agent.transport.conn import client_context
from mirrorkit.pki import member_files

pytestmark = pytest.mark.integration

def events(c: Cluster, name: str) -> list[dict[str, Any]]:
    code, body = c.get(name, f"/events?mirror={MIRROR}&limit=1000")
    return list(body.get("events", [])) if code == 200 else []


def kinds(c: Cluster, name: str, kind: str) -> list[str]:
    return [e["message"] for e in events(c, name) if e["kind"] == kind]


def hooks_run(c: Cluster) -> list[str]:
    path = hooks_log(c)
    return path.read_text().splitlines() if path.exists() else []


def control(c: Cluster, name: str, target: str) -> tuple[int, dict[str, Any]]:
    return post(c.nodes[name].control_socket, target)


def write_and_replicate(c: Cluster, primary: str, rel: str, text: str,
                        *replicas: str) -> None:
    (c.nodes[primary].root / rel).write_text(text)
    for r in replicas:
        wait_for(lambda r=r: (c.nodes[r].root / rel).exists()  # type: ignore[misc]
                 and (c.nodes[r].root / rel).read_text() == text, f"{rel} on {r}")


def primary_of(c: Cluster, name: str) -> Callable[[], bool]:
    return lambda: c.code(name, f"/primary?mirror={MIRROR}") == 200


def test_killed_primary_fails_over_to_the_backup_and_rejoins_as_backup(four: Cluster) -> None:
    c = four
    write_and_replicate(c, "node1", "before.txt", "acknowledged and replicated\n",
                        "node2", "dr1")
    killed = time.monotonic()
    c.stop("node1", sig=signal.SIGKILL)
    wait_for(primary_of(c, "node2"), "node2 promoted", timeout=60)
    took = time.monotonic() - killed
    m = c.mirror("node2")
    assert m["role"] == "primary" and m["term"] == 2, m
    promote = kinds(c, "node2", "promote")
    assert promote and "arbiter arb1 has not heard it" in promote[-1], promote
    # the rules waited for the arbiter: never before the arbiter timeout
    assert took >= DEFAULT_TIMEOUTS["arbiter"]
    wait_for(lambda: "node2 on_promote primary 2" in hooks_run(c), "on_promote ran on node2")
    assert (c.nodes["node2"].root / "before.txt").exists()
    # dr1 follows the new primary; new writes reach it
    write_and_replicate(c, "node2", "after.txt", "written on node2\n", "dr1")
    assert c.mirror("dr1")["term"] == 2
    # the old primary comes back: it learns term 2 and rejoins as backup
    c.start("node1")
    wait_for(lambda: c.mirror("node1").get("role") == "backup"
             and c.mirror("node1").get("connected"), "node1 rejoined as backup")
    assert c.code("node1", f"/primary?mirror={MIRROR}") == 503
    write_and_replicate(c, "node2", "later.txt", "after the rejoin\n", "node1")
    assert any(line.startswith("node1 on_demote") for line in hooks_run(c))


def test_paused_primary_is_fenced_and_steps_down(four: Cluster) -> None:
    c = four
    node1 = c.nodes["node1"]
    assert node1.proc is not None
    os.kill(node1.proc.pid, signal.SIGSTOP)  # a VM pause, a GC stall...
    wait_for(primary_of(c, "node2"), "node2 promoted while node1 is paused", timeout=60)
    os.kill(node1.proc.pid, signal.SIGCONT)
    # Resumed: its lease ran out while it was stopped, so it must never again
    # answer as writable primary; it learns term 2 and becomes backup.
    seen_writable = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if c.code("node1", f"/primary?mirror={MIRROR}") == 200:
            seen_writable = True
        m = c.mirror("node1")
        if m.get("role") == "backup" and m.get("term") == 2:
            break
        time.sleep(0.05)
    assert not seen_writable, "the resumed former primary answered as writable primary"
    assert c.mirror("node1")["role"] == "backup"
    primary_file = node1.control_socket.parent / f"{MIRROR}.primary"
    assert primary_file.read_text().split()[1] == "0"  # keepalived: not primary


def test_arbiter_that_still_sees_the_primary_prevents_failover(four: Cluster) -> None:
    c = four
    node2 = c.nodes["node2"]
    assert node2.proc is not None
    # The backup alone stalls: to the primary it is lost, but the arbiter
    # still hears the primary, so the primary keeps its lease and nothing
    # fails over.
    os.kill(node2.proc.pid, signal.SIGSTOP)
    time.sleep(3 * DEFAULT_TIMEOUTS["arbiter"])
    assert c.code("node1", f"/primary?mirror={MIRROR}") == 200
    os.kill(node2.proc.pid, signal.SIGCONT)
    wait_for(lambda: c.mirror("node2").get("connected"), "node2 reconnected")
    assert c.mirror("node2")["role"] == "backup" and c.mirror("node1")["term"] == 1
    assert not kinds(c, "node2", "promote")


def test_primary_that_loses_backup_and_arbiter_fences_itself(four: Cluster) -> None:
    c = four
    for name in ("node2", "arb1"):
        proc = c.nodes[name].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)
    wait_for(lambda: c.code("node1", f"/primary?mirror={MIRROR}") == 503, "node1 fenced",
             timeout=30)
    m = c.mirror("node1")
    assert m["role"] == "primary" and m["fenced"] is True
    assert m["ha"]["decision"] == "fenced", m["ha"]
    wait_for(lambda: any("node1 on_demote primary" in x for x in hooks_run(c)),
             "on_demote ran on the fenced primary")
    for name in ("node2", "arb1"):
        proc = c.nodes[name].proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGCONT)
    # Nobody promoted meanwhile (node2 was stopped too): node1 resumes.
    wait_for(primary_of(c, "node1"), "node1 writable again")
    assert c.mirror("node1")["term"] == 1
    wait_for(lambda: hooks_run(c).count("node1 on_promote primary 1") >= 2,
             "on_promote ran again on resuming")


def test_maintenance_mode_prevents_failover_and_says_so(four: Cluster) -> None:
    c = four
    for name in ("node1", "node2"):
        code, body = control(c, name, f"/maintenance?mirror={MIRROR}&on=1")
        assert code == 200 and body["maintenance"] is True, body
    assert c.mirror("node2")["maintenance"] is True
    c.stop("node1", sig=signal.SIGKILL)
    wait_for(lambda: c.mirror("node2").get("ha", {}).get("decision") == "maintenance",
             "node2 decides not to fail over: maintenance")
    time.sleep(2 * DEFAULT_TIMEOUTS["arbiter"])
    assert c.mirror("node2")["role"] == "backup"
    assert any("maintenance mode is on" in m for m in kinds(c, "node2", "decision"))
    code, body = control(c, "node2", f"/maintenance?mirror={MIRROR}&on=0")
    assert code == 200 and body["changed"] is True
    wait_for(primary_of(c, "node2"), "node2 promoted once maintenance is off")


def test_switchover_and_back_loses_nothing(four: Cluster) -> None:
    c = four
    write_and_replicate(c, "node1", "one.txt", "term 1\n", "node2")
    code, body = control(c, "node1", f"/switchover?mirror={MIRROR}&to=node2")
    assert code == 200, body
    assert body["result"] == "done" and body["term"] == 2 and body["primary"] == "node2"
    # node2 answered the HANDOVER as primary of term 2 before node1 let go of
    # the connection (a close under an unread HANDOVER lost it, now and then)
    assert body["handover"] == "accepted", body
    wait_for(primary_of(c, "node2"), "node2 primary after the switchover")
    wait_for(lambda: c.mirror("node1").get("role") == "backup"
             and c.mirror("node1").get("connected"), "node1 follows node2")
    write_and_replicate(c, "node2", "two.txt", "term 2\n", "node1", "dr1")
    code, body = control(c, "node2", f"/switchover?mirror={MIRROR}")
    assert code == 200 and body["term"] == 3 and body["handover"] == "accepted", body
    wait_for(primary_of(c, "node1"), "node1 primary again")
    write_and_replicate(c, "node1", "three.txt", "term 3\n", "node2", "dr1")
    for name in ("node1", "node2"):
        assert not (c.nodes[name].state_dir / MIRROR / "quarantine").exists()
    # a switchover on a backup, or to a member that is not the backup, is refused
    code, body = control(c, "node2", f"/switchover?mirror={MIRROR}")
    assert code == 409 and "not the primary" in body["error"]
    code, body = control(c, "node1", f"/switchover?mirror={MIRROR}&to=arb1")
    assert code == 409 and "not a member this primary can hand over to" in body["error"]


def test_scheduled_switchover_runs_at_its_time_and_can_be_cancelled(four: Cluster) -> None:
    c = four
    code, body = control(c, "node1", f"/switchover?mirror={MIRROR}&at={time.time() + 3600}")
    assert code == 200 and body["result"] == "scheduled"
    assert c.mirror("node1")["ha"]["scheduled_switchover"]["at"] == body["at"]
    code, body = control(c, "node1", f"/switchover?mirror={MIRROR}&cancel=1")
    assert code == 200 and body["result"] == "cancelled"
    assert c.mirror("node1")["ha"]["scheduled_switchover"] is None
    at = time.time() + 2
    code, body = control(c, "node1", f"/switchover?mirror={MIRROR}&at={at}")
    assert code == 200
    wait_for(primary_of(c, "node2"), "the scheduled switchover happened")
    assert not (c.nodes["node1"].state_dir / MIRROR / "switchover.json").exists()


def test_forced_promotion_of_a_backup_that_lost_everything(four: Cluster) -> None:
    c = four
    for name in ("node1", "arb1"):
        c.stop(name, sig=signal.SIGKILL)
    wait_for(lambda: c.mirror("node2").get("ha", {}).get("decision") == "lost-both",
             "node2: lost both, no automatic failover")
    code, body = control(c, "node2", f"/promote?mirror={MIRROR}")
    assert code == 409 and "--force" in body["error"], body
    code, body = control(c, "node2", f"/promote?mirror={MIRROR}&force=1")
    assert code == 200 and body["term"] == 2, body
    assert any("forced promotion" in m for m in kinds(c, "node2", "promote"))
    # nobody is left to renew its lease: the forced primary is writable anyway
    wait_for(primary_of(c, "node2"), "the forced primary writable with no peer")
    assert (c.nodes["node2"].state_dir / MIRROR / "lease-waived.json").exists()
    c.start("arb1")  # a peer answers: the waiver ends, the lease applies again
    wait_for(lambda: not (c.nodes["node2"].state_dir / MIRROR / "lease-waived.json").exists(),
             "waiver removed once the arbiter answered")
    assert c.code("node2", f"/primary?mirror={MIRROR}") == 200


def test_events_survive_a_restart(four: Cluster) -> None:
    c = four
    before = events(c, "node1")
    assert before and all({"seq", "time", "kind", "message"} <= e.keys() for e in before)
    c.stop("node1")
    c.start("node1")
    # (a restart longer than the arbiter timeout is a failover: node1 may be
    # back as primary or as backup; its history is what is checked)
    wait_for(lambda: len(events(c, "node1")) > len(before), "node1 back, recording")
    after = events(c, "node1")
    assert [e["seq"] for e in after[:len(before)]] == [e["seq"] for e in before]
    assert after[-1]["seq"] > before[-1]["seq"]
    code, body = c.get("node1", f"/events?mirror={MIRROR}&since={before[-1]['seq']}")
    assert code == 200 and all(e["seq"] > before[-1]["seq"] for e in body["events"])
    assert c.get("node1", "/events?limit=x")[0] == 400
    raw = (c.nodes["node1"].state_dir / MIRROR / "events.jsonl").read_text().splitlines()
    assert json.loads(raw[-1])["seq"] == body["last_seq"]


def test_planned_dr_promotion_then_restore_loses_nothing(four: Cluster) -> None:
    c = four
    write_and_replicate(c, "node1", "site-a.txt", "before the move\n", "dr1", "node2")
    code, body = control(c, "dr1", f"/promote?mirror={MIRROR}")
    assert code == 409 and "switchover from the primary" in body["error"], body
    # planned: the primary drains and hands over to the DR copy
    code, body = control(c, "node1", f"/switchover?mirror={MIRROR}&to=dr1")
    assert code == 200 and body["primary"] == "dr1", body
    wait_for(primary_of(c, "dr1"), "dr1 primary")
    wait_for(lambda: all(c.mirror(n).get("connected") and c.mirror(n).get("term") == 2
                         for n in ("node1", "node2")), "both failover members follow dr1")
    assert c.mirror("node1")["role"] == "backup"
    write_and_replicate(c, "dr1", "site-b.txt", "written at the DR site\n", "node1", "node2")
    assert any("dr1 on_promote primary 2" in x for x in hooks_run(c))
    # restoration: back to the original primary, no loss
    code, body = control(c, "dr1", f"/switchover?mirror={MIRROR}&to=node1")
    assert code == 200 and body["term"] == 3, body
    wait_for(primary_of(c, "node1"), "node1 primary again")
    wait_for(lambda: c.mirror("dr1").get("role") == "async"
             and c.mirror("dr1").get("connected"), "dr1 an async copy again")
    write_and_replicate(c, "node1", "home.txt", "home again\n", "dr1", "node2")
    for name in c.nodes:
        if name != "arb1":
            assert not (c.nodes[name].state_dir / MIRROR / "quarantine").exists()


def test_forced_dr_promotion_reports_the_gap(four: Cluster) -> None:
    c = four
    write_and_replicate(c, "node1", "a.txt", "x\n", "dr1")
    for name in ("node1", "node2"):
        c.stop(name, sig=signal.SIGKILL)  # the whole primary site is gone
    code, body = control(c, "dr1", f"/promote?mirror={MIRROR}&force=1")
    assert code == 200 and body["term"] == 2, body
    assert body["gap_lsns"] == 0 and body["gap_bytes"] == 0, body
    wait_for(primary_of(c, "dr1"), "dr1 primary (forced)")
    assert any("forced DR promotion" in m for m in kinds(c, "dr1", "promote"))
    # promoting the primary again is refused, not a new term
    code, body = control(c, "dr1", f"/promote?mirror={MIRROR}&force=1")
    assert code == 409 and "not a backup or DR copy" in body["error"], body


def test_a_primary_mid_upgrade_is_not_taken_for_dead(four: Cluster) -> None:
    """Rolling upgrade: the primary still runs a mirrorkit that speaks
    another protocol version. The arbiter (upgraded first) and the backup
    cannot talk with it, but it is alive and writable: that must not look
    like silence, or the backup would promote beside a live primary."""
    c = four
    node1 = c.nodes["node1"]
    assert node1.proc is not None
    ca, crt, key = member_files(c.pki, MIRROR, "node1")
    ctx = client_context(TlsConfig(ca, crt, key))
    old_hello = json.dumps({"mirror": MIRROR, "member": "node1", "role": "primary",
                            "term": 1, "last_lsn": 0}).encode()
    frame = struct.pack(">2sBBI", b"MK", 2, 1, len(old_hello)) + old_hello  # version 2
    # node1's agent stops talking (as if replaced by an old version)...
    os.kill(node1.proc.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 4 * DEFAULT_TIMEOUTS["arbiter"]
    while time.monotonic() < deadline:
        # ...while "node1, old version" keeps knocking at the arbiter
        arbiter = ("127.0.0.1", c.nodes["arb1"].port)
        with socket.create_connection(arbiter, timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(frame)
            with contextlib.suppress(OSError, ssl.SSLError):
                tls.recv(4096)
        time.sleep(0.3)
    assert c.mirror("node2")["role"] == "backup", c.mirror("node2")
    assert not kinds(c, "node2", "promote")
    assert any("speaks protocol version 2" in line for line in c.nodes["arb1"].log_text()
               .splitlines())


@pytest.fixture
def cut(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Cluster, Any, Any]]:
    """The four members with two links through a proxy that can be cut:
    node2 -> node1 (replication) and node1 -> arb1 (the primary's arbiter link)."""
    proxies: list[Any] = []

    def route(c: Cluster) -> None:
        proxies.append(route_through_proxy(c, "node2", "node1"))
        proxies.append(route_through_proxy(c, "node1", "arb1"))

    try:
        c = start_four(tmp_path, route)
        try:
            yield c, proxies[0], proxies[1]
        finally:
            if failed(request):
                print_logs(c)
            stop_four(c)
    finally:
        for proxy in proxies:
            proxy.close()


def watch_primaries(c: Cluster, seconds: float) -> list[tuple[float, set[str]]]:
    """Sample who answers /primary 200, every 50 ms, for ``seconds``."""
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append((time.monotonic(), {n for n in ("node1", "node2")
                                           if c.code(n, f"/primary?mirror={MIRROR}") == 200}))
        time.sleep(0.05)
    return samples


def test_backup_cut_from_the_primary_while_the_arbiter_sees_it(
        cut: tuple[Cluster, Any, Any]) -> None:
    c, b_to_p, _ = cut
    b_to_p.partition()
    samples = watch_primaries(c, 3 * DEFAULT_TIMEOUTS["arbiter"])
    assert all(s == {"node1"} for _, s in samples), [s for _, s in samples if s != {"node1"}]
    m = c.mirror("node2")
    assert m["role"] == "backup" and m["ha"]["decision"] == "arbiter-sees-primary", m["ha"]
    assert m["ha"]["active"] is False
    assert not kinds(c, "node2", "promote")
    b_to_p.heal()
    wait_for(lambda: c.mirror("node2").get("connected"), "node2 reconnected after the heal")
    assert c.mirror("node1")["term"] == 1


def test_primary_cut_from_both_is_fenced_before_the_backup_takes_over(
        cut: tuple[Cluster, Any, Any]) -> None:
    c, b_to_p, p_to_a = cut
    write_and_replicate(c, "node1", "kept.txt", "replicated before the cut\n", "node2")
    b_to_p.partition()
    p_to_a.partition()
    samples = watch_primaries(c, 4 * DEFAULT_TIMEOUTS["arbiter"])
    both = [t for t, s in samples if len(s) > 1]
    assert not both, "two members answered /primary 200 in the same sample"
    seen = [s for _, s in samples]
    assert {"node2"} in seen, "node2 never became the primary"
    # node1 stopped answering as primary before node2 started
    last_node1 = max((t for t, s in samples if "node1" in s), default=0.0)
    first_node2 = min(t for t, s in samples if "node2" in s)
    assert last_node1 < first_node2
    assert c.mirror("node1")["ha"]["decision"] == "fenced"
    b_to_p.heal()
    p_to_a.heal()
    wait_for(lambda: c.mirror("node1").get("role") == "backup"
             and c.mirror("node1").get("term") == 2, "node1 rejoins as backup of term 2")
    assert (c.nodes["node2"].root / "kept.txt").exists()


def test_a_failed_on_promote_is_tried_again(tmp_path: Path) -> None:
    # First apply: the agent turns writable before the application's unit
    # exists (its role runs later); on_promote fails, then works.
    marker, ran = tmp_path / "unit-installed", tmp_path / "promoted"
    hook = f"test -e {marker} || {{ touch {marker}; exit 1; }}; touch {ran}"
    c = make_cluster(tmp_path, {"node1": ("primary", None)},
                     extra={"timeouts": DEFAULT_TIMEOUTS, "hooks": {"on_promote": hook}})
    c.start("node1")
    try:
        wait_for(lambda: ran.exists(), "on_promote succeeded on its second run", timeout=60)
        hooks = [e for e in events(c, "node1") if e["kind"] == "hook"]
        assert [e["exit_status"] for e in hooks][:2] == [1, 0], hooks
    finally:
        c.stop_all()


def test_every_member_says_what_it_is_in_status(four: Cluster) -> None:
    # Seen on the lab: the arbiter and the DR copy showed "not-running" (the
    # first cycle's "mirror not running: starting") while running fine.
    c = four
    expected = {"node1": "primary", "node2": "following", "arb1": "arbiter",
                "dr1": "async-copy"}
    wait_for(lambda: {n: c.mirror(n)["ha"]["decision"] for n in expected} == expected,
             "each member's HA decision names what it is")
    assert "witnesses" in c.mirror("arb1")["ha"]["reason"]
