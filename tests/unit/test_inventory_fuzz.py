"""Property tests (hypothesis) of the inventory's pre-check, validator and
loader: whatever the input, the result is a value or a MirrorkitError (a
list of ValidationErrors for the validator), never another exception, and a
valid result builds every host's config without error. Cases a fuzz run
found are regular tests at the end of this file."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirrorkit.errors import MirrorkitError
from mirrorkit.inventory import Inventory, InventoryVars, load_inventory, validate
from mirrorkit.inventory.escape import keepalived_word, systemd_words
from mirrorkit.inventory.hostconfig import host_config, pki_members, vip_instances
from mirrorkit.inventory.load import build_inventory
from mirrorkit.inventory.precheck import check_text

# Loading goes through Ansible (tens of ms each): a tenth of the profile's examples.
LOAD_EXAMPLES = max(10, (settings().max_examples or 200) // 10)

HOSTILE_STRINGS = [
    "../../escaped", "a/b", "..", "", " ", "eth0\n    priority 255", "e" * 300, "/srv/a\0b",
    "/srv/a b", "/srv/a\nb", "0.0.0.0", "224.0.0.1", "127.0.0.5", "255.255.255.255",
    "198.18.7.100/0", "198.18.7.100/33", "{{ 1 + 1 }}", "%n", '"', "\\", "node[1:3]",
    "-dash", "1.5", "true", "null", "é" * 200, "\u2028", "records\n",
]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(HOSTILE_STRINGS),
    st.text(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=10),
                                  st.integers(), st.floats(allow_nan=False)), inner, max_size=4),
    ),
    max_leaves=12,
)

LAB_HOSTS = {"node1": "198.18.7.11", "node2": "198.18.7.12", "arb1": "198.18.7.13",
             "dr1": "198.18.7.14"}
LAB_MIRRORS: dict[str, Any] = {"records": {
    "paths": ["/srv/records"], "exclude": ["*.tmp"], "mode": "async", "port": 7410,
    "primary": "node1", "backup": "node2", "arbiter": "arb1",
    "async": [{"host": "dr1", "kind": "dr", "root": "/srv/replicas"}],
    "vip": {"address": "198.18.7.100/24", "interface": "eth0", "router_id": 9},
    "timeouts": {"heartbeat": 1.0, "qos": 8.0, "arbiter": 10.0},
    "hooks": {"on_promote": "systemctl start app"},
}}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indexes) into a nested structure, the root included."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _replace(root: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = root
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return root


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, str]]:
    """The lab's mirrors and hosts with one to three values (or keys) replaced."""
    mirrors, hosts = copy.deepcopy(LAB_MIRRORS), dict(LAB_HOSTS)
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 5)) == 0:  # rename a host, in the inventory and in the mirror
            old = draw(st.sampled_from(sorted(hosts)))
            new = draw(st.sampled_from(HOSTILE_STRINGS) | st.text(max_size=12))
            hosts[new] = hosts.pop(old)
            spec = mirrors.get("records") if isinstance(mirrors, dict) else None
            for role in ("primary", "backup", "arbiter"):
                if isinstance(spec, dict) and spec.get(role) == old:
                    spec[role] = new
            entries = spec.get("async") if isinstance(spec, dict) else None
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and entry.get("host") == old:
                    entry["host"] = new
        elif draw(st.integers(0, 5)) == 0:  # an address
            host = draw(st.sampled_from(sorted(hosts)))
            hosts[host] = draw(st.sampled_from(HOSTILE_STRINGS) | st.ip_addresses().map(str))
        else:
            paths = _paths(mirrors)
            path = draw(st.sampled_from(paths))
            if path and draw(st.booleans()) and isinstance(path[-1], str):  # a key
                parent = mirrors
                for part in path[:-1]:
                    parent = parent[part]
                parent[draw(values.filter(lambda k: isinstance(k, str | int | float | bool)
                                          and not (isinstance(k, float) and math.isnan(k))))] = (
                    parent.pop(path[-1]))
            else:
                mirrors = _replace(mirrors, path, draw(values))
    return mirrors, hosts


def _check_valid_builds(inv_vars: InventoryVars) -> None:
    """A valid inventory gives every member its config, VIP instances and PKI
    request, and its names and paths can be written into the templates."""
    inventory = build_inventory(inv_vars)
    pki_members(inventory)
    for host in inventory.hosts:
        host_config(inventory, host)
        for vi in vip_instances(inventory, host):
            keepalived_word(vi["interface"])
            keepalived_word(host)
    for mirror in inventory.mirrors.values():
        for host in mirror.members():
            systemd_words(mirror.targets_for(host))


@pytest.mark.fuzz
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(near_valid())
def test_validate_near_valid_never_raises(case: tuple[dict[str, Any], dict[str, str]]) -> None:
    mirrors, hosts = case
    inv_vars = InventoryVars("inv.yml", {"mirrorkit_mirrors": mirrors},
                             {h: {"ansible_host": a} for h, a in hosts.items()})
    errors = validate(inv_vars)
    for error in errors:
        assert "\n" not in str(error)
        assert len(str(error)) < 2000
    if not errors:
        _check_valid_builds(inv_vars)


@pytest.mark.fuzz
@given(values, values)
def test_validate_random_structures_never_raises(settings_value: Any, hostvars: Any) -> None:
    all_vars = settings_value if isinstance(settings_value, dict) else {
        "mirrorkit_mirrors": settings_value}
    hv = {str(k): v if isinstance(v, dict) else {"ansible_host": v}
          for k, v in (hostvars.items() if isinstance(hostvars, dict) else [])}
    inv_vars = InventoryVars("inv.yml", all_vars, hv)
    if not validate(inv_vars):
        _check_valid_builds(inv_vars)


YAML_ALPHABET = st.sampled_from(list("[]{}:,-&*!|>'\"#%@`?<.\n\t a1"))


@pytest.mark.fuzz
@given(st.one_of(st.text(YAML_ALPHABET, max_size=200), st.text(max_size=200),
                 values.map(lambda v: yaml.safe_dump(v, allow_unicode=True))))
def test_precheck_text_never_raises_anything_else(text: str) -> None:
    try:
        check_text(text, "inv.yml")
    except MirrorkitError as exc:
        assert str(exc).startswith("inv.yml")


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, default_flow_style=False)


@st.composite
def inventory_text(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:  # anything at all
        return draw(st.one_of(st.text(YAML_ALPHABET, max_size=120), values.map(_dump)))
    mirrors, hosts = draw(near_valid())
    data: dict[str, Any] = {"all": {
        "hosts": {h: {"ansible_host": a} for h, a in hosts.items()},
        "vars": {"mirrorkit_mirrors": mirrors},
    }}
    if kind == 2:  # noise elsewhere in the inventory
        data["all"]["vars"][draw(st.sampled_from(["mirrorkit_api_port", "mirrorkit_pki_dir",
                                                  "mirrorkit_lab", "x"]))] = draw(values)
    if kind == 3:
        data["all"]["children"] = {draw(st.sampled_from(HOSTILE_STRINGS)): draw(values)}
    return _dump(data)


@pytest.mark.fuzz
@settings(max_examples=LOAD_EXAMPLES)
@given(inventory_text())
def test_load_inventory_returns_an_inventory_or_a_mirrorkit_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("inv") / "inventory.yml"
    path.write_text(text, errors="surrogateescape")
    try:
        result = load_inventory(path)
    except MirrorkitError as exc:
        assert str(exc).startswith(str(path)) or str(exc).startswith("inventory is invalid")
    else:
        assert isinstance(result, Inventory)
