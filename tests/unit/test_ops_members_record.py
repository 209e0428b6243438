"""The applied-members record through a real ansible-playbook run of the
tasks site.yml uses (playbooks/tasks/members_record*.yml): a host taken out
of a mirror is reported at every apply until it is retired."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_tasks: {tasks}/members_record.yml
    - ansible.builtin.debug:
        msg: >-
          REPORT {{{{ __mirrorkit_records | mirrorkit_op_former_report(groups['all'])
          | to_json }}}}
    - ansible.builtin.include_tasks: {tasks}/members_record_write.yml
"""


def inventory(tmp: Path, backup: str) -> Path:
    doc = {"all": {"hosts": {"node1": {"ansible_host": "198.18.7.11"},
                             "node2": {"ansible_host": "198.18.7.12"},
                             "node5": {"ansible_host": "198.18.7.15"}},
                   "vars": {"ansible_connection": "local",
                            "ansible_python_interpreter": sys.executable,
                            "mirrorkit_pki_dir": str(tmp / "pki"),
                            "mirrorkit_mirrors": {"records": {
                                "paths": ["/srv/records"], "primary": "node1",
                                "backup": backup}}}}}
    path = tmp / f"inventory-{backup}.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def apply_record(tmp: Path, backup: str) -> list[str]:
    play = tmp / "play.yml"
    play.write_text(PLAY.format(tasks=ROOT / "playbooks" / "tasks"))
    plugins = os.pathsep.join(str(ROOT / d) for d in (
        "playbooks/filter_plugins", "roles/mirrorkit_agent/filter_plugins"))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_FILTER_PLUGINS=plugins, ANSIBLE_NOCOLOR="1")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i",
         str(inventory(tmp, backup)), str(play)],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    line = next(x for x in result.stdout.splitlines() if "REPORT " in x)
    report: list[str] = json.loads(line.split("REPORT ", 1)[1].rstrip('"').replace('\\"', '"'))
    return report


def test_a_host_that_left_the_mirror_is_reported_until_it_comes_back(tmp_path: Path) -> None:
    assert apply_record(tmp_path, "node2") == []
    record = tmp_path / "pki" / "records" / "applied-members.json"
    assert json.loads(record.read_text()) == {"members": ["node1", "node2"], "former": []}
    assert record.stat().st_mode & 0o777 == 0o600
    # node5 replaces node2: node2 is reported, at this apply and the next
    for _ in range(2):
        (line,) = apply_record(tmp_path, "node5")
        assert "node2 was a member at an earlier apply" in line
        assert "playbooks/retire.yml -e mirrorkit_op_host=node2" in line
    # node2 back in the mirror: no longer former; node5, which left, is
    (line,) = apply_record(tmp_path, "node2")
    assert "node5 was a member" in line and "node2" not in line.split(" was ")[0]
