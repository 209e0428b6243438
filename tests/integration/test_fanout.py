"""Fan-out (one mirror, 8 async members) and fan-in (one async agent in 3
mirrors, each with its own CA, port and replica directory) on loopback."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_loopback import (
    Cluster,
    Node,
    cluster_factory,  # noqa: F401 - fixture
    differences,
    free_port,
    wait_for,
)

from mirrorkit.pki import ensure_mirror_pki, member_files

pytestmark = pytest.mark.integration

FANOUT = [f"a{i}" for i in range(1, 9)]
LAG_KEYS = ("lag_bytes", "lag_records", "lag_seconds")


def test_one_primary_eight_async_members(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    members: dict[str, tuple[str, str | None]] = {"node1": ("primary", None)}
    members.update({n: ("async", "dr" if i % 2 else "reporting")
                    for i, n in enumerate(FANOUT)})
    c = cluster_factory(members)
    root = c.nodes["node1"].root
    (root / "before").write_text("present before anyone starts")
    for name in c.nodes:
        c.start(name)
    for i in range(20):
        (root / f"f{i}").write_bytes(os.urandom(2000))
    (root / "sub").mkdir()
    os.symlink("../f1", root / "sub" / "link")

    def all_converged() -> bool:
        return all(c.converged("node1", n) for n in FANOUT)

    try:
        wait_for(all_converged, "all 8 async members converge", timeout=120)
    except BaseException:
        for n in FANOUT:
            print(n, differences(root, c.nodes[n].root)[:5])
        print(c.dump_logs())
        raise

    def caught_up() -> dict[str, Any] | None:
        p = c.mirror("node1")
        ok = all(p["peers"][n]["connected"] and p["peers"][n]["acked_lsn"] == p["lsn"]
                 for n in FANOUT)
        return p if ok else None

    primary = wait_for(caught_up, "every member acknowledged everything")
    assert primary is not None
    assert set(FANOUT) <= set(primary["peers"])
    for n in FANOUT:  # each member's lag, in all three units, on the primary
        peer = primary["peers"][n]
        assert {k: peer[k] for k in LAG_KEYS} == {"lag_bytes": 0, "lag_records": 0,
                                                   "lag_seconds": 0.0}
    samples = c.metrics("node1")
    for key in LAG_KEYS:
        for n in FANOUT:
            labels = frozenset({("mirror", "records"), ("member", n)})
            assert samples[(f"mirrorkit_{key}", labels)] == 0, (key, n)
    # lag is real, not a constant: stop one member, write, its lag grows
    assert c.stop("a3") == 0
    (root / "while-a3-is-down").write_bytes(os.urandom(50_000))

    def a3_behind() -> dict[str, Any] | None:
        peer = c.mirror("node1")["peers"]["a3"]
        return peer if peer["lag_records"] > 0 and peer["lag_bytes"] > 0 else None

    behind = wait_for(a3_behind, "a3's lag shows on the primary")
    assert behind is not None
    assert behind["lag_seconds"] >= 0
    assert (c.metric("node1", "mirrorkit_lag_records", mirror="records", member="a3")
            or 0) >= 1
    c.start("a3")
    wait_for(lambda: c.converged("node1", "a3"), "a3 catches up")


# -- fan-in: one async host in three mirrors -----------------------------------

FANIN = ("alpha", "beta", "gamma")


def make_fanin(base: Path) -> Cluster:
    """p-alpha, p-beta, p-gamma: one primary agent per mirror; dr1: one agent
    subscribed to all three, each mirror with its own CA, port and target."""
    pki = base / "pki"
    c = Cluster(base, pki)
    ports = {(m, h): free_port() for m in FANIN for h in (f"p-{m}", "dr1")}
    dr_mirrors: dict[str, Any] = {}
    for m in FANIN:
        primary = f"p-{m}"
        ensure_mirror_pki(pki, m, {primary: ("127.0.0.1", "failover"),
                                   "dr1": ("127.0.0.1", "async")})
        data = base / primary / "data"
        data.mkdir(parents=True)
        members = {primary: {"address": "127.0.0.1", "role": "primary",
                             "port": ports[m, primary]},
                   "dr1": {"address": "127.0.0.1", "role": "async", "kind": "dr",
                           "port": ports[m, "dr1"]}}

        spec = {"pki": pki, "mirror": m, "port": ports, "data": data, "members": members}
        add_node(c, primary, "primary", data, {m: mirror_cfg(spec, primary, "primary", data)})
        dr_mirrors[m] = mirror_cfg(spec, "dr1", "async", base / "dr1" / "replicas" / m)
    add_node(c, "dr1", "async", base / "dr1" / "replicas", dr_mirrors)
    return c


def mirror_cfg(spec: dict[str, Any], host: str, role: str, target: Path) -> dict[str, Any]:
    m = spec["mirror"]
    ca, crt, key = member_files(spec["pki"], m, host)
    return {"role": role, "kind": "dr" if role == "async" else None,
            "mode": "async", "port": spec["port"][m, host], "listen": "127.0.0.1",
            "paths": [str(spec["data"])], "exclude": [], "targets": [str(target)],
            "timeouts": {"heartbeat": 0.2, "qos": 2.0, "arbiter": 3.0},
            "tls": {"ca": str(ca), "cert": str(crt), "key": str(key)},
            "members": spec["members"], "hooks": {}}


def add_node(c: Cluster, name: str, role: str, root: Path, mirrors: dict[str, Any]) -> None:
    home = c.base / name
    home.mkdir(parents=True, exist_ok=True)
    api_port = free_port()
    cfg = {"host": name, "api": {"listen": "127.0.0.1", "port": api_port},
           "control_socket": str(home / "run" / "control.sock"),
           "state_dir": str(home / "state"), "mirrors": mirrors}
    (home / "agent.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    c.nodes[name] = Node(name, role, home / "agent.yml", home / "state", root, api_port,
                         0, home / "agent.log")


@pytest.fixture
def fanin(tmp_path: Path) -> Iterator[Cluster]:
    c = make_fanin(tmp_path)
    yield c
    c.stop_all()


def test_one_async_agent_in_three_mirrors(fanin: Cluster) -> None:
    c = fanin
    for name in c.nodes:
        c.start(name)
    replicas = c.nodes["dr1"].root
    for m in FANIN:
        data = c.nodes[f"p-{m}"].root
        (data / "common-name").write_text(f"this is {m}")
        (data / m).mkdir()
        (data / m / "only-here").write_bytes(os.urandom(3000))

    def converged() -> bool:
        return all(not differences(c.nodes[f"p-{m}"].root, replicas / m) for m in FANIN)

    try:
        wait_for(converged, "three mirrors converge into their own directories", timeout=90)
    except BaseException:
        print(c.dump_logs())
        raise
    for m in FANIN:
        assert (replicas / m / "common-name").read_text() == f"this is {m}"
        assert sorted(os.listdir(replicas / m)) == sorted(["common-name", m])
    status = c.status("dr1")
    assert status is not None and set(status["mirrors"]) == set(FANIN)
    assert all(s["alive"] and s["connected"] for s in status["mirrors"].values())
    # independent: one primary down does not hold the other two back
    assert c.stop("p-beta") == 0
    for m in ("alpha", "gamma"):
        (c.nodes[f"p-{m}"].root / "later").write_text(m)
    wait_for(lambda: all((replicas / m / "later").exists() for m in ("alpha", "gamma")),
             "alpha and gamma keep streaming while beta's primary is down")
    assert not (replicas / "beta" / "later").exists()
    wait_for(lambda: not c.status("dr1")["mirrors"]["beta"]["connected"],  # type: ignore[index]
             "dr1 sees beta's primary gone")
    assert c.status("dr1")["mirrors"]["alpha"]["connected"]  # type: ignore[index]
