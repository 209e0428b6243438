"""molecule/default verify, controller side: the `mirrorkit` CLI a user runs
against the converged scenario.

- `mirrorkit status --json` names the live primary, every member connected
  with zero lag (within STATUS_DEADLINE seconds) and the VIP on the primary;
- `mirrorkit apply --check` on the converged fleet predicts no change at all.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCENARIO = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).parent.parent))
INVENTORY = SCENARIO / "inventory.yml"
MIRRORKIT = str(Path(sys.executable).parent / "mirrorkit")
STATUS_DEADLINE = 30.0


def status() -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [MIRRORKIT, "status", "--json", str(INVENTORY)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_status_json_shows_the_converged_mirror() -> None:
    deadline = time.monotonic() + STATUS_DEADLINE
    while True:
        code, report = status()
        records = report["mirrors"]["records"]
        members = {m["host"]: m for m in records["members"]}
        settled = code == 0 and all(
            m["reachable"] and m["connected"] not in (False, None) for m in members.values()
        ) and all(
            m["lag_bytes"] == 0 for m in members.values() if m["role"] in ("backup", "async")
        )
        if settled or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert code == 0, report
    assert records["primary"] == "mol-node1"
    assert records["primaries"] == ["mol-node1"]
    assert records["vip"] == {"address": "198.18.8.100/24", "holders": ["mol-node1"]}
    assert {h: m["role"] for h, m in members.items()} == {
        "mol-node1": "primary", "mol-node2": "backup", "mol-arb1": "arbiter", "mol-dr1": "async",
    }
    assert members["mol-node1"]["connected"] == "3/3 peers"
    assert members["mol-node2"]["lag_bytes"] == 0 and members["mol-dr1"]["lag_bytes"] == 0


def test_apply_check_mode_predicts_no_change() -> None:
    proc = subprocess.run(
        [MIRRORKIT, "apply", "--check", str(INVENTORY)],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", proc.stdout, re.MULTILINE)
    assert {host for host, _ in recap} >= {"mol-node1", "mol-node2", "mol-arb1", "mol-dr1"}
    assert all(changed == "0" for _, changed in recap), recap
