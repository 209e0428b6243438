"""The scheduling examples (examples/mirrorkit-maintenance.service, .timer,
.cron) run exactly a command the CLI accepts: a typo in them fails here,
not at 03:30 on a Sunday."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from configparser import ConfigParser
from pathlib import Path

import pytest
import yaml

from mirrorkit.cli import build_parser
from mirrorkit.commands import maintenance_run

EXAMPLES = Path(__file__).parents[2] / "examples"


def _command_args(argv: list[str]) -> list[str]:
    assert Path(argv[0]).name == "mirrorkit", f"runs {argv[0]}, not mirrorkit"
    return argv[1:]


def _check_maintenance_run(args: list[str]) -> None:
    parsed = build_parser().parse_args(args)
    assert parsed.func is maintenance_run.run
    assert parsed.host == "node2" and parsed.switch_back is True
    assert parsed.tasks.endswith(".yml") and parsed.inventory.endswith(".yml")


def _unit(name: str) -> ConfigParser:
    unit = ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(EXAMPLES / name)
    return unit


def test_the_service_runs_a_valid_maintenance_run_command() -> None:
    service = _unit("mirrorkit-maintenance.service")
    assert service["Service"]["Type"] == "oneshot"
    _check_maintenance_run(_command_args(shlex.split(service["Service"]["ExecStart"])))


def test_the_cron_line_runs_a_valid_maintenance_run_command() -> None:
    lines = [line for line in (EXAMPLES / "mirrorkit-maintenance.cron").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(lines) == 1
    words = shlex.split(lines[0])
    schedule, user, command = words[:5], words[5], words[6:]
    assert schedule == ["30", "3", "*", "*", "0"] and user
    assert command[:3] == ["flock", "-n", "/tmp/mirrorkit-maintenance.lock"]
    command = [w for w in command[3:] if not w.startswith((">", "2>"))]
    _check_maintenance_run(_command_args(command))


def test_the_timer_starts_the_service_weekly() -> None:
    timer = _unit("mirrorkit-maintenance.timer")
    assert timer["Timer"]["OnCalendar"] == "Sun *-*-* 03:30:00"
    assert timer["Install"]["WantedBy"] == "timers.target"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed: OnCalendar syntax not checked")
    subprocess.run([analyze, "calendar", timer["Timer"]["OnCalendar"]], check=True,
                   capture_output=True, timeout=60)


def test_the_example_tasks_file_is_a_list_of_named_fqcn_tasks() -> None:
    tasks = yaml.safe_load((EXAMPLES / "maintenance-tasks.yml").read_text())
    assert isinstance(tasks, list) and tasks
    for task in tasks:
        assert task["name"]
        modules = [k for k in task if k.startswith("ansible.builtin.")]
        assert len(modules) == 1, task
