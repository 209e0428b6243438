"""Health that tells the truth, between real agents on loopback: a failed
capture makes the primary unhealthy until it works again, a resyncing peer
is shown resyncing, a disconnected member's lag is its distance from the
primary, and a record a member cannot apply is never acknowledged.

Every wait is a poll with a generous deadline; nothing asserts speed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_loopback import (  # type: ignore[import-not-found]
    MIRROR,
    Cluster,
    cluster_factory,
    differences,
    wait_for,
)

pytestmark = pytest.mark.integration
__all__ = ["cluster_factory"]  # the fixture, re-exported for this module


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirrorkit.agent.cli.main", *args],
                          capture_output=True, text=True, timeout=60)


def probe_primary(c: Cluster, node: str) -> int:
    """keepalived's check: the agent's primary file, which lags the API by
    at most one write interval."""
    def settled() -> int | None:
        code = agent_cli("--config", str(c.nodes[node].config), "probe", "primary",
                         "--mirror", MIRROR).returncode
        api = 0 if c.code(node, f"/primary?mirror={MIRROR}") == 200 else 1
        return code + 1 if code == api else None  # +1: 0 is falsy

    return int(wait_for(settled, "the probe to agree with /primary", timeout=30)) - 1


def caught_up(c: Cluster, receiver: str) -> bool:
    p = c.mirror("node1")
    peer = p.get("peers", {}).get(receiver, {})
    return bool(peer.get("connected") and peer.get("acked_lsn") == p.get("lsn")
                and c.mirror(receiver).get("applied_lsn") == p.get("lsn"))


@pytest.fixture
def pair(cluster_factory: Callable[..., Cluster],
         request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """node1 primary, node2 backup, started, first copy done."""
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None)})
    (c.nodes["node1"].root / "first").write_text("first\n")
    for name in c.nodes:
        c.start(name)
    wait_for(lambda: caught_up(c, "node2") and c.converged("node1", "node2"), "first copy")
    yield c
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(c.dump_logs())


def test_failed_capture_makes_the_primary_unhealthy_until_it_works_again(
        pair: Cluster) -> None:
    c = pair
    root = c.nodes["node1"].root
    assert c.code("node1", f"/primary?mirror={MIRROR}") == 200
    assert c.mirror("node1")["capture"]["state"] == "running"
    aside = root.with_name("data.aside")
    os.rename(root, aside)  # the mirrored directory disappears: capture fails
    wait_for(lambda: c.code("node1", f"/primary?mirror={MIRROR}") == 503, "/primary 503")
    assert c.code("node1", "/health") == 503
    assert probe_primary(c, "node1") == 1  # keepalived's check: not a primary
    m = c.mirror("node1")
    assert m["alive"] is False and m["capture"]["state"] in ("failed", "restarting")
    assert "capture" in m["error"] and str(root) in m["error"]
    _, body = c.get("node1", f"/primary?mirror={MIRROR}")
    assert "capture" in body["mirrors"][MIRROR]["reason"]
    shown = agent_cli("status", "--api-port", str(c.nodes["node1"].api_port)).stdout
    assert "ERROR: capture" in shown  # the agent's own status command says why
    # It keeps failing while the directory is missing: never "healthy" between tries.
    wait_for(lambda: c.mirror("node1")["capture"]["restarts"] >= 1, "a restart is tried")
    assert c.code("node1", "/health") == 503
    os.rename(aside, root)
    wait_for(lambda: c.code("node1", f"/primary?mirror={MIRROR}") == 200,
             "/primary 200 once capture works again", timeout=90)
    assert c.code("node1", "/health") == 200 and probe_primary(c, "node1") == 0
    m = c.mirror("node1")
    assert m["capture"]["state"] == "running" and "error" not in m
    (root / "after").write_text("captured again\n")
    wait_for(lambda: c.converged("node1", "node2"), "changes replicate again")
    assert "Traceback" not in c.nodes["node1"].log_text()


def test_a_resyncing_peer_is_shown_resyncing_not_caught_up(
        cluster_factory: Callable[..., Cluster]) -> None:
    # Long timeouts: the agents are paused (SIGSTOP) below to hold the resync
    # in a known phase; nothing may time out meanwhile.
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None)},
                        extra={"timeouts": {"heartbeat": 0.2, "qos": 60.0, "arbiter": 90.0}})
    root = c.nodes["node1"].root
    for i in range(20):
        (root / f"f{i}").write_bytes(os.urandom(50_000))
    for name in c.nodes:
        c.start(name)
    wait_for(lambda: caught_up(c, "node2"), "first copy")
    backup = c.nodes["node2"].proc
    primary = c.nodes["node1"].proc
    assert backup is not None and primary is not None
    try:
        backup.send_signal(signal.SIGSTOP)
        lsn = c.mirror("node1")["lsn"]
        (root / "while-paused").write_bytes(os.urandom(10_000))
        wait_for(lambda: c.mirror("node1")["lsn"] > lsn, "the primary logs a change")
        got = agent_cli("--config", str(c.nodes["node1"].config), "resync", "--mirror",
                        MIRROR, "--member", "node2", "--json")
        assert got.returncode == 0, got.stdout + got.stderr

        def resyncing() -> dict[str, Any] | None:
            peer: dict[str, Any] = c.mirror("node1")["peers"]["node2"]
            return peer if peer["state"] == "resyncing" and peer["resync"]["state"] == \
                "manifest" else None

        peer = wait_for(resyncing, "the primary shows node2 resyncing")
        m = c.mirror("node1")
        # Not caught up: its acknowledged LSN is what it has, the lag is not 0.
        assert peer["acked_lsn"] < m["lsn"] and peer["lag_records"] > 0
        assert peer["lag_seconds"] > 0 and peer["resyncing"] is True
        # Now hold the primary, let the backup start its half of the resync.
        primary.send_signal(signal.SIGSTOP)
        backup.send_signal(signal.SIGCONT)
        wait_for(lambda: c.mirror("node2").get("resyncing") is True, "node2 resyncing")
        status, body = c.get("node2", f"/replica?mirror={MIRROR}")
        assert status == 503 and "resyncing" in body["mirrors"][MIRROR]["reason"]
    finally:
        primary.send_signal(signal.SIGCONT)
        backup.send_signal(signal.SIGCONT)
    wait_for(lambda: c.mirror("node2").get("resyncs") == 1 and caught_up(c, "node2"),
             "the resync ends and node2 catches up")
    assert c.code("node2", f"/replica?mirror={MIRROR}") == 200
    assert c.mirror("node1")["peers"]["node2"]["state"] == "streaming"
    assert differences(root, c.nodes["node2"].root) == []


def test_a_disconnected_members_lag_is_its_distance_from_the_primary(pair: Cluster) -> None:
    c = pair
    root = c.nodes["node1"].root
    assert c.stop("node2") == 0
    acked = c.mirror("node1")["peers"]["node2"]["acked_lsn"]
    for i in range(30):
        (root / f"while-away-{i}").write_text(f"{i}\n")
    wait_for(lambda: c.mirror("node1")["lsn"] >= acked + 30, "the primary logs the changes")
    m = c.mirror("node1")
    peer = m["peers"]["node2"]
    assert peer["state"] == "disconnected" and peer["connected"] is False
    assert peer["acked_lsn"] == acked and peer["lag_records"] == m["lsn"] - acked
    assert peer["lag_bytes"] > 0 and peer["lag_seconds"] > 0
    assert peer["disconnected_since"] is not None
    # The receiver's own view without the primary: it knows it is behind by
    # an unknown amount, and its lag in seconds grows from when it lost it.
    assert c.stop("node1") == 0
    c.start("node2")
    first = wait_for(lambda: c.mirror("node2") or None, "node2 answers")
    assert first["connected"] is False and first["lag_seconds"] > 0
    assert first["primary_lsn"] is None and first["lag_records"] is None
    wait_for(lambda: c.mirror("node2")["lag_seconds"] > first["lag_seconds"] + 0.5,
             "its lag grows while disconnected")
    # Connected again, then the primary lost: the last LSN it heard is kept.
    c.start("node1")
    wait_for(lambda: caught_up(c, "node2"), "node2 catches up")
    lsn = c.mirror("node1")["lsn"]
    assert c.stop("node1") == 0
    gone = wait_for(lambda: (lambda m: m if m.get("connected") is False else None)(
        c.mirror("node2")), "node2 notices the primary is gone")
    assert gone["primary_lsn"] == lsn and gone["lag_records"] == 0
    assert gone["lag_seconds"] > 0  # never 0 while disconnected
