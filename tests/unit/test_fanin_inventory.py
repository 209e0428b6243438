"""Fan-in at the inventory level: one async host in three mirrors validates,
and its agent config gets three mirrors with distinct targets and ports, each
with its own PKI directory; landing two mirrors in one place is refused."""

from __future__ import annotations

from typing import Any

from mirrorkit.agent.config import parse_config
from mirrorkit.inventory.hostconfig import host_config, inventory_from_vars
from mirrorkit.inventory.validate import InventoryVars, validate

HOSTS = {"p1": "198.18.7.11", "p2": "198.18.7.12", "p3": "198.18.7.13",
         "rep1": "198.18.9.15"}
NAMES = ("alpha", "beta", "gamma")


def mirrors(root: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, name in enumerate(NAMES):
        member: dict[str, Any] = {"host": "rep1", "kind": "reporting"}
        if root:
            member["root"] = f"/srv/replicas/{name}"
        out[name] = {"paths": ["/srv/data"], "primary": f"p{i + 1}", "port": 7410 + i,
                     "async": [member]}
    return out


def hostvars() -> dict[str, dict[str, Any]]:
    return {h: {"ansible_host": a} for h, a in HOSTS.items()}


def test_async_host_in_three_mirrors_gets_three_distinct_targets() -> None:
    assert validate(InventoryVars("inv.yml", {"mirrorkit_mirrors": mirrors()}, hostvars())) == []
    inv = inventory_from_vars(mirrors(), hostvars())
    cfg = host_config(inv, "rep1")
    assert sorted(cfg["mirrors"]) == list(NAMES)
    targets = [cfg["mirrors"][n]["targets"] for n in NAMES]
    assert targets == [[f"/srv/replicas/{n}/srv/data"] for n in NAMES]
    assert len({cfg["mirrors"][n]["port"] for n in NAMES}) == 3
    assert len({cfg["mirrors"][n]["tls"]["ca"] for n in NAMES}) == 3  # a CA per mirror
    for n in NAMES:
        m = cfg["mirrors"][n]
        assert (m["role"], m["kind"]) == ("async", "reporting")
        assert set(m["members"]) == {f"p{NAMES.index(n) + 1}", "rep1"}
    # the rendered config is one the agent accepts as is
    agent = parse_config(cfg)
    assert sorted(agent.mirrors) == list(NAMES)


def test_three_mirrors_landing_in_the_same_place_are_refused() -> None:
    errors = validate(InventoryVars("inv.yml", {"mirrorkit_mirrors": mirrors(root=False)},
                                    hostvars()))
    assert errors, "all three mirrors would land at /srv/data on rep1"
    text = "\n".join(map(str, errors))
    assert "rep1" in text and "root" in text
