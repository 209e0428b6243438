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
