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


def member(name: str) -> Any:
    import testinfra

    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def mirrorkit(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([MIRRORKIT, *args, str(INVENTORY)], capture_output=True, text=True,
                          timeout=600, check=False, env={**os.environ, "NO_COLOR": "1"})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def wait_for(path: str, host: str, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while not member(host).file(path).exists:
        assert time.monotonic() < end, f"{path} did not reach {host} within {deadline} s"
        time.sleep(0.5)


def test_verify_finds_a_damaged_copy_and_repair_fixes_it() -> None:
    primary, backup = member("mol-node1"), member("mol-node2")
    primary.check_output("mkdir -p /srv/records/verify && head -c 300000 /dev/urandom "
                         "> /srv/records/verify/v.bin")
    wait_for("/srv/records/verify/v.bin", "mol-node2")
    wait_for("/srv/records/verify/v.bin", "mol-dr1")
    time.sleep(2)  # let the last block land before damaging it behind the agent's back
    backup.check_output("printf XXXX | dd of=/srv/records/verify/v.bin bs=1 seek=70000 "
                        "conv=notrunc 2>/dev/null")
    found = mirrorkit("verify", "--json")
    assert found.returncode == 1, found.stdout
    report = json.loads(found.stdout)["mirrors"]["records"]
    node2 = next(m for m in report["members"] if m["host"] == "mol-node2")
    assert "/srv/records/verify/v.bin" in json.dumps(node2["different"])
    repaired = mirrorkit("verify", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr


def test_delete_orphans_moves_them_to_quarantine_with_a_report() -> None:
    dr = member("mol-dr1")
    dr.check_output("echo stray > /srv/records/stray-orphan.txt")
    proc = mirrorkit("verify", "--delete-orphans")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not dr.file("/srv/records/stray-orphan.txt").exists
    reports = dr.check_output("cat /var/lib/mirrorkit/records/quarantine/*/REPORT.txt")
    assert "stray-orphan.txt" in reports
    kept = dr.check_output("find /var/lib/mirrorkit/records/quarantine -name stray-orphan.txt")
    assert kept.strip(), "the orphan must be kept in quarantine, not deleted"


def test_resync_command_resends_only_changed_blocks() -> None:
    backup = member("mol-node2")
    backup.check_output("printf YYYY | dd of=/srv/records/verify/v.bin bs=1 seek=130000 "
                        "conv=notrunc 2>/dev/null")
    proc = mirrorkit("resync", "--mirror", "records", "--member", "mol-node2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # One damaged 64 KiB block is what moves, not the 300 kB file.
    assert "65536 of" in " ".join(proc.stdout.split()), proc.stdout
    assert mirrorkit("verify").returncode == 0
