"""`mirrorkit lab` argument handling (no podman needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mirrorkit.commands import lab
from mirrorkit.errors import MirrorkitError
from mirrorkit.lab.sshkey import ensure_lab_key, ssh_command


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mirrorkit")
    sub = parser.add_subparsers(dest="command", required=True)
    lab.register(sub)
    return parser.parse_args(["lab", *argv])


def test_up_positional_and_option() -> None:
    assert _parse("up", "inv.yml").inventory == "inv.yml"
    args = _parse("up", "--inventory", "x.yml", "--timeout", "5")
    assert (args.inventory_opt, args.timeout) == ("x.yml", 5.0)
    assert _parse("down", "--purge-image").purge_image is True


@pytest.mark.parametrize(
    ("rest", "inventory", "command"),
    [
        (["--", "uname", "-a"], None, ["uname", "-a"]),
        (["-i", "inv.yml", "--", "exit", "7"], "inv.yml", ["exit", "7"]),
        (["--inventory=inv.yml"], "inv.yml", []),
        (["hostname"], None, ["hostname"]),
    ],
)
def test_ssh_split(rest: list[str], inventory: str | None, command: list[str]) -> None:
    args = _parse("ssh", "node1", *rest)
    assert lab._split_ssh_args(args.inventory_opt, args.command) == (inventory, command)


def test_inventory_given_twice_is_an_error() -> None:
    args = _parse("status", "a.yml", "-i", "b.yml")
    with pytest.raises(MirrorkitError, match="give the inventory once"):
        lab.run(args)


def test_default_inventory_found_from_anywhere(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert lab._inventory_path(None).name == "lab.yml"
    assert lab._inventory_path(None).exists()


def test_ssh_key_generated_once(tmp_path: Path) -> None:
    key = ensure_lab_key(tmp_path / "lab" / "id_ed25519")
    assert key.stat().st_mode & 0o777 == 0o600
    first = key.read_bytes()
    assert ensure_lab_key(key).read_bytes() == first
    argv = ssh_command("198.18.9.11", ["true"], key=key)
    assert argv[:3] == ["ssh", "-i", str(key)]
    assert "StrictHostKeyChecking=no" in argv and argv[-2:] == ["root@198.18.9.11", "true"]


def test_mac_address_is_fixed_per_address() -> None:
    from mirrorkit.lab.hosts import mac_address

    assert mac_address("198.18.7.11") == "02:00:c6:12:07:0b"
    assert mac_address("198.18.7.11") != mac_address("198.18.7.12")


def test_ssh_keeps_each_argument_a_word_on_the_remote_side(tmp_path: Path) -> None:
    key = tmp_path / "k"
    argv = ssh_command("198.18.9.11", ["sh", "-c", "echo hi > /tmp/f"], key=key)
    assert argv[-1] == "sh -c 'echo hi > /tmp/f'"


def test_ssh_single_argument_is_a_shell_command_line(tmp_path: Path) -> None:
    argv = ssh_command("198.18.9.11", ["ls /srv | wc -l"], key=tmp_path / "k")
    assert argv[-1] == "ls /srv | wc -l"


# -- faults: partition / loss / heal / pause / resume ------------------------------


def test_fault_commands_parse() -> None:
    args = _parse("partition", "node1", "node2")
    assert (args.hosts, args.inventory) == (["node1", "node2"], None)
    assert _parse("partition", "node1", "node2", "inv.yml").inventory == "inv.yml"
    args = _parse("loss", "node1", "node2", "12.5", "-i", "inv.yml")
    assert (args.hosts, args.percent, args.inventory_opt) == (["node1", "node2"], 12.5, "inv.yml")
    assert _parse("pause", "node1").host == "node1"
    assert _parse("resume", "node1", "inv.yml").inventory == "inv.yml"


@pytest.mark.parametrize("bad", ["-1", "100.5", "ten"])
def test_loss_percent_out_of_range_is_a_usage_error(bad: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse("loss", "node1", "node2", bad)
    assert exc.value.code == 2
    assert "percentage" in capsys.readouterr().err


def test_partition_needs_two_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("partition", "node1")
    assert "HOST" in capsys.readouterr().err


def test_heal_words(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yml"
    inv.write_text("")
    assert lab.split_heal_words([]) == (None, None)
    assert lab.split_heal_words([str(inv)]) == (None, str(inv))
    assert lab.split_heal_words(["a", "b"]) == (("a", "b"), None)
    assert lab.split_heal_words(["a", "b", str(inv)]) == (("a", "b"), str(inv))
    with pytest.raises(MirrorkitError, match="'node1' is not an inventory file; give two hosts"):
        lab.split_heal_words(["node1"])
    with pytest.raises(MirrorkitError, match="4 arguments"):
        lab.split_heal_words(["a", "b", "c", "d"])


def test_fault_on_an_unknown_host_names_the_known_ones() -> None:
    args = _parse("partition", "node1", "nosuch")
    with pytest.raises(MirrorkitError, match=r"no lab host 'nosuch' \(hosts: node1, node2"):
        lab.run(args)


def test_fault_table_renders_and_reads_back() -> None:
    from mirrorkit.lab.faults import TABLE, Faults, parse_table, render_table

    text = render_table(Faults({"198.18.7.12"}, {"198.18.7.13": 1050}))
    assert f"delete table inet {TABLE}" in text
    assert 'ip saddr 198.18.7.12 drop comment "mirrorkit partition 198.18.7.12"' in text
    assert "ip daddr 198.18.7.13 numgen random mod 10000 < 1050 drop" in text
    assert render_table(Faults(set(), {})).count("table") == 2  # only the delete
    listing = {"nftables": [
        {"metainfo": {}}, {"table": {"name": TABLE}},
        {"rule": {"comment": "mirrorkit partition 198.18.7.12"}},
        {"rule": {"comment": "mirrorkit loss 198.18.7.13 1050"}},
        {"rule": {"comment": "someone else's"}}]}
    import json

    assert parse_table(json.dumps(listing)) == Faults({"198.18.7.12"}, {"198.18.7.13": 1050})
