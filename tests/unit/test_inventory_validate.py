"""Inventory validation: every rule reports file, mirror, host, field, problem and fix;
all errors are collected; multi-mirror layouts from the design are valid."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from mirrorkit.inventory.model import default_router_id
from mirrorkit.inventory.validate import InventoryVars, ValidationError, validate

HOSTS = {
    "node1": "198.18.7.11",
    "node2": "198.18.7.12",
    "arb1": "198.18.7.13",
    "dr1": "198.18.7.14",
    "node3": "198.18.7.21",
    "node4": "198.18.7.22",
    "rep1": "198.18.9.15",
}


def base() -> dict[str, Any]:
    return {
        "mirrorkit_mirrors": {
            "records": {
                "paths": ["/srv/records"],
                "mode": "async",
                "primary": "node1",
                "backup": "node2",
                "arbiter": "arb1",
                "async": [{"host": "dr1", "kind": "dr"}],
                "vip": {"address": "198.18.7.100/24", "interface": "eth0"},
            }
        }
    }


def check(all_vars: dict[str, Any], hosts: dict[str, Any] | None = None) -> list[ValidationError]:
    hostvars = {h: {"ansible_host": a} for h, a in (hosts or HOSTS).items()}
    return validate(InventoryVars("inv.yml", all_vars, hostvars))


def records(v: dict[str, Any]) -> dict[str, Any]:
    m: dict[str, Any] = v["mirrorkit_mirrors"]["records"]
    return m


def second_mirror(v: dict[str, Any], **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "paths": ["/srv/orders"], "primary": "node3", "backup": "node4",
        "arbiter": "arb1", "port": 7411,
    }
    spec.update(kw)
    v["mirrorkit_mirrors"]["orders"] = spec
    return v


def one(errors: list[ValidationError], field: str) -> ValidationError:
    hits = [e for e in errors if e.field == field]
    assert hits, f"no error on {field}; got:\n" + "\n".join(map(str, errors))
    return hits[0]


# -- valid layouts ----------------------------------------------------------------


def test_base_is_valid() -> None:
    assert check(base()) == []


def test_minimal_mirror_is_valid() -> None:
    assert check({"mirrorkit_mirrors": {"m": {"paths": ["/d"], "primary": "node1"}}}) == []


def test_several_mirrors_sharing_arbiter_and_async_host_are_valid() -> None:
    v = second_mirror(base(), vip={"address": "198.18.7.101/24", "interface": "eth0",
                                   "router_id": 52})
    records(v)["async"] = [{"host": "dr1", "kind": "dr", "root": "/srv/replicas/records"},
                           {"host": "rep1", "kind": "reporting"}]
    v["mirrorkit_mirrors"]["orders"]["async"] = [
        {"host": "dr1", "kind": "dr", "root": "/srv/replicas/orders"},
        {"host": "rep1", "kind": "reporting", "root": "/srv/reporting/orders"},
    ]
    assert check(v) == []


def test_async_host_in_two_mirrors_with_disjoint_paths_needs_no_root() -> None:
    v = second_mirror(base(), **{"async": [{"host": "dr1", "kind": "dr"}]})
    assert check(v) == []


def test_everything_optional_spelled_out_is_valid() -> None:
    v = base()
    records(v).update(
        exclude=["*.tmp", "cache/*"], port=7420,
        timeouts={"heartbeat": 0.5, "qos": 4, "arbiter": 6.0},
        hooks={"on_promote": "systemctl start app", "on_demote": "systemctl stop app",
               "on_role_change": "logger x", "health_check": "curl -f localhost"},
    )
    records(v).update(max_lag_on_failover=0, hook_timeout=3600,
                      health={"interval": 10, "timeout": 10, "failures": 1})
    records(v)["vip"]["router_id"] = 9
    v.update(mirrorkit_api_port=7481, mirrorkit_pki_dir="/tmp/pki",
             mirrorkit_lab={"network": "n", "subnet": "198.18.7.0/24"})
    assert check(v) == []


def test_arbiter_exactly_qos_plus_two_heartbeats_is_valid() -> None:
    v = base()
    records(v)["timeouts"] = {"heartbeat": 0.25, "qos": 1, "arbiter": 1.5}
    assert check(v) == []
    records(v)["timeouts"] = {"heartbeat": 0.5, "qos": 1.5, "arbiter": 2.5}
    assert check(v) == []


def test_suggested_timeouts_pass() -> None:
    # 3 x 0.05 is 0.15000000000000002: the fix must name a value that passes.
    v = base()
    records(v)["timeouts"] = {"heartbeat": 0.05, "qos": 0.15, "arbiter": 1}
    err = one(check(v), "mirrorkit_mirrors.records.timeouts.qos")
    wanted = float(err.fix.split(">= ")[1].split(" ")[0])
    records(v)["timeouts"]["qos"] = wanted
    assert check(v) == []


def test_timeouts_the_inventory_accepts_the_agent_accepts() -> None:
    # The same rules on both sides: a rendered agent.yml the agent refuses
    # would stop the agent after a "valid" apply.
    from mirrorkit.agent.config import ConfigError, parse_config
    from mirrorkit.inventory.hostconfig import host_config
    from mirrorkit.inventory.load import build_inventory

    for hb, qos, arb in [(0.25, 1, 1.5), (0.1, 0.3, 0.5), (0.5, 4, 6), (0.05, 0.151, 0.251),
                         (1, 3, 5), (0.25, 1, 1.49), (0.5, 1.4, 10), (0.05, 0.15, 1)]:
        v = base()
        records(v)["timeouts"] = {"heartbeat": hb, "qos": qos, "arbiter": arb}
        inventory_ok = check(v) == []
        good = base()
        rendered = host_config(build_inventory(InventoryVars(
            "inv.yml", good, {h: {"ansible_host": a} for h, a in HOSTS.items()})), "node1")
        rendered["mirrors"]["records"]["timeouts"] = {"heartbeat": hb, "qos": qos,
                                                      "arbiter": arb}
        try:
            parse_config(rendered)
            agent_ok = True
        except ConfigError:
            agent_ok = False
        assert inventory_ok == agent_ok, (hb, qos, arb, [str(e) for e in check(v)])


# -- each rule ----------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(**kw: Any) -> Mutation:
    return lambda v: records(v).update(kw)


def _vip(**kw: Any) -> Mutation:
    return lambda v: records(v)["vip"].update(kw)


def _async(**kw: Any) -> Mutation:
    return lambda v: records(v)["async"][0].update(kw)


CASES: list[tuple[str, Mutation, str, str | None, str]] = [
    # (id, mutation, field, host, substring of problem+fix)
    ("unknown primary", _set(primary="nod1"), "primary", "nod1", "did you mean 'node1'"),
    ("unknown backup", _set(backup="ghost"), "backup", "ghost", "not in the inventory"),
    ("unknown arbiter", _set(arbiter="arb9"), "arbiter", "arb9", "not in the inventory"),
    ("unknown async", _async(host="dr9"), "async[0].host", "dr9", "not in the inventory"),
    ("two roles", _set(backup="node1"), "backup", "node1", "already the primary"),
    ("arbiter also async", _async(host="arb1"), "async[0].host", "arb1", "already the arbiter"),
    ("no primary", lambda v: records(v).pop("primary"), "primary", None, "is missing"),
    ("vip holders", _vip(holders=["arb1"]), "vip.holders", None, "always follows the primary"),
    ("vip on async entry", _async(vip={"address": "198.18.7.100/24"}), "async[0].vip", None,
     "async members never hold the VIP"),
    ("vip malformed", _vip(address="198.18.7.100"), "vip.address", None, "a.b.c.d/len"),
    ("vip bad octet", _vip(address="198.18.7.300/24"), "vip.address", None, "a.b.c.d/len"),
    ("vip outside subnet", _vip(address="198.18.8.100/24"), "vip.address", "node1",
     "outside the subnet of primary 'node1'"),
    ("vip equals member", _vip(address="198.18.7.13/24"), "vip.address", "arb1",
     "address of member 'arb1'"),
    ("vip network address", _vip(address="198.18.7.0/24"), "vip.address", None,
     "network or broadcast"),
    ("vip router id range", _vip(router_id=256), "vip.router_id", None, "between 1 and 255"),
    ("vip without interface", lambda v: records(v)["vip"].pop("interface"), "vip.interface",
     None, "is missing"),
    ("relative path", _set(paths=["srv/records"]), "paths[0]", None, "relative"),
    ("unnormalised path", _set(paths=["/srv/records/"]), "paths[0]", None, "'/srv/records'"),
    ("root path", _set(paths=["/"]), "paths[0]", None, "whole filesystem"),
    ("overlapping paths", _set(paths=["/srv/a", "/srv/a/b"]), "paths[1]", None, "overlaps"),
    ("duplicate paths", _set(paths=["/srv/a", "/srv/a"]), "paths[1]", None, "overlaps"),
    ("no paths", _set(paths=[]), "paths", None, "absolute paths"),
    ("absolute exclude", _set(exclude=["/srv/records/tmp"]), "exclude[0]", None, "relative"),
    ("unknown mode", _set(mode="semi-sync"), "mode", None, "use sync or async"),
    ("sync needs mount capture", _set(mode="sync"), "mode", None, "add capture: mount"),
    ("zero timeout", _set(timeouts={"heartbeat": 0}), "timeouts.heartbeat", None,
     "between 0.05 and 60"),
    ("negative timeout", _set(timeouts={"qos": -1}), "timeouts.qos", None,
     "between 0.15 and 3600"),
    ("qos under 3 heartbeats", _set(timeouts={"heartbeat": 3, "qos": 8, "arbiter": 20}),
     "timeouts.qos", None, "less than 3 heartbeats"),
    ("arbiter under qos + 2 heartbeats",
     _set(timeouts={"heartbeat": 0.5, "qos": 2, "arbiter": 2.5}), "timeouts.arbiter", None,
     "less than qos + 2 heartbeats (3 s); set arbiter >= 3"),
    ("arbiter under qos", _set(timeouts={"qos": 12}), "timeouts.arbiter", None,
     "set arbiter >= 12.5"),
    ("arbiter rule says why", _set(timeouts={"arbiter": 1.25}), "timeouts.arbiter", None,
     "two primaries could be writable at once"),
    ("max lag negative", _set(max_lag_on_failover=-1), "max_lag_on_failover", None,
     "-1 is out of range; use a value of at least 0"),
    ("max lag not whole", _set(max_lag_on_failover=1.5), "max_lag_on_failover", None,
     "integer number of bytes >= 0"),
    ("max lag as text", _set(max_lag_on_failover="1M"), "max_lag_on_failover", None,
     "integer number of bytes >= 0"),
    ("hook timeout zero", _set(hook_timeout=0), "hook_timeout", None,
     "greater than 0 and at most 3600"),
    ("hook timeout too long", _set(hook_timeout=7200), "hook_timeout", None,
     "greater than 0 and at most 3600"),
    ("hook timeout nan", _set(hook_timeout=float("nan")), "hook_timeout", None, "NaN"),
    ("health without health_check", _set(health={"interval": 10}), "health", None,
     "hooks.health_check"),
    ("health with other hooks only", _set(hooks={"on_promote": "x"}, health={}), "health",
     None, "add hooks.health_check"),
    ("health timeout over interval",
     _set(hooks={"health_check": "true"}, health={"interval": 2, "timeout": 3}),
     "health.timeout", None, "timeout 3 is longer than interval 2; set health.timeout <= 2"),
    ("health default timeout over interval",
     _set(hooks={"health_check": "true"}, health={"interval": 2}),
     "health.timeout", None, "timeout 5 (the default) is longer than interval 2"),
    ("health failures zero", _set(hooks={"health_check": "true"}, health={"failures": 0}),
     "health.failures", None, "between 1 and 1000"),
    ("health interval zero", _set(hooks={"health_check": "true"}, health={"interval": 0}),
     "health.interval", None, "greater than 0"),
    ("health interval nan",
     _set(hooks={"health_check": "true"}, health={"interval": float("nan")}),
     "health.interval", None, "NaN"),
    ("health unknown key", _set(hooks={"health_check": "true"}, health={"failure": 3}),
     "health.failure", None, "did you mean 'failures'"),
    ("unknown timeout key", _set(timeouts={"heartbeet": 1}), "timeouts.heartbeet", None,
     "did you mean 'heartbeat'"),
    ("port equals api port", _set(port=7480), "port", None, "agent API port"),
    ("port too low", _set(port=80), "port", None, "between 1024 and 65535"),
    ("port too high", _set(port=70000), "port", None, "between 1024 and 65535"),
    ("port not a number", _set(port="7410"), "port", None, "must be an integer TCP port"),
    ("mirror name", lambda v: v["mirrorkit_mirrors"].update(Bad=v["mirrorkit_mirrors"]
                                                            .pop("records")),
     "mirrorkit_mirrors.Bad", None, "invalid mirror name"),
    ("duplicate async host", lambda v: records(v)["async"].append({"host": "dr1", "kind": "dr"}),
     "async[1].host", "dr1", "listed twice"),
    ("async kind", _async(kind="backup"), "async[0].kind", None, "use dr or reporting"),
    ("async without kind", lambda v: records(v)["async"][0].pop("kind"), "async[0].kind", None,
     "is missing"),
    ("async relative root", _async(root="replicas"), "async[0].root", "dr1", "absolute"),
    ("unknown mirror key", _set(arbitre="arb1"), "arbitre", None, "did you mean 'arbiter'"),
    ("unknown hook", _set(hooks={"on_promte": "x"}), "hooks.on_promte", None,
     "did you mean 'on_promote'"),
    ("async as string", _set(**{"async": "dr1"}), "async", None, "entries like"),
]


@pytest.mark.parametrize(("mutate", "field", "host", "text"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule(mutate: Mutation, field: str, host: str | None, text: str) -> None:
    v = base()
    mutate(v)
    errors = check(v)
    mirror = "Bad" if field.startswith("mirrorkit_mirrors.Bad") else "records"
    full = field if field.startswith("mirrorkit_mirrors") else f"mirrorkit_mirrors.{mirror}.{field}"
    full = full.replace(".[", "[")
    err = one(errors, full)
    assert err.mirror == mirror
    assert err.host == host
    assert err.file == "inv.yml"
    assert text in f"{err.problem}; {err.fix}"
    assert err.fix  # always says what would be right


def test_vip_with_only_arbiter_in_subnet_explains_who_may_hold_it() -> None:
    hosts = dict(HOSTS, node1="198.18.8.11", node2="198.18.8.12")
    errors = check(base(), hosts)
    err = one(errors, "mirrorkit_mirrors.records.vip.address")
    assert "arbiter and async members never hold the VIP" in err.problem
    assert {e.host for e in errors if e.field.endswith("vip.address")} == {"node1", "node2"}


def test_vip_outside_backup_subnet_names_backup() -> None:
    errors = check(base(), dict(HOSTS, node2="198.18.8.12"))
    assert [e.host for e in errors] == ["node2"]
    assert "backup 'node2'" in errors[0].problem


def test_missing_and_non_ip_ansible_host() -> None:
    hostvars: dict[str, dict[str, Any]] = {h: {"ansible_host": a} for h, a in HOSTS.items()}
    hostvars["node2"] = {}
    hostvars["dr1"] = {"ansible_host": "dr1.example.org"}
    errors = validate(InventoryVars("inv.yml", base(), hostvars))
    missing = [e for e in errors if e.host == "node2"]
    assert len(missing) == 1 and missing[0].field == "ansible_host"
    assert "is missing" in missing[0].problem
    bad = [e for e in errors if e.host == "dr1"]
    assert len(bad) == 1 and "not an IP address" in bad[0].problem


def test_host_without_ansible_host_outside_mirrors_is_fine() -> None:
    hostvars: dict[str, dict[str, Any]] = {h: {"ansible_host": a} for h, a in HOSTS.items()}
    hostvars["monitoring"] = {}
    assert validate(InventoryVars("inv.yml", base(), hostvars)) == []


def test_two_members_with_one_address() -> None:
    errors = check(base(), dict(HOSTS, dr1="198.18.7.13"))
    assert one(errors, "ansible_host").host == "dr1"


def test_same_port_on_shared_host() -> None:
    v = second_mirror(base(), port=7410)
    err = one(check(v), "mirrorkit_mirrors.records.port")
    assert err.host == "arb1" and "orders" in err.problem and "port: 7411" in err.fix


def test_same_port_on_disjoint_hosts_is_fine() -> None:
    v = second_mirror(base(), port=7410, arbiter=None)
    assert check(v) == []


def test_router_id_clash_on_same_interface() -> None:
    v = second_mirror(base(), vip={"address": "198.18.7.101/24", "interface": "eth0",
                                   "router_id": default_router_id("records")})
    err = one(check(v), "mirrorkit_mirrors.records.vip.router_id")
    assert "also used by mirror 'orders'" in err.problem
    v["mirrorkit_mirrors"]["orders"]["vip"]["interface"] = "eth1"
    assert check(v) == []


def test_same_vip_in_two_mirrors() -> None:
    v = second_mirror(base(), vip={"address": "198.18.7.100/24", "interface": "eth0",
                                   "router_id": 52})
    one(check(v), "mirrorkit_mirrors.records.vip.address")


def test_async_host_in_two_mirrors_with_overlapping_targets_must_set_root() -> None:
    v = second_mirror(base(), paths=["/srv/records/orders"],
                      **{"async": [{"host": "dr1", "kind": "dr"}]})
    errors = check(v)
    err = one(errors, "mirrorkit_mirrors.records.async[0]")
    assert err.host == "dr1" and "root:" in err.fix and "'orders'" in err.problem
    records(v)["async"][0]["root"] = "/srv/replicas/records"
    assert check(v) == []


def test_same_root_for_two_mirrors_still_overlapping() -> None:
    v = second_mirror(base(), paths=["/srv/records"],
                      **{"async": [{"host": "dr1", "kind": "dr", "root": "/r"}]})
    v["mirrorkit_mirrors"]["orders"].update(primary="node3", backup="node4")
    records(v)["async"][0]["root"] = "/r"
    errors = check(v)
    assert any("overlapping" in e.problem and e.host == "dr1" for e in errors)


def test_redefined_mirrors_in_group_vars() -> None:
    hostvars: dict[str, dict[str, Any]] = {h: {"ansible_host": a} for h, a in HOSTS.items()}
    hostvars["node2"]["mirrorkit_mirrors"] = {}
    err = one(validate(InventoryVars("inv.yml", base(), hostvars)), "mirrorkit_mirrors")
    assert err.host == "node2" and "all.vars" in err.fix


def test_missing_mirrors_variable() -> None:
    err = one(check({}), "mirrorkit_mirrors")
    assert "is missing" in err.problem


def test_all_errors_are_collected_at_once() -> None:
    v = second_mirror(base(), port=80, mode="fast", paths=["relative"])
    records(v).update(backup="ghost", timeouts={"qos": 0.5})
    records(v)["vip"]["address"] = "bogus"
    fields = {e.field for e in check(v)}
    assert {
        "mirrorkit_mirrors.orders.port", "mirrorkit_mirrors.orders.mode",
        "mirrorkit_mirrors.orders.paths[0]", "mirrorkit_mirrors.records.backup",
        "mirrorkit_mirrors.records.timeouts.qos", "mirrorkit_mirrors.records.vip.address",
    } <= fields


def test_error_line_format() -> None:
    err = ValidationError("inventories/lab.yml", "records", "arb1",
                          "mirrorkit_mirrors.records.vip.interface", "is wrong", "do this")
    assert str(err) == (
        "inventories/lab.yml: mirror 'records', host 'arb1', field vip.interface: "
        "is wrong; do this"
    )
    top = ValidationError("inv.yml", None, "dr1", "ansible_host", "is missing", "set it")
    assert str(top) == "inv.yml: host 'dr1', field ansible_host: is missing; set it"


@pytest.mark.parametrize(
    "junk",
    [None, [], "x", 5, {"m": None}, {"m": []}, {"m": {"paths": "/x", "primary": 3}},
     {"m": {"paths": [None, 5], "primary": "node1", "async": [None, "dr1", {"host": None}],
            "vip": {"address": 5, "interface": None}, "timeouts": {"qos": "x"},
            "hooks": [], "backup": ["node2"]}}],
)
def test_garbage_never_raises(junk: Any) -> None:
    errors = check({"mirrorkit_mirrors": copy.deepcopy(junk)})
    assert errors and all(isinstance(e, ValidationError) for e in errors)
