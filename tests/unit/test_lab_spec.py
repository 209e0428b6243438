"""Lab inventory reading: hosts, addresses, network, and every error at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorkit.errors import MirrorkitError
from mirrorkit.lab.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inv.yml"
    path.write_text(text)
    return path


def _error(path: Path) -> str:
    with pytest.raises(MirrorkitError) as info:
        load_spec(path)
    return str(info.value)


def test_repository_lab_inventory() -> None:
    spec = load_spec(REPO / "inventories" / "lab.yml")
    assert spec.network == "mirrorkit-lab"
    assert str(spec.subnet) == "198.18.7.0/24"
    assert [(h.name, h.container, h.address) for h in spec.hosts] == [
        ("node1", "node1", "198.18.7.11"),
        ("node2", "node2", "198.18.7.12"),
        ("arb1", "arb1", "198.18.7.13"),
        ("dr1", "dr1", "198.18.7.14"),
    ]


def test_children_groups_and_prefix(tmp_path: Path) -> None:
    path = _write(tmp_path, """
all:
  hosts:
    a: {ansible_host: 198.18.9.11}
  children:
    failover:
      hosts:
        b: {ansible_host: 198.18.9.12}
      children:
        deep:
          hosts:
            c: {ansible_host: 198.18.9.13}
    empty:
  vars:
    mirrorkit_lab: {network: mk-t, subnet: 198.18.9.0/24, prefix: "t-"}
""")
    spec = load_spec(path)
    assert [h.name for h in spec.hosts] == ["a", "b", "c"]
    assert spec.host("b").container == "t-b"
    assert spec.host("t-c").address == "198.18.9.13"
    with pytest.raises(MirrorkitError, match="no lab host 'zz'"):
        spec.host("zz")


def test_missing_file(tmp_path: Path) -> None:
    assert "inventory file not found" in _error(tmp_path / "nope.yml")


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "all:\n  hosts: [\n"))
    assert "not valid YAML: line" in message


def test_no_all_mapping(tmp_path: Path) -> None:
    assert "top-level 'all:'" in _error(_write(tmp_path, "- a\n"))


def test_no_mirrorkit_lab(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "all:\n  hosts:\n    a: {ansible_host: 198.18.9.2}\n"))
    assert "all.vars.mirrorkit_lab: missing" in message


@pytest.mark.parametrize("subnet", ["10.0.0.0/24", "198.20.0.0/24", "198.16.0.0/12"])
def test_subnet_outside_test_range(tmp_path: Path, subnet: str) -> None:
    path = _write(tmp_path, f"""
all:
  hosts: {{a: {{ansible_host: 198.18.9.2}}}}
  vars: {{mirrorkit_lab: {{network: n, subnet: "{subnet}"}}}}
""")
    assert "is outside 198.18.0.0/15" in _error(path)


def test_all_host_errors_reported_together(tmp_path: Path) -> None:
    path = _write(tmp_path, """
all:
  hosts:
    out: {ansible_host: 198.18.8.5}
    gw: {ansible_host: 198.18.9.1}
    noaddr: {}
    notip: {ansible_host: node.example}
    dup1: {ansible_host: 198.18.9.20}
    dup2: {ansible_host: 198.18.9.20}
    far: {ansible_host: 10.1.1.1}
    bad_name: {ansible_host: 198.18.9.30}
  vars:
    mirrorkit_lab: {network: n, subnet: 198.18.9.0/24, colour: blue}
""")
    message = _error(path)
    for expected in (
        "host out.ansible_host: 198.18.8.5 is outside the lab subnet 198.18.9.0/24",
        "host gw.ansible_host: 198.18.9.1 is reserved",
        "host noaddr.ansible_host: missing",
        "host notip.ansible_host: 'node.example' is not an IPv4 address",
        "host dup2.ansible_host: 198.18.9.20 is already used by host dup1",
        "host far.ansible_host: 10.1.1.1 is outside 198.18.0.0/15",
        "host bad_name: name must be a valid hostname",
        "mirrorkit_lab: unknown keys colour",
    ):
        assert expected in message, expected


def test_bad_network_name_and_subnet(tmp_path: Path) -> None:
    path = _write(tmp_path, """
all:
  hosts: {a: {ansible_host: 198.18.9.2}}
  vars: {mirrorkit_lab: {network: "bad name!", subnet: not-a-net}}
""")
    message = _error(path)
    assert "mirrorkit_lab.network" in message
    assert "mirrorkit_lab.subnet: 'not-a-net' is not an IPv4 network" in message
