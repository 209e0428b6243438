"""Loading inventories through Ansible's own API: files, groups, group_vars,
templating, connection variables, and clear errors for broken files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirrorkit.errors import MirrorkitError
from mirrorkit.inventory import InventoryInvalid, load_inventory, read_inventory_vars, validate

HERE = Path(__file__).parent / "inventories"
LAB = Path(__file__).parents[2] / "inventories" / "lab.yml"


def test_lab_inventory_loads() -> None:
    inv = load_inventory(LAB)
    assert sorted(inv.mirrors) == ["records"]
    assert inv.address("dr1") == "198.18.7.14"
    assert inv.api_port == 7480
    assert inv.pki_dir == Path("~/.mirrorkit/pki").expanduser()
    assert inv.lab == {"network": "mirrorkit-lab", "subnet": "198.18.7.0/24"}
    node1 = inv.hosts["node1"]
    assert node1.user == "root"
    assert node1.key_file == os.path.expanduser("~/.mirrorkit/lab/id_ed25519")
    assert node1.ssh_common_args is not None and "StrictHostKeyChecking=no" in (
        node1.ssh_common_args
    )
    assert node1.port is None


def test_multi_mirror_inventory_with_groups_and_templates() -> None:
    inv = load_inventory(HERE / "multi.yml")
    assert sorted(inv.mirrors) == ["orders", "records"]
    assert inv.address("node1") == "198.18.7.11"  # templated from a group var
    assert inv.hosts["node2"].port == 2222
    assert inv.hosts["node3"].user == "ops"
    assert inv.api_port == 7481
    assert [m.name for m in inv.mirrors_of("arb1")] == ["orders", "records"]
    assert [m.name for m in inv.mirrors_of("dr1")] == ["orders", "records"]
    orders = inv.mirrors["orders"]
    assert orders.timeouts.qos == 4.0 and orders.vip is not None and orders.vip.router_id == 52


def test_group_vars_directory_and_redefinition_is_reported() -> None:
    inv_vars = read_inventory_vars(HERE / "grouped" / "hosts.yml")
    assert inv_vars.hostvars["node1"]["ansible_host"] == "198.18.7.11"  # from host_vars/
    assert "records" in inv_vars.all_vars["mirrorkit_mirrors"]  # from group_vars/all.yml
    errors = validate(inv_vars)
    assert [(e.host, e.field) for e in errors] == [("node2", "mirrorkit_mirrors")]


def test_invalid_inventory_lists_every_error() -> None:
    with pytest.raises(InventoryInvalid) as info:
        load_inventory(HERE / "invalid.yml")
    fields = {e.field for e in info.value.errors}
    assert {
        "mirrorkit_mirrors.records.paths[0]",
        "mirrorkit_mirrors.records.mode",
        "mirrorkit_mirrors.records.async[0].vip",
        "mirrorkit_mirrors.records.vip.holders",
        "ansible_host",
    } <= fields
    assert str(HERE / "invalid.yml") in str(info.value)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("missing.yml", "inventory file not found"),
        ("syntax_error.yml", "line"),
        ("not_inventory.yml", "not an Ansible inventory"),
        ("bad_hosts.yml", "not an Ansible inventory"),
    ],
)
def test_broken_files_are_clear_errors(name: str, text: str) -> None:
    with pytest.raises(MirrorkitError) as info:
        read_inventory_vars(HERE / name)
    message = str(info.value)
    assert message.startswith(str(HERE / name))
    assert text in message
    assert "Traceback" not in message


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    with pytest.raises(MirrorkitError, match="empty file"):
        read_inventory_vars(empty)
    if os.geteuid() != 0:
        secret = tmp_path / "secret.yml"
        secret.write_text("all: {}\n")
        secret.chmod(0)
        with pytest.raises(MirrorkitError, match="cannot read"):
            read_inventory_vars(secret)


def test_undefined_template_is_a_clear_error(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yml"
    inv.write_text(
        "all:\n  hosts:\n    node1: {ansible_host: '{{ nope }}'}\n"
        "  vars:\n    mirrorkit_mirrors: {m: {paths: [/d], primary: node1}}\n"
    )
    with pytest.raises(MirrorkitError, match="nope"):
        read_inventory_vars(inv)


def test_ini_inventory_without_mirrors_is_an_error_not_a_crash(tmp_path: Path) -> None:
    ini = tmp_path / "hosts"
    ini.write_text("[web]\nnode1 ansible_host=198.18.7.11\n")
    errors = validate(read_inventory_vars(ini))
    assert [e.field for e in errors] == ["mirrorkit_mirrors"]
