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


def test_a_disconnected_receiver_shows_the_primarys_view_of_its_lag() -> None:
    """The lab's case: a backup 1,200 records behind and disconnected does not
    know the primary's LSN; the primary does, and the table uses its view."""
    probes = healthy_probes()
    peers = {
        "node2": {"role": "backup", "connected": False, "state": "disconnected",
                  "acked_lsn": 300, "lag_bytes": 96_000, "lag_records": 1200,
                  "lag_seconds": 75.5},
        "dr1": {"role": "async", "connected": True, "acked_lsn": 1500, "lag_bytes": 0,
                "lag_records": 0, "lag_seconds": 0.0},
    }
    probes["node1"] = HostProbe("node1", agent_status("node1", "primary", lsn=1500,
                                                      peers=peers), {"198.18.7.100"})
    probes["node2"] = HostProbe("node2", agent_status(
        "node2", "backup", connected=False, lsn=300, applied_lsn=300, lag_bytes=0,
        lag_records=0, lag_seconds=75.4), {"198.18.7.12"})
    report = build_report(inventory(), probes)
    node2 = next(m for m in report["mirrors"]["records"]["members"] if m["host"] == "node2")
    assert (node2["lag_records"], node2["lag_bytes"], node2["lag_source"]) == (
        1200, 96_000, "primary")
    console = Console(record=True, width=160)
    print_table(report, console)
    assert "96000 B, 1200 rec, 75.5 s" in console.export_text()
    # the primary unreachable: the receiver's own view, said to be its own
    probes["node1"] = HostProbe("node1", None, set(), "cannot reach node1")
    node2 = next(m for m in build_report(inventory(), probes)["mirrors"]["records"]["members"]
                 if m["host"] == "node2")
    assert (node2["lag_seconds"], node2["lag_source"]) == (75.4, "self")


def test_resyncing_member_and_member_errors_are_shown() -> None:
    probes = healthy_probes()
    resync = {"id": 1, "mode": "checksum", "state": "copying", "files_total": 10,
              "files_done": 4, "bytes_total": 1000, "bytes_done": 420, "rate": 1e6,
              "eta_seconds": 1.0}
    probes["dr1"] = HostProbe("dr1", agent_status("dr1", "async", resyncing=True,
                                                  resync=resync, lag_records=900),
                              {"198.18.7.14"})
    probes["node2"] = HostProbe("node2", agent_status(
        "node2", "backup", alive=False,
        error="REFUSED record LSN 7 (WRITE '../x'): '..' in path; mirror stopped"),
        {"198.18.7.12"})
    probes["node1"] = HostProbe("node1", agent_status(
        "node1", "primary", alive=False, error="capture failed: tree gone; restarting in 4 s",
        peers={}), {"198.18.7.11"})
    report = build_report(inventory(), probes)
    by_host = {m["host"]: m for m in report["mirrors"]["records"]["members"]}
    assert by_host["dr1"]["resyncing"] == "42%"
    assert by_host["node2"]["alive"] is False
    console = Console(record=True, width=200)
    print_table(report, console)
    text = console.export_text()
    assert "resyncing 42% (0 B, 900 rec, 0.0 s)" in text
    assert "records/node2: REFUSED record LSN 7" in text
    assert "records/node1: capture failed: tree gone" in text


def test_maintenance_ha_decision_and_quarantine_are_shown_and_passed_through() -> None:
    probes = healthy_probes()
    peers = {h: {"connected": True} for h in ("node2", "arb1", "dr1")}
    scheduled = {"at": 1796180400.0, "to": "node2"}
    probes["node1"] = HostProbe("node1", agent_status(
        "node1", "primary", peers=peers, maintenance=True,
        ha={"decision": "no action", "reason": "I am the primary with a valid lease",
            "active": None, "lease_seconds": 0.8, "scheduled_switchover": scheduled},
        quarantine={"reports": 2, "last": "/var/lib/mirrorkit/records/quarantine/d-1/REPORT"}),
        {"198.18.7.11", "198.18.7.100"})
    probes["node2"] = HostProbe("node2", agent_status(
        "node2", "backup", maintenance=True,
        ha={"decision": "no failover", "reason": "maintenance mode is on", "active": False,
            "lease_seconds": None, "scheduled_switchover": None},
        quarantine={"reports": 0, "last": None}), {"198.18.7.12"})
    report = build_report(inventory(), probes)
    records = report["mirrors"]["records"]
    by_host = {m["host"]: m for m in records["members"]}
    assert by_host["node1"]["quarantine"]["reports"] == 2  # --json passes it through
    assert by_host["node2"]["ha"]["active"] is False
    assert by_host["dr1"]["ha"] is None and by_host["dr1"]["maintenance"] is None
    assert records["maintenance"] == "on"
    assert records["scheduled_switchover"] == scheduled
    console = Console(record=True, width=240)
    print_table(report, console)
    text = console.export_text()
    assert "MAINTENANCE, no failover, NOT active" in text
    assert "MAINTENANCE ON (no automatic failover)" in text
    assert "2 reports" in text
    assert "records/node1: holds quarantined data: 2 report(s), latest /var/lib/" in text
    assert "records/node2: HA no failover: maintenance mode is on" in text
    assert "switchover to node2 scheduled for 2026-12-02T03:00:00Z" in text
    # the failover members disagree: said so, not hidden
    probes["node2"].status["mirrors"]["records"]["maintenance"] = False  # type: ignore[index]
    assert build_report(inventory(), probes)["mirrors"]["records"]["maintenance"] == "partial"
    # an agent that does not report them yet: nothing invented
    plain = build_report(inventory(), healthy_probes())["mirrors"]["records"]
    assert plain["maintenance"] is None and plain["scheduled_switchover"] is None


def test_agent_text_in_the_table_is_not_markup_or_control_characters() -> None:
    probes = healthy_probes()
    probes["node2"] = HostProbe("node2", agent_status(
        "node2", "backup", ha={"decision": "[red]x\n", "reason": "r\x1b[2J"}), {"198.18.7.12"})
    console = Console(record=True, width=240)
    print_table(build_report(inventory(), probes), console)
    text = console.export_text()
    assert "[red]x\\n" in text and "r\\x1b[2J" in text
