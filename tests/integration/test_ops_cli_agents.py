"""The controller's operations commands against real agents on loopback,
through LocalAgents (the per-host call of mirrorkit/remote.py, without SSH).

The failover routes (/maintenance, /switchover, /promote, /events) are the
agent's; what runs here today is what every operation starts with: finding
the live primary from the agents' own answers, not from the inventory.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from local_agents import LocalAgents  # type: ignore[import-not-found]
from test_loopback import MIRROR, Cluster, cluster_factory, wait_for  # type: ignore[import-not-found]

from mirrorkit.commands.live import live_primary, live_view
from mirrorkit.errors import MirrorkitError
from mirrorkit.inventory.model import build_mirror

pytestmark = pytest.mark.integration
__all__ = ["cluster_factory"]


def test_live_primary_comes_from_the_agents(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None),
                         "arb1": ("arbiter", None)})
    # The inventory says node2 is the primary; the agents were set up the other way.
    mirror = build_mirror(MIRROR, {"paths": ["/srv/x"], "primary": "node2", "backup": "node1",
                                   "arbiter": "arb1"})
    agents = LocalAgents({n: node.config for n, node in c.nodes.items()})
    with pytest.raises(MirrorkitError, match="no member says it is the primary"):
        live_primary(live_view(agents, mirror))  # nothing started yet: no answers
    for name in c.nodes:
        c.start(name)
    wait_for(lambda: c.mirror("node2").get("connected"), "node2 connected")
    assert live_primary(live_view(agents, mirror)) == "node1"
    assert {h for h, a in agents.calls if a == ["status", "--json"]} == {"node1", "node2",
                                                                         "arb1"}


def test_operations_commands_against_real_agents(
        cluster_factory: Callable[..., Cluster]) -> None:
    from mirrorkit.commands.events import Cursor, poll_once
    from mirrorkit.commands.maintenance import report, set_maintenance
    from mirrorkit.commands.switchover import switchover

    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None),
                         "arb1": ("arbiter", None)})
    mirror = build_mirror(MIRROR, {"paths": ["/srv/x"], "primary": "node1", "backup": "node2",
                                   "arbiter": "arb1"})
    agents = LocalAgents({n: node.config for n, node in c.nodes.items()})
    for name in ("arb1", "node2", "node1"):
        c.start(name)
    wait_for(lambda: c.code("node1", f"/primary?mirror={MIRROR}") == 200
             and c.mirror("node2").get("connected"), "node1 primary, node2 connected")
    # maintenance on, on both failover members, and off again
    lines, code = report(mirror, True, set_maintenance(agents, mirror, True))
    assert code == 0, lines
    assert c.mirror("node1")["maintenance"] and c.mirror("node2")["maintenance"]
    lines, code = report(mirror, False, set_maintenance(agents, mirror, False))
    assert code == 0 and not c.mirror("node2")["maintenance"], lines
    # a real switchover to the backup, found from the live roles
    said: list[str] = []
    switchover(agents, mirror, "", None, False, said.append)
    assert any("live primary node1" in s for s in said), said
    wait_for(lambda: c.code("node2", f"/primary?mirror={MIRROR}") == 200
             and c.mirror("node1").get("connected"), "node2 primary, node1 its backup")
    # the next one starts from the new live primary, not the inventory's
    switchover(agents, mirror, "", None, False, said.append)
    assert any("live primary node2" in s for s in said), said
    wait_for(lambda: c.code("node1", f"/primary?mirror={MIRROR}") == 200, "node1 primary")
    # the events of every member, merged: the switchovers and maintenance are there
    cursors = {h: Cursor() for h in ("node1", "node2")}
    poll = poll_once(agents, cursors, MIRROR, {MIRROR})
    assert not poll.problems, poll.problems
    kinds = {e["kind"] for _, e in poll.events}
    assert {"switchover", "maintenance", "role"} <= kinds, kinds
    again = poll_once(agents, cursors, MIRROR, {MIRROR})
    # seq numbers are each host's own: nothing read twice
    assert {(h, e["seq"]) for h, e in again.events}.isdisjoint(
        {(h, e["seq"]) for h, e in poll.events})
