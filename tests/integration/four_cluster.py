"""The four-member loopback cluster that test_failover_agents.py and
test_ops_playbooks.py both run against: node1 primary, node2 backup, arb1
arbiter, dr1 async DR copy, with the default failover timings (heartbeat
0.25 s, qos 1 s, arbiter 2 s). Its hooks append
``"$MIRRORKIT_HOST <hook> $MIRRORKIT_ROLE $MIRRORKIT_TERM"`` to
``<cluster base>/hooks.log``, so a test can see which hook ran where.

A helper module (like netproxy.py), not conftest.py: test modules import
its names, and ``import conftest`` is ambiguous with two conftest.py files.
The fixture ``four`` (conftest.py) is the usual way to get one.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_loopback import MIRROR, Cluster, make_cluster, wait_for  # type: ignore[import-not-found]

DEFAULT_TIMEOUTS = {"heartbeat": 0.25, "qos": 1.0, "arbiter": 2.0}
FOUR = {"node1": ("primary", None), "node2": ("backup", None), "arb1": ("arbiter", None),
        "dr1": ("async", "dr")}
START_ORDER = ("arb1", "node2", "dr1", "node1")  # the primary last: it finds its peers up


def hooks_log(c: Cluster) -> Path:
    return c.base / "hooks.log"


def start_four(base: Path, before_start: Callable[[Cluster], None] | None = None) -> Cluster:
    """The four members under ``base``, started: node1 the writable primary,
    node2 and dr1 connected to it. ``before_start`` may rewrite their configs
    first (:func:`route_through_proxy`)."""
    log = base / "hooks.log"
    hooks = {h: f"echo \"$MIRRORKIT_HOST {h} $MIRRORKIT_ROLE $MIRRORKIT_TERM\" >> {log}"
             for h in ("on_promote", "on_demote", "on_role_change")}
    c = make_cluster(base, FOUR, extra={"timeouts": DEFAULT_TIMEOUTS, "hooks": hooks})
    try:
        if before_start is not None:
            before_start(c)
        for name in START_ORDER:
            c.start(name)
        wait_for(lambda: c.code("node1", f"/primary?mirror={MIRROR}") == 200,
                 "node1 the writable primary")
        wait_for(lambda: c.mirror("node2").get("connected") and c.mirror("dr1").get("connected"),
                 "node2 and dr1 connected")
    except BaseException:
        print_logs(c)
        stop_four(c)
        raise
    return c


def route_through_proxy(c: Cluster, name: str, member: str) -> Any:
    """``name``'s connections to ``member`` go through a netproxy.Proxy (one a
    test can cut) from now on: call before ``name`` starts."""
    from netproxy import Proxy  # type: ignore[import-not-found]

    proxy = Proxy(c.nodes[member].port)
    cfg = yaml.safe_load(c.nodes[name].config.read_text())
    cfg["mirrors"][MIRROR]["members"][member]["port"] = proxy.port
    c.nodes[name].config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return proxy


def stop_four(c: Cluster) -> None:
    for node in c.nodes.values():  # a paused agent cannot stop
        if node.proc is not None:
            os.kill(node.proc.pid, signal.SIGCONT)
    c.stop_all()


def print_logs(c: Cluster) -> None:
    print(c.dump_logs())
    log = hooks_log(c)
    print("hooks:", log.read_text() if log.exists() else "-")


def failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test that requested the fixture failed (its call phase;
    conftest.py's makereport hook records it)."""
    rep = getattr(request.node, "rep_call", None)
    return rep is not None and bool(rep.failed)
