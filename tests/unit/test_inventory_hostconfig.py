"""Per-host agent config, keepalived instances and PKI request, through the
Python API, the Ansible filter functions, and a real ansible-playbook run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from mirrorkit.inventory import load_inventory
from mirrorkit.inventory.hostconfig import host_config, pki_members, vip_instances

ROOT = Path(__file__).parents[2]
LAB = ROOT / "inventories" / "lab.yml"
MULTI = Path(__file__).parent / "inventories" / "multi.yml"
PLUGINS = ROOT / "roles" / "mirrorkit_agent" / "filter_plugins"

# docs/architecture.md, "Agent config", for node1 of the lab inventory
EXPECTED_NODE1 = yaml.safe_load("""
host: node1
api: {listen: 127.0.0.1, port: 7480}
control_socket: /run/mirrorkit/control.sock
state_dir: /var/lib/mirrorkit
mirrors:
  records:
    role: primary
    kind: null
    mode: async
    port: 7410
    paths: [/srv/records]
    exclude: []
    targets: [/srv/records]
    timeouts: {heartbeat: 0.25, qos: 1.0, arbiter: 2.0}
    tls: {ca: /etc/mirrorkit/pki/records/ca.crt, cert: /etc/mirrorkit/pki/records/member.crt,
          key: /etc/mirrorkit/pki/records/member.key}
    members:
      node1: {address: 198.18.7.11, role: primary}
      node2: {address: 198.18.7.12, role: backup}
      arb1:  {address: 198.18.7.13, role: arbiter}
      dr1:   {address: 198.18.7.14, role: async, kind: dr}
    hooks: {on_promote: systemctl start records-app, on_demote: systemctl stop records-app}
    max_lag_on_failover: 1048576
    hook_timeout: 30.0
    health: {interval: 5.0, timeout: 5.0, failures: 3}
""")


def test_lab_node1_config_matches_architecture() -> None:
    assert host_config(load_inventory(LAB), "node1") == EXPECTED_NODE1


def test_config_only_has_the_hosts_mirrors() -> None:
    inv = load_inventory(MULTI)
    assert list(host_config(inv, "node1")["mirrors"]) == ["records"]
    arb = host_config(inv, "arb1")
    assert sorted(arb["mirrors"]) == ["orders", "records"]
    assert arb["api"]["port"] == 7481
    assert arb["mirrors"]["orders"]["targets"] == []
    assert arb["mirrors"]["orders"]["port"] == 7411
    dr = host_config(inv, "dr1")["mirrors"]
    assert dr["records"]["targets"] == ["/srv/replicas/records/srv/records"]
    assert dr["orders"]["targets"] == [
        "/srv/replicas/orders/srv/orders", "/srv/replicas/orders/var/lib/orders"]
    assert dr["orders"]["role"] == "async" and dr["orders"]["kind"] == "dr"
    assert dr["orders"]["timeouts"] == {"heartbeat": 0.5, "qos": 4.0, "arbiter": 6.0}
    assert dr["orders"]["max_lag_on_failover"] == 65536
    assert dr["orders"]["hook_timeout"] == 10.0
    assert dr["orders"]["health"] == {"interval": 2.0, "timeout": 1.5, "failures": 5}
    assert dr["records"]["max_lag_on_failover"] == 1 << 20  # the default, written out
    rep = host_config(inv, "rep1")["mirrors"]["records"]
    assert rep["kind"] == "reporting"
    assert rep["members"]["rep1"] == {"address": "198.18.9.15", "role": "async",
                                      "kind": "reporting"}
    assert rep["hooks"] == {"on_promote": "systemctl start records-app",
                            "on_demote": "systemctl stop records-app"}
    assert host_config(inv, "rep1")["mirrors"].keys() == {"records"}


def test_vip_instances_only_for_failover_members() -> None:
    inv = load_inventory(MULTI)
    assert vip_instances(inv, "node1") == [{
        "mirror": "records", "address": "198.18.7.100", "prefix": 24, "interface": "eth0",
        "router_id": inv.mirrors["records"].vip.router_id,  # type: ignore[union-attr]
        "priority": 150, "unicast_src_ip": "198.18.7.11", "unicast_peers": ["198.18.7.12"],
    }]
    node4 = vip_instances(inv, "node4")
    assert [(v["mirror"], v["router_id"], v["priority"], v["unicast_peers"]) for v in node4] == [
        ("orders", 52, 100, ["198.18.8.21"])]
    assert vip_instances(inv, "arb1") == []
    assert vip_instances(inv, "dr1") == []


def test_pki_members() -> None:
    members = pki_members(load_inventory(MULTI))
    assert members["orders"] == {
        "node3": ["198.18.8.21", "failover"], "node4": ["198.18.8.22", "failover"],
        "arb1": ["198.18.9.13", "arbiter"], "dr1": ["198.18.9.14", "async"]}
    assert members["records"]["rep1"] == ["198.18.9.15", "async"]


def _filters() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mirrorkit_filters", PLUGINS / "mirrorkit_filters.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lab_vars() -> tuple[Any, dict[str, dict[str, Any]]]:
    data = yaml.safe_load(LAB.read_text())["all"]
    return data["vars"]["mirrorkit_mirrors"], data["hosts"]


def test_filter_module_functions() -> None:
    filters = _filters().FilterModule().filters()
    mirrors, hostvars = _lab_vars()
    assert filters["mirrorkit_host_config"](mirrors, "node1", hostvars) == EXPECTED_NODE1
    assert filters["mirrorkit_vip_instances"](mirrors, "node2", hostvars)[0]["priority"] == 100
    assert filters["mirrorkit_pki_members"](mirrors, hostvars)["records"]["arb1"] == [
        "198.18.7.13", "arbiter"]


def test_filter_fails_with_every_error_not_a_traceback() -> None:
    from ansible.errors import AnsibleFilterError  # type: ignore[import-untyped]

    module = _filters()
    mirrors, hostvars = _lab_vars()
    mirrors["records"].update(mode="fast", backup="ghost")
    with pytest.raises(AnsibleFilterError) as info:
        module.mirrorkit_host_config(mirrors, "node1", hostvars)
    assert "field mode" in str(info.value) and "field backup" in str(info.value)
    mirrors, hostvars = _lab_vars()
    with pytest.raises(AnsibleFilterError, match="not an inventory host"):
        module.mirrorkit_host_config(mirrors, "nobody", hostvars)


def test_filters_in_a_real_playbook(tmp_path: Path) -> None:
    playbook = tmp_path / "play.yml"
    playbook.write_text("""
- hosts: node2
  gather_facts: false
  tasks:
    - ansible.builtin.debug:
        msg:
          config: "{{ mirrorkit_mirrors | mirrorkit_host_config(inventory_hostname, hostvars) }}"
          vip: "{{ mirrorkit_mirrors | mirrorkit_vip_instances(inventory_hostname, hostvars) }}"
          pki: "{{ mirrorkit_mirrors | mirrorkit_pki_members(hostvars) }}"
""")
    env = dict(os.environ, ANSIBLE_FILTER_PLUGINS=str(PLUGINS), ANSIBLE_STDOUT_CALLBACK="default",
               ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_NOCOLOR="1")
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    proc = subprocess.run([str(playbook_bin), "-i", str(LAB), str(playbook)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # default callback: "ok: [node2] => {json}" followed by the recap
    body = proc.stdout.split("ok: [node2] => ", 1)[1].split("\nPLAY RECAP", 1)[0]
    msg = json.loads(body)["msg"]
    assert msg["config"]["mirrors"]["records"]["role"] == "backup"
    assert msg["config"]["mirrors"]["records"]["members"] == EXPECTED_NODE1["mirrors"][
        "records"]["members"]
    assert msg["vip"][0]["unicast_peers"] == ["198.18.7.11"]
    assert msg["pki"]["records"]["dr1"] == ["198.18.7.14", "async"]


def render_unit(tmp_path: Path, control_socket: str, sandbox: bool = True) -> str:
    """The agent's systemd unit as the role renders it (a real Ansible run)."""
    config = {**EXPECTED_NODE1, "control_socket": control_socket}
    extra = {"__mirrorkit_agent_config": config, "__mirrorkit_agent_data_dirs": ["/srv/records"],
             "__mirrorkit_agent_bin": "/opt/mirrorkit/venv/bin/mirrorkit-agent",
             "__mirrorkit_agent_config_file": "/etc/mirrorkit/agent.yml",
             "__mirrorkit_agent_config_change": "reload",
             "mirrorkit_agent_sandbox": sandbox, "mirrorkit_agent_extra_rw_paths": [],
             "mirrorkit_agent_service_extra": []}
    template = ROOT / "roles" / "mirrorkit_agent" / "templates" / "mirrorkit-agent.service.j2"
    playbook = tmp_path / "unit.yml"
    playbook.write_text(f"""
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.debug:
        msg: "{{{{ lookup('ansible.builtin.template', '{template}') }}}}"
""")
    (tmp_path / "vars.json").write_text(json.dumps(extra))
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_NOCOLOR="1",
               ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    playbook_bin = Path(sys.executable).parent / "ansible-playbook"
    proc = subprocess.run([str(playbook_bin), "-i", "localhost,", str(playbook),
                           "-e", f"@{tmp_path / 'vars.json'}"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    body = proc.stdout.split("ok: [localhost] => ", 1)[1].split("\nPLAY RECAP", 1)[0]
    unit: str = json.loads(body)["msg"]
    return unit


def test_unit_gives_the_control_socket_a_0700_runtime_directory(tmp_path: Path) -> None:
    unit = render_unit(tmp_path, "/run/mirrorkit/control.sock").splitlines()
    assert "RuntimeDirectory=mirrorkit" in unit and "RuntimeDirectoryMode=0700" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit  # config changes reload (SIGHUP)
    rw = next(line for line in unit if line.startswith("ReadWritePaths="))
    assert rw == 'ReadWritePaths="/var/lib/mirrorkit" "/srv/records"'
    assert "ProtectSystem=strict" in unit
    unit = render_unit(tmp_path, "/run/mirrorkit/control.sock", sandbox=False).splitlines()
    assert "RuntimeDirectory=mirrorkit" in unit and "ProtectSystem=strict" not in unit
    # elsewhere than /run: no RuntimeDirectory, but writable in the sandbox
    unit = render_unit(tmp_path, "/var/lib/mirrorkit-ctl/control.sock").splitlines()
    assert not any(line.startswith("RuntimeDirectory") for line in unit)
    assert 'ReadWritePaths="/var/lib/mirrorkit" "/srv/records" "/var/lib/mirrorkit-ctl"' in unit


@pytest.mark.parametrize("path", [LAB, MULTI], ids=["lab", "multi"])
def test_every_rendered_config_is_one_the_agent_accepts(path: Path) -> None:
    # What `mirrorkit-agent --check-config` (the template's validate:) and the
    # agent's start-up apply: the failover tunables included.
    from mirrorkit.agent.config import parse_config

    inv = load_inventory(path)
    for host in sorted({h for m in inv.mirrors.values() for h in m.members()}):
        cfg = parse_config(host_config(inv, host), f"{host}/agent.yml")
        for name, mirror in cfg.mirrors.items():
            want = inv.mirrors[name]
            assert mirror.max_lag_on_failover == want.max_lag_on_failover
            assert mirror.hook_timeout == want.hook_timeout
            assert (mirror.health.interval, mirror.health.timeout, mirror.health.failures) == (
                want.health.interval, want.health.timeout, want.health.failures)
            assert mirror.timeouts.arbiter == want.timeouts.arbiter
