"""The operation playbooks' filters (playbooks/filter_plugins/mirrorkit_ops.py):
one mirror's live layout from its agents' answers, and the checks that
refuse an operation with the reason an operator reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError

ROOT = Path(__file__).parents[2]
PLUGIN = ROOT / "playbooks" / "filter_plugins" / "mirrorkit_ops.py"

MIRRORS = {"records": {"paths": ["/srv/records"], "primary": "node1", "backup": "node2",
                       "arbiter": "arb1", "async": [{"host": "dr1", "kind": "dr"}]}}


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mirrorkit_ops_filters", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ops = _load()


def status(role: str, term: int = 3, **fields: Any) -> dict[str, Any]:
    """One agent's /status answer for mirror records."""
    m: dict[str, Any] = {"role": role, "term": term, "primary": "node1", "alive": True,
                         "fenced": False, "mode": "async",
                         "connected": True, "lag_bytes": 0, "lag_records": 0,
                         "lag_seconds": 0.0, "resyncing": False, "apply_failure": None,
                         "maintenance": False,
                         "ha": {"decision": "ok", "reason": "fine", "active": True,
                                "scheduled_switchover": None}}
    m.update(fields)
    return {"host": "x", "mirrors": {"records": m}}


def healthy(**overrides: Any) -> dict[str, Any]:
    live: dict[str, Any] = {"node1": status("primary"), "node2": status("backup"),
                            "arb1": status("arbiter"), "dr1": status("async")}
    live.update(overrides)
    return live


def layout(live: Any) -> dict[str, Any]:
    result: dict[str, Any] = ops.mirrorkit_op_live(MIRRORS, "records", live)
    return result


def test_live_layout_of_a_healthy_mirror() -> None:
    lay = layout(healthy())
    assert lay["primary"] == "node1" and lay["partner"] == "node2"
    assert lay["term"] == 3 and lay["problems"] == []
    assert lay["failover"] == ["node1", "node2"]
    assert lay["members"]["dr1"]["inventory_role"] == "async"
    assert "mirror records: live primary node1 (term 3)" in lay["report"]


def test_live_roles_win_over_the_inventory() -> None:
    lay = layout(healthy(node1=status("backup", 4), node2=status("primary", 4)))
    assert lay["primary"] == "node2" and lay["partner"] == "node1"


def test_uri_results_list_is_accepted_and_a_silent_member_is_no_answer() -> None:
    results = [{"item": "node1", "status": 200, "json": status("primary")},
               {"item": "node2", "status": -1, "msg": "connection refused"},
               {"item": "arb1", "unreachable": True}]
    lay = layout(results)
    assert lay["primary"] == "node1"
    assert lay["members"]["node2"]["answered"] is False
    assert "node2: no answer from its agent (inventory role backup)" in lay["report"]


def test_two_writable_primaries_in_one_term_is_no_primary() -> None:
    lay = layout(healthy(node2=status("primary")))
    assert lay["primary"] is None
    assert "node1, node2 all report being the writable primary in term 3" in lay["problems"][0]


def test_a_fenced_or_older_term_primary_is_not_the_primary() -> None:
    lay = layout(healthy(node1=status("primary", fenced=True)))
    assert lay["primary"] is None and "fenced" in lay["problems"][0]
    lay = layout(healthy(node1=status("primary", 3), node2=status("primary", 4)))
    assert lay["primary"] == "node2"


def test_unknown_mirror_is_a_clear_error() -> None:
    with pytest.raises(AnsibleFilterError, match="no mirror 'orders' in the inventory"):
        ops.mirrorkit_op_live(MIRRORS, "orders", {})


def check(live: dict[str, Any], to: str | None = None, bound: int = 1000) -> dict[str, Any]:
    result: dict[str, Any] = ops.mirrorkit_op_switchover_check(layout(live), to, bound)
    return result


def test_switchover_check_passes_for_a_connected_caught_up_backup() -> None:
    result = check(healthy())
    assert result["ok"] and result["from"] == "node1" and result["to"] == "node2"


@pytest.mark.parametrize(("backup", "words"), [
    (status("backup", connected=False), "not connected"),
    (status("backup", lag_bytes=5000), "5000 B behind (bound 1000 B"),
    (status("backup", lag_bytes=None), "None B behind"),
    (status("backup", resyncing=True), "resyncing"),
    (None, "does not answer"),
])
def test_switchover_check_refuses_an_unready_backup(backup: Any, words: str) -> None:
    result = check(healthy(node2=backup))
    assert not result["ok"] and words in result["reason"]


def test_switchover_check_refuses_an_async_target_and_no_primary() -> None:
    result = check(healthy(), to="dr1")
    assert not result["ok"] and "promote" in result["reason"]
    result = check(healthy(node1=None))
    assert not result["ok"] and "no member answers as the writable primary" in result["reason"]


def test_switchover_to_the_primary_itself_is_nothing_to_do() -> None:
    result = check(healthy(), to="node1")
    assert not result["ok"] and result["noop"]


def test_maintenance_on_the_backup_does_not_block_a_planned_switchover() -> None:
    result = check(healthy(node2=status("backup", maintenance=True)))
    assert result["ok"] and "maintenance is on at node2" in result["reason"]


def promote(live: dict[str, Any], host: str, force: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = ops.mirrorkit_op_promote_check(layout(live), host, force)
    return result


def test_a_dr_copy_is_promoted_planned_by_switchover_or_forced() -> None:
    planned = promote(healthy(node1=None), "dr1")
    assert not planned["ok"] and "switchover to it" in planned["reason"]
    forced = promote(healthy(node1=None), "dr1", force=True)
    assert forced["ok"], forced


def test_planned_promotion_is_refused_while_the_primary_is_writable() -> None:
    result = promote(healthy(), "node2")
    assert not result["ok"] and "switchover" in result["reason"]


def test_planned_promotion_of_the_backup_when_the_primary_is_gone_reports_the_gap() -> None:
    live = healthy(node1=None, node2=status("backup", connected=False, lag_bytes=300,
                                            lag_records=2, lag_seconds=4.5))
    result = promote(live, "node2")
    assert result["ok"] and result["gap_bytes"] == 300 and result["gap_records"] == 2
    assert result["warnings"] == []
    assert "2 records / 300 B / 4.5 s behind" in result["reason"]


def test_forced_promotion_explains_the_risk() -> None:
    result = promote(healthy(), "node2", force=True)
    assert result["ok"]
    text = " ".join(result["warnings"])
    assert "node1 still answers as the writable primary" in text and "quarantined" in text


def test_promoting_the_primary_or_the_arbiter_is_refused() -> None:
    assert "nothing to promote" in promote(healthy(), "node1")["reason"]
    assert "holds no data" in promote(healthy(), "arb1")["reason"]


def test_members_record_keeps_former_members_until_retired() -> None:
    first = ops.mirrorkit_op_members_record("", ["node1", "node2"])
    assert first == {"members": ["node1", "node2"], "former": []}
    second = ops.mirrorkit_op_members_record(json.dumps(first), ["node1", "node3"])
    assert second == {"members": ["node1", "node3"], "former": ["node2"]}
    # Still reported at the next apply, though it is in no earlier "members".
    third = ops.mirrorkit_op_members_record(json.dumps(second), ["node1", "node3"])
    assert third["former"] == ["node2"]
    retired = ops.mirrorkit_op_members_record(json.dumps(third), ["node1", "node3"], "node2")
    assert retired["former"] == []
    # A host that comes back into the mirror is no longer former.
    back = ops.mirrorkit_op_members_record(json.dumps(third), ["node1", "node2", "node3"])
    assert back["former"] == []


def test_a_broken_members_record_is_a_clear_error() -> None:
    with pytest.raises(AnsibleFilterError, match=r"not JSON.*remove it"):
        ops.mirrorkit_op_members_record("{oops", ["node1"])


def test_former_member_report_says_what_to_do() -> None:
    records = {"records": {"members": ["node1"], "former": ["node2", "old9"]}}
    lines = ops.mirrorkit_op_former_report(records, ["node1", "node2"])
    assert len(lines) == 2
    assert "node2 was a member at an earlier apply" in lines[0]
    assert "mirrorkit_op_host=node2" in lines[0] and "migrate" in lines[0]
    assert "no longer in the inventory's hosts: add it back to all.hosts" in lines[1]


def test_a_dr_copy_is_a_switchover_target_a_reporting_copy_is_not() -> None:
    ok = check(healthy(dr1=status("async", kind="dr")), "dr1")
    assert ok["ok"] and ok["to"] == "dr1", ok
    no = check(healthy(dr1=status("async", kind="reporting")), "dr1")
    assert not no["ok"] and "reporting copy is never promoted" in no["reason"]
