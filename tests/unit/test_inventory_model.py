"""The inventory model: members, classes, where data lands, defaults."""

from __future__ import annotations

import pytest

from mirrorkit.agent import config as agent_config
from mirrorkit.inventory.model import (
    AsyncMember,
    HealthCheck,
    Mirror,
    Timeouts,
    build_mirror,
    default_router_id,
)


def mirror() -> Mirror:
    return build_mirror(
        "records",
        {
            "paths": ["/srv/records", "/var/lib/records"],
            "primary": "node1",
            "backup": "node2",
            "arbiter": "arb1",
            "async": [
                {"host": "dr1", "kind": "dr"},
                {"host": "rep1", "kind": "reporting", "root": "/srv/reporting"},
            ],
            "vip": {"address": "198.18.7.100/24", "interface": "eth0"},
        },
    )


def test_defaults() -> None:
    m = build_mirror("m", {"paths": ["/d"], "primary": "node1"})
    assert (m.mode, m.port, m.backup, m.arbiter, m.asyncs, m.vip) == (
        "async", 7410, None, None, (), None)
    assert m.timeouts == Timeouts(0.25, 1.0, 2.0)
    assert m.exclude == () and dict(m.hooks) == {}
    assert (m.max_lag_on_failover, m.hook_timeout, m.health) == (
        1 << 20, 30.0, HealthCheck(5.0, 5.0, 3))


def test_defaults_are_the_agents() -> None:
    # The inventory writes its defaults into agent.yml; they must be the
    # agent's own, or a mirror without the field behaves differently once
    # rendered than the agent's documentation says.
    m = build_mirror("m", {"paths": ["/d"], "primary": "node1"})
    at = agent_config.Timeouts()
    assert m.timeouts.as_dict() == {"heartbeat": at.heartbeat, "qos": at.qos,
                                    "arbiter": at.arbiter}
    ah = agent_config.HealthCheck()
    assert m.health.as_dict() == {"interval": ah.interval, "timeout": ah.timeout,
                                  "failures": ah.failures}
    assert m.max_lag_on_failover == agent_config.DEFAULT_MAX_LAG_ON_FAILOVER
    assert m.hook_timeout == agent_config.DEFAULT_HOOK_TIMEOUT


def test_failover_tunables_are_built() -> None:
    m = build_mirror("m", {"paths": ["/d"], "primary": "node1",
                           "max_lag_on_failover": 4096.0, "hook_timeout": 5,
                           "health": {"timeout": 2}})
    assert m.max_lag_on_failover == 4096 and isinstance(m.max_lag_on_failover, int)
    assert m.hook_timeout == 5.0
    assert m.health == HealthCheck(5.0, 2.0, 3)


def test_members_and_classes() -> None:
    m = mirror()
    assert m.members() == {
        "node1": "primary", "node2": "backup", "arb1": "arbiter",
        "dr1": "async", "rep1": "async",
    }
    assert [m.member_class(h) for h in m.members()] == [
        "failover", "failover", "arbiter", "async", "async"]
    assert m.failover_hosts() == ["node1", "node2"]
    assert m.async_member("rep1") == AsyncMember("rep1", "reporting", "/srv/reporting")
    with pytest.raises(KeyError):
        m.member_class("stranger")


def test_targets() -> None:
    m = mirror()
    assert m.targets_for("node1") == ["/srv/records", "/var/lib/records"]
    assert m.targets_for("node2") == ["/srv/records", "/var/lib/records"]
    assert m.targets_for("dr1") == ["/srv/records", "/var/lib/records"]
    assert m.targets_for("rep1") == [
        "/srv/reporting/srv/records", "/srv/reporting/var/lib/records"]
    assert m.targets_for("arb1") == []


def test_vip_and_router_id() -> None:
    vip = mirror().vip
    assert vip is not None
    assert (vip.address, vip.prefix, vip.interface, vip.cidr) == (
        "198.18.7.100", 24, "eth0", "198.18.7.100/24")
    assert vip.router_id == default_router_id("records")
    assert default_router_id("records") == default_router_id("records")  # stable
    assert all(1 <= default_router_id(n) <= 255 for n in ("a", "records", "orders", "x" * 30))
