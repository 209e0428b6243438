"""How `mirrorkit status` turns the agents' answers into its report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from mirrorkit.commands.status import build_report, print_table
from mirrorkit.inventory.model import Host, Inventory, build_mirrors
from mirrorkit.remote import HostProbe

MIRRORS = {
    "records": {
        "paths": ["/srv/records"],
        "primary": "node1",
        "backup": "node2",
        "arbiter": "arb1",
        "async": [{"host": "dr1", "kind": "dr"}],
        "vip": {"address": "198.18.7.100/24", "interface": "eth0"},
    }
}
ADDRESSES = {
    "node1": "198.18.7.11",
    "node2": "198.18.7.12",
    "arb1": "198.18.7.13",
    "dr1": "198.18.7.14",
}


def inventory() -> Inventory:
    hosts = {name: Host(name, addr) for name, addr in ADDRESSES.items()}
    return Inventory(Path("lab.yml"), hosts, build_mirrors(MIRRORS))


def agent_status(host: str, role: str, **extra: Any) -> dict[str, Any]:
    mirror = {
        "role": role,
        "term": 3,
        "lsn": 10,
        "applied_lsn": 10,
        "lag_bytes": 0,
        "lag_records": 0,
        "lag_seconds": 0.0,
        "connected": True,
        "peers": {},
    }
    mirror.update(extra)
    return {"host": host, "mirrors": {"records": mirror}}


def healthy_probes() -> dict[str, HostProbe]:
    peers = {h: {"connected": True} for h in ("node2", "arb1", "dr1")}
    return {
        "node1": HostProbe(
            "node1", agent_status("node1", "primary", peers=peers), {"198.18.7.11", "198.18.7.100"}
        ),
        "node2": HostProbe("node2", agent_status("node2", "backup"), {"198.18.7.12"}),
        "arb1": HostProbe("arb1", agent_status("arb1", "arbiter", peers={}), {"198.18.7.13"}),
        "dr1": HostProbe("dr1", agent_status("dr1", "async"), {"198.18.7.14"}),
    }


def test_report_names_live_primary_term_and_vip_holder() -> None:
    report = build_report(inventory(), healthy_probes())
    records = report["mirrors"]["records"]
    assert records["primary"] == "node1"
    assert records["term"] == 3
    assert records["vip"] == {"address": "198.18.7.100/24", "holders": ["node1"]}
    by_host = {m["host"]: m for m in records["members"]}
    assert by_host["node1"]["connected"] == "3/3 peers"
    assert by_host["node2"]["connected"] is True
    assert by_host["dr1"]["role"] == "async"
    assert by_host["node2"]["lag_records"] == 0


def test_live_role_wins_over_inventory_role() -> None:
    probes = healthy_probes()
    probes["node1"] = HostProbe("node1", agent_status("node1", "backup"), {"198.18.7.11"})
    probes["node2"] = HostProbe(
        "node2", agent_status("node2", "primary"), {"198.18.7.12", "198.18.7.100"}
    )
    records = build_report(inventory(), probes)["mirrors"]["records"]
    assert records["primary"] == "node2"
    assert records["vip"]["holders"] == ["node2"]
    node1 = next(m for m in records["members"] if m["host"] == "node1")
    assert (node1["inventory_role"], node1["role"]) == ("primary", "backup")


def test_two_primaries_are_not_hidden() -> None:
    probes = healthy_probes()
    probes["node2"] = HostProbe("node2", agent_status("node2", "primary"), {"198.18.7.12"})
    records = build_report(inventory(), probes)["mirrors"]["records"]
    assert records["primary"] is None
    assert records["primaries"] == ["node1", "node2"]


def test_unreachable_member_is_reported_and_table_still_prints() -> None:
    probes = healthy_probes()
    probes["dr1"] = HostProbe("dr1", None, set(), "cannot reach 198.18.7.14 over SSH: timed out")
    report = build_report(inventory(), probes)
    dr1 = next(m for m in report["mirrors"]["records"]["members"] if m["host"] == "dr1")
    assert dr1["reachable"] is False and dr1["role"] is None
    console = Console(record=True, width=160)
    print_table(report, console)
    text = console.export_text()
    assert "unreachable" in text and "timed out" in text
    assert "VIP 198.18.7.100/24 on node1" in text
    assert "0 B, 0 rec, 0.0 s" in text  # lag in bytes, records and seconds
