"""The operation playbooks against real agents on loopback: switchover.yml,
restore.yml, maintenance.yml and promote.yml run by ansible-playbook (local connection; each
"host" is an agent process with its own API port and control socket, given
as the hostvars mirrorkit_api_port and mirrorkit_control_socket)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_loopback import MIRROR, Cluster, make_cluster, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
FOUR = {"node1": ("primary", None), "node2": ("backup", None), "arb1": ("arbiter", None),
        "dr1": ("async", "dr")}
ADDRESSES = {"node1": "198.18.7.11", "node2": "198.18.7.12", "arb1": "198.18.7.13",
             "dr1": "198.18.7.14"}


@pytest.fixture
def four(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = make_cluster(tmp_path, FOUR, extra={
        "timeouts": {"heartbeat": 0.25, "qos": 1.0, "arbiter": 2.0}})
    for name in ("arb1", "node2", "dr1", "node1"):
        c.start(name)
    try:
        wait_for(lambda: c.code("node1", f"/primary?mirror={MIRROR}") == 200, "node1 primary")
        wait_for(lambda: c.mirror("node2").get("connected") and c.mirror("dr1").get("connected"),
                 "node2 and dr1 connected")
        yield c
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(c.dump_logs())
        for node in c.nodes.values():
            if node.proc is not None:
                os.kill(node.proc.pid, signal.SIGCONT)
        c.stop_all()


def inventory(c: Cluster) -> Path:
    data = str(c.nodes["node1"].root)
    hosts = {name: {"ansible_host": ADDRESSES[name], "mirrorkit_api_port": node.api_port,
                    "mirrorkit_control_socket": str(node.control_socket),
                    # the agents are processes of this test, not systemd units
                    "mirrorkit_agent_unit": ""}
             for name, node in c.nodes.items()}
    doc = {"all": {"hosts": hosts, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "mirrorkit_pki_dir": str(c.base / "controller-pki"),
        "mirrorkit_mirrors": {MIRROR: {
            "paths": [data], "primary": "node1", "backup": "node2", "arbiter": "arb1",
            "async": [{"host": "dr1", "kind": "dr"}]}}}}}
    path = c.base / "inventory.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def playbook(c: Cluster, name: str, *options: str, inventory_path: Path | None = None,
             **extra: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i",
               str(inventory_path or inventory(c)), str(ROOT / "playbooks" / name), *options]
    for key, value in extra.items():
        command += ["-e", f"{key}={value}"]
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def test_switchover_then_restore_by_the_playbooks(four: Cluster) -> None:
    c = four
    (c.nodes["node1"].root / "before.txt").write_text("term 1\n")
    wait_for(lambda: (c.nodes["node2"].root / "before.txt").exists(), "before.txt on node2")
    result = playbook(c, "switchover.yml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "write pause on the old primary" in result.stdout + result.stderr
    assert c.code("node2", f"/primary?mirror={MIRROR}") == 200
    assert c.mirror("node1")["role"] == "backup" and c.mirror("node1")["connected"]
    assert (c.nodes["node2"].root / "before.txt").read_text() == "term 1\n"

    result = playbook(c, "restore.yml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert c.code("node1", f"/primary?mirror={MIRROR}") == 200
    wait_for(lambda: c.mirror("node2").get("role") == "backup"
             and c.mirror("node2").get("connected"), "node2 follows node1 again")

    result = playbook(c, "restore.yml")
    assert result.returncode == 0 and "already the live primary" in result.stdout + result.stderr


def test_switchover_refuses_a_disconnected_backup_and_changes_nothing(four: Cluster) -> None:
    c = four
    c.stop("node2")
    wait_for(lambda: c.code("node1", f"/primary?mirror={MIRROR}") == 200, "node1 still primary")
    result = playbook(c, "switchover.yml")
    assert result.returncode != 0
    assert "Refusing the switchover: node2's agent does not answer" in result.stdout + result.stderr
    assert c.mirror("node1")["role"] == "primary"


def test_schedule_and_cancel_by_the_playbook(four: Cluster) -> None:
    c = four
    import time

    at = str(int(time.time()) + 3600)
    result = playbook(c, "switchover.yml", mirrorkit_op_at=at)
    assert result.returncode == 0, result.stdout[-4000:]
    assert c.mirror("node1")["ha"]["scheduled_switchover"]["at"] == float(at)
    result = playbook(c, "switchover.yml", mirrorkit_op_cancel="true")
    assert result.returncode == 0, result.stdout[-4000:]
    assert c.mirror("node1")["ha"]["scheduled_switchover"] is None
    assert c.mirror("node1")["role"] == "primary"


def test_promote_refuses_dr_and_a_planned_promotion_beside_a_writable_primary(
        four: Cluster) -> None:
    c = four
    result = playbook(c, "promote.yml", mirrorkit_op_host="dr1")
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "its planned promotion is a switchover to it" in out
    result = playbook(c, "promote.yml", mirrorkit_op_host="node2")
    assert result.returncode != 0
    assert "the primary node1 still answers as writable" in result.stdout + result.stderr
    assert c.mirror("node1")["role"] == "primary" and c.mirror("node2")["role"] == "backup"


TASKS_OK = """
- name: Test maintenance | leave a marker
  ansible.builtin.copy:
    dest: "{marker}"
    content: "maintained {{{{ inventory_hostname }}}}\\n"
    mode: "0644"
"""

TASKS_FAIL = """
- name: Test maintenance | a task that fails
  ansible.builtin.command: /bin/false
  changed_when: false
"""


def test_maintenance_of_the_primary_switches_away_and_back(four: Cluster) -> None:
    c = four
    marker = c.base / "marker"
    tasks = c.base / "tasks.yml"
    tasks.write_text(TASKS_OK.format(marker=marker))
    result = playbook(c, "maintenance.yml", mirrorkit_op_host="node1",
                      mirrorkit_op_tasks=str(tasks), mirrorkit_op_switch_back="true")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    assert marker.read_text() == "maintained node1\n"
    # switched away (node2 took over), then back; maintenance off again on both
    assert "node1 -> node2" in out and "node2 -> node1" in out
    assert c.code("node1", f"/primary?mirror={MIRROR}") == 200
    assert c.mirror("node1")["maintenance"] is False
    assert c.mirror("node2")["maintenance"] is False


def test_failed_maintenance_tasks_turn_maintenance_off_and_say_so(four: Cluster) -> None:
    c = four
    tasks = c.base / "tasks.yml"
    tasks.write_text(TASKS_FAIL)
    result = playbook(c, "maintenance.yml", mirrorkit_op_host="node2",
                      mirrorkit_op_tasks=str(tasks))
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Maintenance of node2 failed at Maintenance | the operator's tasks" in out
    assert "Automatic failover is allowed again on node1, node2" in out
    assert c.mirror("node1")["maintenance"] is False
    assert c.mirror("node2")["maintenance"] is False
    assert c.mirror("node1")["role"] == "primary"


def migrated_inventory(c: Cluster) -> Path:
    """The inventory edited for `migrate --from node1 --to node5`: node2
    (which stays) primary, node5 (new, no agent yet) backup, node1 kept in
    the hosts only."""
    path = inventory(c)
    doc = yaml.safe_load(path.read_text())
    doc["all"]["hosts"]["node5"] = {"ansible_host": "198.18.7.15", "mirrorkit_api_port": 1}
    doc["all"]["vars"]["mirrorkit_mirrors"][MIRROR].update(primary="node2", backup="node5")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_migrate_pre_check_against_live_agents(four: Cluster) -> None:
    """Check mode stops after the pre-check: it finds node1 (out of the
    mirror in the edited inventory) still the live primary, able to switch
    over to node2, and changes nothing. Unedited, it is refused."""
    c = four
    result = playbook(c, "migrate.yml", mirrorkit_op_from="node1", mirrorkit_op_to="node5")
    assert result.returncode != 0
    assert "node1 is still a member of records in the inventory" in (
        result.stdout + result.stderr).replace("\n", " ").replace("  ", " ")

    result = playbook(c, "migrate.yml", "--check", inventory_path=migrated_inventory(c),
                      mirrorkit_op_from="node1", mirrorkit_op_to="node5")
    out = result.stdout + result.stderr
    assert "Check mode: the pre-check above passed and nothing was changed" in out, out[-4000:]
    assert "node5: no answer from its agent" in out
    assert c.mirror("node1")["role"] == "primary" and c.mirror("node2")["role"] == "backup"



def test_promote_of_a_backup_that_lost_both_needs_force_and_explains_it(four: Cluster) -> None:
    c = four
    c.stop("node1")
    c.stop("arb1")
    wait_for(lambda: c.mirror("node2").get("connected") is False, "node2 lost node1")
    result = playbook(c, "promote.yml", mirrorkit_op_host="node2")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "node2 refused:" in out and "--force" in out  # the agent's own reason
    assert c.mirror("node2")["role"] == "backup"

    result = playbook(c, "promote.yml", mirrorkit_op_host="node2", mirrorkit_op_force="true",
                      mirrorkit_op_wait_seconds="5")
    out = result.stdout + result.stderr
    assert "WARNING: forced promotion" in out and "gap at promotion" in out
    assert c.mirror("node2")["term"] == 2
    # Alone (no backup, no arbiter answers), a forced primary is writable
    # anyway: the lease is waived until a peer first answers it.
    assert result.returncode == 0, out[-3000:]
    assert c.code("node2", f"/primary?mirror={MIRROR}") == 200
    c.start("arb1")  # the arbiter back: the lease applies again, still writable
    wait_for(lambda: c.code("node2", f"/primary?mirror={MIRROR}") == 200, "node2 writable")
