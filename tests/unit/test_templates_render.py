"""The roles' templates rendered with Ansible from a validated inventory, and
checked by the programs that read them: `keepalived --config-test` for
keepalived.conf and `systemd-analyze verify` for the agent's unit (issue 7:
values that are valid but special in a format are escaped, so a path with a
space stays one path)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirrorkit.errors import MirrorkitError
from mirrorkit.inventory.escape import keepalived_word, systemd_word, systemd_words
from mirrorkit.inventory.hostconfig import host_config, inventory_from_vars, vip_instances

ROOT = Path(__file__).parents[2]
AGENT_ROLE = ROOT / "roles" / "mirrorkit_agent"
VIP_ROLE = ROOT / "roles" / "mirrorkit_vip"
HOSTVARS = {"node1": {"ansible_host": "198.18.7.11"}, "node2": {"ansible_host": "198.18.7.12"},
            "arb1": {"ansible_host": "198.18.7.13"}}
# Valid paths whose characters mean something to systemd: a space separates
# words, " and \\ quote, % starts a specifier.
SPECIAL_PATHS = ["/srv/my data", "/srv/100%", "/srv/%n", '/srv/say "hi"', "/srv/back\\slash",
                 "/srv/tab-free ünïcode"]

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")
needs_keepalived = pytest.mark.skipif(shutil.which("keepalived") is None,
                                      reason="keepalived is not installed")


def render(template: Path, variables: dict[str, Any]) -> str:
    from ansible.parsing.dataloader import DataLoader  # type: ignore[import-untyped]
    from ansible.plugins.loader import filter_loader  # type: ignore[import-untyped]
    from ansible.template import Templar, trust_as_template  # type: ignore[import-untyped]

    filter_loader.add_directory(str(AGENT_ROLE / "filter_plugins"))
    templar = Templar(loader=DataLoader(), variables={"ansible_managed": "managed", **variables})
    out: str = templar.template(trust_as_template(template.read_text()))
    return out


def inventory(paths: list[str], interface: str = "eth0") -> Any:
    mirrors = {"records": {"paths": paths, "primary": "node1", "backup": "node2",
                           "arbiter": "arb1",
                           "vip": {"address": "198.18.7.100/24", "interface": interface}}}
    return inventory_from_vars(mirrors, HOSTVARS)


def verify_unit(tmp_path: Path, text: str) -> str:
    unit = tmp_path / "mirrorkit-agent.service"
    unit.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    return proc.stdout + proc.stderr


# -- systemd ------------------------------------------------------------------------


def test_systemd_words_escape_quotes_backslashes_and_percent() -> None:
    assert systemd_words(["/a b", '/c"d', "/e\\f", "/g%h"]) == (
        '"/a b" "/c\\"d" "/e\\\\f" "/g%%h"')
    with pytest.raises(MirrorkitError, match="control character"):
        systemd_word("/a\nb")


@needs_systemd
def test_systemd_reads_back_every_special_path(tmp_path: Path) -> None:
    # systemd reports a relative path with the word it parsed: the paths made
    # relative show exactly what its parser makes of the quoting.
    relative = [p.lstrip("/") for p in SPECIAL_PATHS]
    text = ("[Service]\nExecStart=/bin/true\nProtectSystem=strict\n"
            f"ReadWritePaths={systemd_words(relative)}\n")
    output = verify_unit(tmp_path, text)
    parsed = re.findall(r"ReadWritePaths= path is not absolute, ignoring: (.*)", output)
    assert parsed == relative


def agent_unit(paths: list[str]) -> str:
    inv = inventory(paths)
    config = host_config(inv, "node2")
    data_dirs = sorted({t for m in config["mirrors"].values() if m["role"] != "arbiter"
                        for t in m["targets"]})
    defaults = yaml.safe_load((AGENT_ROLE / "defaults" / "main.yml").read_text())
    return render(AGENT_ROLE / "templates" / "mirrorkit-agent.service.j2", {
        "__mirrorkit_agent_bin": "/bin/true",
        "__mirrorkit_agent_config_file": "/etc/mirrorkit/agent.yml",
        "__mirrorkit_agent_config": config,
        "__mirrorkit_agent_data_dirs": data_dirs,
        "__mirrorkit_agent_config_change": "reload",
        "mirrorkit_agent_sandbox": True,
        "mirrorkit_agent_extra_rw_paths": defaults["mirrorkit_agent_extra_rw_paths"],
        "mirrorkit_agent_service_extra": defaults["mirrorkit_agent_service_extra"],
    })


@needs_systemd
def test_agent_unit_with_special_paths_verifies(tmp_path: Path) -> None:
    text = agent_unit(SPECIAL_PATHS)
    line = next(x for x in text.splitlines() if x.startswith("ReadWritePaths="))
    assert line == "ReadWritePaths=" + systemd_words(["/var/lib/mirrorkit", *sorted(SPECIAL_PATHS)])
    output = verify_unit(tmp_path, text)
    assert "ReadWritePaths" not in output, output  # before: "not absolute, ignoring: data"


# -- keepalived ---------------------------------------------------------------------


def test_keepalived_word_quotes_and_refuses_what_it_cannot_quote() -> None:
    assert keepalived_word("eth0") == '"eth0"'
    for bad in ('eth"0', "eth0\n", "eth\x000"):
        with pytest.raises(MirrorkitError, match=r"keepalived\.conf"):
            keepalived_word(bad)


def local_interface() -> str:
    names = sorted(p.name for p in Path("/sys/class/net").iterdir())
    return next((n for n in names if n != "lo"), "lo")


@needs_keepalived
def test_rendered_keepalived_conf_passes_keepalived_config_test(tmp_path: Path) -> None:
    iface = local_interface()
    inv = inventory(["/srv/records"], interface=iface)
    defaults = yaml.safe_load((VIP_ROLE / "defaults" / "main.yml").read_text())
    variables = {k: v for k, v in defaults.items() if "{{" not in str(v)}
    text = render(VIP_ROLE / "templates" / "keepalived.conf.j2", {
        **variables,
        "inventory_hostname": "node1",
        "mirrorkit_vip_api_port": 7480,
        "__mirrorkit_vip_check_file": "/bin/true",
        "__mirrorkit_vip_instances": vip_instances(inv, "node1"),
    })
    assert f'    interface "{iface}"' in text.splitlines()
    assert f'dev "{iface}"' in text and 'router_id "node1"' in text
    lines = [line.strip() for line in text.splitlines()]
    assert 'file "/run/mirrorkit/records.vrrp"' in lines and "init_file 1" in lines
    assert "mirrorkit_role_records weight 0" in lines  # FAULT on a non-zero value
    assert "vrrp_version 3" in lines and "advert_int 0.2" in lines
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text)
    proc = subprocess.run(["keepalived", "--config-test", "-f", str(conf)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- mirrorkit-mountd@ (capture: mount) --------------------------------------------

# Options that give a unit a mount namespace of its own: a FUSE mount made in
# one never reaches the host's applications (docs/architecture.md).
NAMESPACING = ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
               "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem",
               "BindPaths", "BindReadOnlyPaths", "ProtectKernelTunables",
               "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
               "ProtectProc", "PrivateMounts", "MountFlags")


def mount_inventory(path: str) -> Any:
    mirrors = {"records": {"paths": [path], "primary": "node1", "backup": "node2",
                           "arbiter": "arb1", "capture": "mount"}}
    return inventory_from_vars(mirrors, HOSTVARS)


def mountd_texts(path: str) -> tuple[str, str]:
    from mirrorkit.inventory.hostconfig import mount_units
    unit = render(AGENT_ROLE / "templates" / "mirrorkit-mountd@.service.j2",
                  {"__mirrorkit_agent_mountd_bin": "/bin/true"})
    dropin = render(AGENT_ROLE / "templates" / "mirrorkit-mountd-dropin.conf.j2",
                    {"item": mount_units(mount_inventory(path), "node2")[0]})
    return unit, dropin


def test_mountd_unit_has_no_mount_namespace_and_restarts_always() -> None:
    unit, _ = mountd_texts("/srv/records")
    settings = [line.split("=", 1)[0] for line in unit.splitlines()
                if line and not line.startswith("#") and "=" in line]
    assert not set(settings) & set(NAMESPACING), settings
    assert "Restart=always" in unit.splitlines()
    assert "StartLimitIntervalSec=0" in unit.splitlines()
    assert "PartOf" not in settings and "BindsTo" not in settings


@needs_systemd
def test_mountd_unit_with_its_dropin_verifies(tmp_path: Path) -> None:
    unit, dropin = mountd_texts("/srv/my 100% data")
    env = next(x for x in dropin.splitlines() if x.startswith("Environment="))
    assert env == "Environment=" + systemd_words([
        "MIRRORKIT_MOUNTPOINT=/srv/my 100% data", "MIRRORKIT_BACKING=/srv/.my 100% data.mirrorkit",
        "MIRRORKIT_SOCKET=/run/mirrorkit/mount-records.sock", "MIRRORKIT_MOUNTD_FLAGS="])
    text = unit.replace("[Service]\n", "[Service]\n" + env + "\n", 1)
    output = verify_unit(tmp_path, text)
    assert "Environment" not in output and "ExecStart" not in output, output


def test_agent_unit_wants_its_mountd_units() -> None:
    inv = mount_inventory("/srv/records")
    defaults = yaml.safe_load((AGENT_ROLE / "defaults" / "main.yml").read_text())
    text = render(AGENT_ROLE / "templates" / "mirrorkit-agent.service.j2", {
        "__mirrorkit_agent_bin": "/bin/true",
        "__mirrorkit_agent_config_file": "/etc/mirrorkit/agent.yml",
        "__mirrorkit_agent_config": host_config(inv, "node2"),
        "__mirrorkit_agent_data_dirs": ["/srv/.records.mirrorkit"],
        "__mirrorkit_agent_config_change": "reload",
        "__mirrorkit_agent_mountd_units": ["mirrorkit-mountd@records.service"],
        "mirrorkit_agent_sandbox": True,
        "mirrorkit_agent_extra_rw_paths": defaults["mirrorkit_agent_extra_rw_paths"],
        "mirrorkit_agent_service_extra": defaults["mirrorkit_agent_service_extra"],
    })
    lines = text.splitlines()
    assert "Wants=mirrorkit-mountd@records.service" in lines
    assert "After=mirrorkit-mountd@records.service" in lines
    # the sandbox stays, writing the backing directory, not the mount point
    assert "ProtectSystem=strict" in lines
    assert 'ReadWritePaths="/var/lib/mirrorkit" "/srv/.records.mirrorkit"' in lines
