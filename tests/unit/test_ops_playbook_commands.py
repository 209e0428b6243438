"""The operation commands that run a playbook (`maintenance run`, `restore`,
`migrate`): the exact ansible-playbook command line they build, and the
errors they give before Ansible starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mirrorkit import cli
from mirrorkit.commands import playbook
from mirrorkit.project import project_root

ROOT = Path(__file__).parents[2]
LAB = ROOT / "inventories" / "lab.yml"
MULTI = Path(__file__).parent / "inventories" / "multi.yml"
EXAMPLE_TASKS = ROOT / "examples" / "maintenance-tasks.yml"

MIGRATED = """
all:
  hosts:
    node1: {ansible_host: 198.18.7.11}
    node2: {ansible_host: 198.18.7.12}
    node5: {ansible_host: 198.18.7.15}
    arb1: {ansible_host: 198.18.7.13}
  vars:
    mirrorkit_mirrors:
      records:
        paths: [/srv/records]
        primary: node2
        backup: node5
        arbiter: arb1
"""


class Ran:
    """What subprocess.run was asked to run (the playbook itself is not run)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, returncode: int = 0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.returncode = returncode
        monkeypatch.setattr(playbook.subprocess, "run", self)

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append({"command": command, **kwargs})
        return subprocess.CompletedProcess(command, self.returncode)


def ansible_playbook() -> str:
    candidate = Path(sys.executable).parent / "ansible-playbook"
    return str(candidate) if candidate.exists() else "ansible-playbook"


def expected(inventory: Path, name: str, extra: dict[str, Any]) -> list[str]:
    return [ansible_playbook(), "-i", str(inventory.resolve()),
            str(project_root() / "playbooks" / name), "-e", json.dumps(extra, sort_keys=True)]


def test_maintenance_run_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = Ran(monkeypatch)
    status = cli.main(["maintenance", "run", str(LAB), "--host", "node1",
                       "--tasks", str(EXAMPLE_TASKS), "--switch-back"])
    assert status == 0
    (call,) = ran.calls
    assert call["command"] == expected(LAB, "maintenance.yml", {
        "mirrorkit_op_mirror": "records", "mirrorkit_op_host": "node1",
        "mirrorkit_op_tasks": str(EXAMPLE_TASKS.resolve()), "mirrorkit_op_switch_back": True})
    assert call["cwd"] == project_root()
    assert call["env"]["ANSIBLE_CONFIG"] == str(project_root() / "ansible.cfg")


def test_maintenance_run_without_switch_back_passes_false(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = Ran(monkeypatch)
    assert cli.main(["maintenance", "run", str(LAB), "--host", "dr1",
                     "--tasks", str(EXAMPLE_TASKS)]) == 0
    extra = json.loads(ran.calls[0]["command"][-1])
    assert extra["mirrorkit_op_switch_back"] is False and extra["mirrorkit_op_host"] == "dr1"


def test_restore_defaults_to_the_inventorys_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = Ran(monkeypatch)
    assert cli.main(["restore", str(LAB)]) == 0
    assert ran.calls[0]["command"] == expected(
        LAB, "restore.yml", {"mirrorkit_op_mirror": "records", "mirrorkit_op_to": "node1"})


def test_restore_in_a_multi_mirror_inventory(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = Ran(monkeypatch)
    assert cli.main(["restore", str(MULTI), "--mirror", "orders", "--to", "node4"]) == 0
    assert ran.calls[0]["command"] == expected(
        MULTI, "restore.yml", {"mirrorkit_op_mirror": "orders", "mirrorkit_op_to": "node4"})


def test_migrate_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(MIGRATED)
    ran = Ran(monkeypatch)
    assert cli.main(["migrate", str(inventory), "--from", "node1", "--to", "node5"]) == 0
    assert ran.calls[0]["command"] == expected(inventory, "migrate.yml", {
        "mirrorkit_op_mirror": "records", "mirrorkit_op_from": "node1", "mirrorkit_op_to": "node5"})


def test_a_failed_playbook_is_exit_1_with_a_line(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    Ran(monkeypatch, returncode=2)
    assert cli.main(["restore", str(LAB)]) == 1
    assert "restore failed (ansible-playbook exit 2)" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["restore", str(MULTI)], "the inventory has 2 mirrors"),
    (["restore", str(MULTI), "--mirror", "nope"], "no mirror 'nope' in the inventory"),
])
def test_a_wrong_mirror_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], message: str) -> None:
    ran = Ran(monkeypatch)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert ran.calls == []


@pytest.mark.parametrize(("argv", "message"), [
    (["restore", str(LAB), "--to", "dr1"], "--to dr1: not a failover member of records"),
    (["maintenance", "run", str(LAB), "--host", "node9", "--tasks", str(EXAMPLE_TASKS)],
     "--host node9: not a member of records"),
    (["maintenance", "run", str(LAB), "--host", "node1", "--tasks", "/no/such/tasks.yml"],
     "--tasks /no/such/tasks.yml: no such file"),
    (["migrate", str(LAB), "--from", "node1", "--to", "node2"],
     "--from node1: still a member of records"),
    (["migrate", str(LAB), "--from", "node7", "--to", "node2"], "--from node7: not a host"),
    (["migrate", str(LAB), "--from", "node1", "--to", "node1"], "are both node1"),
])
def test_bad_arguments_are_clear_errors_before_ansible(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], message: str) -> None:
    ran = Ran(monkeypatch)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert ran.calls == []


def test_migrate_to_a_host_that_is_not_the_backup_is_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(MIGRATED.replace("primary: node2\n        backup: node5",
                                          "primary: node5\n        backup: node2"))
    ran = Ran(monkeypatch)
    assert cli.main(["migrate", str(inventory), "--from", "node1", "--to", "node5"]) == 1
    assert "--to node5: must be the backup of records" in capsys.readouterr().err
    assert ran.calls == []


def test_an_invalid_inventory_stops_before_ansible(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = Ran(monkeypatch)
    invalid = Path(__file__).parent / "inventories" / "invalid.yml"
    assert cli.main(["restore", str(invalid)]) == 1
    assert ran.calls == []
