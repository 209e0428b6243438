"""The operation playbooks against real agents on loopback: switchover.yml,
restore.yml, maintenance.yml and promote.yml run by ansible-playbook (local connection; each
"host" is an agent process with its own API port and control socket, given
as the hostvars mirrorkit_api_port and mirrorkit_control_socket)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from four_cluster import (  # type: ignore[import-not-found]
    START_ORDER,
    failed,
    print_logs,
    start_four,
    stop_four,
)
from test_loopback import MIRROR, Cluster, wait_for  # type: ignore[import-not-found]

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
ADDRESSES = {"node1": "198.18.7.11", "node2": "198.18.7.12", "arb1": "198.18.7.13",
             "dr1": "198.18.7.14"}
RESTORE_DEADLINE = 60.0


# Starting four agents (PKI, processes, the backup's first connection) is a
# good part of each test here, and most tests leave the cluster as they found
# it or close to it: they share one. Before each test ``restore_four`` brings
# it back to the start state (every member running, node1 the writable
# primary, node2 its connected backup, dr1 connected, no maintenance, no
# scheduled switchover) and checks that it is there; a cluster that does not
# get there, or whose test failed, is replaced by a fresh one. A test that
# needs a fresh cluster (a term count, members it kills) asks for
# ``fresh_four``.


def at_start_state(c: Cluster) -> bool:
    if c.code("node1", f"/primary?mirror={MIRROR}") != 200:
        return False
    n1, n2, dr = c.mirror("node1"), c.mirror("node2"), c.mirror("dr1")
    return bool(n1.get("role") == "primary" and n1.get("maintenance") is False
                and (n1.get("ha") or {}).get("scheduled_switchover", "?") is None
                and n2.get("role") == "backup" and n2.get("connected")
                and n2.get("maintenance") is False
                and dr.get("role") == "async" and dr.get("connected")
                and c.status("arb1") is not None)


def restore_four(c: Cluster) -> bool:
    """Start what a test stopped, resume what it paused; True once the
    cluster is at the start state, False if it does not get there."""
    for name in START_ORDER:
        node = c.nodes[name]
        if node.proc is not None and node.proc.poll() is not None:
            return False  # an agent died: not something to paper over
        if node.proc is None:
            c.start(name)
        else:
            os.kill(node.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + RESTORE_DEADLINE
    while not at_start_state(c):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture(scope="module")
def shared_four() -> Iterator[dict[str, Cluster]]:
    held: dict[str, Cluster] = {}
    yield held
    if "c" in held:
        stop_four(held.pop("c"))


@pytest.fixture
def four(shared_four: dict[str, Cluster], tmp_path_factory: pytest.TempPathFactory,
         request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The module's shared cluster, at the start state."""
    c = shared_four.get("c")
    if c is not None and not restore_four(c):
        print("the shared cluster did not come back to the start state; a fresh one")
        print_logs(c)
        stop_four(shared_four.pop("c"))
        c = None
    if c is None:
        c = shared_four["c"] = start_four(tmp_path_factory.mktemp("four"))
    yield c
    if failed(request):  # whatever it left behind is not for the next test
        print_logs(c)
        stop_four(shared_four.pop("c"))


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


def test_maintenance_of_the_primary_switches_away_and_back(four: Cluster,
                                                           tmp_path: Path) -> None:
    c = four
    marker = tmp_path / "marker"  # this test's own: the cluster's base is shared
    tasks = tmp_path / "tasks.yml"
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


def test_failed_maintenance_tasks_turn_maintenance_off_and_say_so(four: Cluster,
                                                                 tmp_path: Path) -> None:
    c = four
    tasks = tmp_path / "tasks.yml"
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



def test_promote_of_a_backup_that_lost_both_needs_force_and_explains_it(
        fresh_four: Cluster) -> None:
    c = fresh_four
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
