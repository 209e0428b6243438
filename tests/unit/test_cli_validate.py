"""`mirrorkit validate INVENTORY`: OK line, every error on stderr, exit 1, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mirrorkit.cli import main

ROOT = Path(__file__).parents[2]
HERE = Path(__file__).parent / "inventories"
LAB = ROOT / "inventories" / "lab.yml"


def test_valid_inventory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(LAB)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "inventory OK: 1 mirror, 4 hosts"
    assert err == ""


def test_multi_mirror_inventory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(HERE / "multi.yml")]) == 0
    assert capsys.readouterr().out.strip() == "inventory OK: 2 mirrors, 7 hosts"


def test_every_error_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    path = HERE / "invalid.yml"
    assert main(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert lines[-1] == "inventory invalid: 5 errors"
    assert all(line.startswith(f"{path}: ") for line in lines[:-1])
    assert f"{path}: mirror 'records', field mode: the string 'fast' is not allowed; " \
           "use sync or async" in lines
    assert any("host 'dr1', field ansible_host" in line for line in lines)
    assert any("field vip.holders" in line for line in lines)


@pytest.mark.parametrize(
    ("name", "text"),
    [("missing.yml", "inventory file not found"), ("syntax_error.yml", "YAML"),
     ("not_inventory.yml", "not an Ansible inventory")],
)
def test_unreadable_inventories(capsys: pytest.CaptureFixture[str], name: str, text: str) -> None:
    assert main(["validate", str(HERE / name)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mirrorkit: error: {HERE / name}: ")
    assert text in err


def test_missing_argument_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["validate"])
    assert info.value.code == 2


@pytest.mark.parametrize("name", ["invalid.yml", "syntax_error.yml", "bad_hosts.yml",
                                  "missing.yml", "multi.yml"])
def test_installed_command_never_prints_a_traceback(name: str) -> None:
    command = Path(sys.executable).parent / "mirrorkit"
    proc = subprocess.run([str(command), "validate", str(HERE / name)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == (0 if name == "multi.yml" else 1)
    if proc.returncode:
        assert str(HERE / name) in proc.stderr


# -- hostile files (issue 7): exit 1, a message naming the file, no traceback ------------

HOSTILE = {
    "alias_bomb.yml": "all:\n  vars:\n    l0: &l0 [" + ",".join(['"lol"'] * 9) + "]\n" + "".join(
        f"    l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 9)),
    "deep.yml": "{all: {vars: {x: " + "[" * 100_000 + "]" * 100_000 + "}}}\n",
    "duplicate_key.yml": "all:\n  hosts:\n    node1: {ansible_host: 198.18.7.11}\n  vars:\n"
                         "    mirrorkit_mirrors:\n      m:\n        paths: [/a]\n"
                         "        primary: node1\n        paths: [/b]\n",
    "number_name.yml": "all:\n  hosts:\n    node1: {ansible_host: 198.18.7.11}\n  vars:\n"
                       "    mirrorkit_mirrors:\n      1.5: {paths: 5, primary: node1}\n",
    "escaping_host.yml": "all:\n  hosts:\n    ../../escaped: {ansible_host: 198.18.7.11}\n"
                         "  vars:\n    mirrorkit_mirrors:\n"
                         "      m: {paths: [/d], primary: ../../escaped}\n",
    "many_hosts.yml": "all:\n  hosts:\n    node[0:99999999]: {}\n",
    "newline_interface.yml": "all:\n  hosts:\n    node1: {ansible_host: 198.18.7.11}\n  vars:\n"
                             "    mirrorkit_mirrors:\n      m: {paths: [/d], primary: node1, "
                             "vip: {address: 198.18.7.100/24, interface: \"eth0\\n  x\"}}\n",
    "inf_timeout.yml": "all:\n  hosts:\n    node1: {ansible_host: 198.18.7.11}\n  vars:\n"
                       "    mirrorkit_mirrors:\n      m: {paths: [/d], primary: node1, "
                       "timeouts: {heartbeat: .inf, qos: .nan}}\n",
}


@pytest.mark.parametrize(("name", "text"), [
    ("alias_bomb.yml", "aliases"), ("deep.yml", "levels deep"),
    ("duplicate_key.yml", "key 'paths' appears twice"), ("number_name.yml", "is a string"),
    ("escaping_host.yml", "is not allowed"), ("many_hosts.yml", "more than 1,000 hosts"),
    ("newline_interface.yml", "vip.interface"), ("inf_timeout.yml", "timeouts.heartbeat"),
])
def test_hostile_inventories_exit_1_without_traceback(tmp_path: Path, name: str,
                                                      text: str) -> None:
    path = tmp_path / name
    path.write_text(HOSTILE[name])

    def cap_memory() -> None:  # before the fix the alias bomb grew past a GB
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    proc = subprocess.run([sys.executable, "-m", "mirrorkit", "validate", str(path)],
                          capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
                          preexec_fn=cap_memory)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and text in proc.stderr


def test_tuned_timers_below_the_defaults_are_valid_with_a_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml
    inv = yaml.safe_load(LAB.read_text())
    mirror = inv["all"]["vars"]["mirrorkit_mirrors"]["records"]
    mirror["timeouts"] = {"heartbeat": 0.1, "qos": 0.4, "arbiter": 0.8}
    path = tmp_path / "tuned.yml"
    path.write_text(yaml.safe_dump(inv))
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "inventory OK: 1 mirror, 4 hosts"
    assert err.startswith(f"{path}: warning: mirror records: timeouts.qos 0.4 s is below the "
                          "default 1 s") and "false failover" in err
