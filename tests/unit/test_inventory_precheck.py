"""The bounded pre-check of an inventory's files, before Ansible parses them:
size, nesting, aliases expanded, host count, duplicate keys; each at its
bound and one past it, and the hostile files of issue 7 refused within a
small memory bound (measured in a child process, never by time)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from mirrorkit.errors import MirrorkitError
from mirrorkit.inventory import load_inventory
from mirrorkit.inventory.precheck import (
    LIMITS,
    Limits,
    check_text,
    host_count,
    inventory_files,
    precheck_inventory,
)

ROOT = Path(__file__).parents[2]
VALID_TAIL = (
    "  hosts:\n    node1: {ansible_host: 198.18.7.11}\n"
    "  vars:\n    mirrorkit_mirrors: {m: {paths: [/d], primary: node1}}\n"
)


def billion_laughs() -> str:
    """The classic: nine levels of nine aliases, about 10^9 strings expanded."""
    lines = ["all:", "  vars:", "    l0: &l0 [" + ",".join(['"lol"'] * 9) + "]"]
    for i in range(1, 9):
        lines.append(f"    l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    lines.append("    mirrorkit_mirrors: *l8")
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    """all.vars.x nested so that the document's deepest collection is `depth`."""
    inner = depth - 2  # all: {vars: ...} are two levels
    return "{all: {vars: {x: " + "[" * (inner - 1) + "1" + "]" * (inner - 1) + "}}}\n"


def refused(text: str, limits: Limits = LIMITS) -> str:
    with pytest.raises(MirrorkitError) as info:
        check_text(text, "inv.yml", limits)
    return str(info.value)


# -- aliases ------------------------------------------------------------------------


def test_billion_laughs_is_refused_naming_file_line_and_bound() -> None:
    text = billion_laughs()
    assert len(text) < 700
    message = refused(text)
    assert message.startswith("inv.yml, line ")
    assert "aliases" in message and f"{LIMITS.expanded:,}" in message


def test_expanded_size_at_the_bound_and_one_past() -> None:
    # {a: &x "xxxxxxxx", b: [*x, *x]}: mapping 1, keys a and b 2 each, the
    # scalar 9, the list 1, two aliases 9 each = 33 units
    text = '{a: &x "xxxxxxxx", b: [*x, *x]}\n'
    check_text(text, "inv.yml", Limits(expanded=33))
    assert "would exceed 32 units" in refused(text, Limits(expanded=32))


def test_aliases_within_the_bound_load_as_usual(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yml"
    inv.write_text(
        "all:\n  hosts:\n    node1: {ansible_host: 198.18.7.11}\n  vars:\n"
        "    base: &paths [/srv/records]\n"
        "    mirrorkit_mirrors: {m: {paths: *paths, primary: node1}}\n"
    )
    assert load_inventory(inv).mirrors["m"].paths == ("/srv/records",)


# -- nesting ------------------------------------------------------------------------


def test_nesting_at_the_bound_and_one_past() -> None:
    check_text(nested(LIMITS.depth), "inv.yml")
    message = refused(nested(LIMITS.depth + 1))
    assert f"more than {LIMITS.depth} levels" in message and "line 1" in message


def test_json_nesting_at_the_bound_and_one_past() -> None:
    def doc(depth: int) -> str:
        return '{"all": {"vars": {"x": ' + "[" * (depth - 3) + "]" * (depth - 3) + "}}}"

    check_text(doc(LIMITS.depth), "inv.json")
    assert f"more than {LIMITS.depth} levels" in refused(doc(LIMITS.depth + 1))


def test_nesting_100000_deep_is_refused() -> None:
    assert "levels deep" in refused("[" * 100_000 + "]" * 100_000)
    assert "levels deep" in refused("a:\n" + "".join(" " * i + "- \n" for i in range(1, 3000)))


# -- size ---------------------------------------------------------------------------


def test_file_size_at_the_bound_and_one_past(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yml"
    body = "all:\n" + VALID_TAIL
    inv.write_text(body + "#" * (LIMITS.file_bytes - len(body) - 1) + "\n")
    assert inv.stat().st_size == LIMITS.file_bytes
    precheck_inventory(inv)
    with inv.open("a") as f:
        f.write("#")
    with pytest.raises(MirrorkitError, match=r"4 MiB") as info:
        precheck_inventory(inv)
    assert str(info.value).startswith(f"{inv}: the file is {LIMITS.file_bytes + 1:,} bytes")


def test_total_size_and_file_count_bounds(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n" + VALID_TAIL)
    (tmp_path / "host_vars").mkdir()
    for i in range(3):
        (tmp_path / "host_vars" / f"h{i}.yml").write_text("x: 1\n")
    precheck_inventory(inv, Limits(files=3))
    with pytest.raises(MirrorkitError, match="more than 2 files"):
        precheck_inventory(inv, Limits(files=2))
    total = inv.stat().st_size + 3 * 5
    precheck_inventory(inv, Limits(total_bytes=total))
    with pytest.raises(MirrorkitError, match=f"at most {total - 1:,} bytes"):
        precheck_inventory(inv, Limits(total_bytes=total - 1))


def test_a_100_mb_exclude_pattern_is_refused_before_ansible(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yml"
    with inv.open("w") as f:
        f.write("all:\n" + VALID_TAIL.replace("primary: node1", "primary: node1, exclude: ['"))
        f.write("x" * 100 * 2**20 + "']}}\n")
    with pytest.raises(MirrorkitError, match="may be at most 4 MiB"):
        load_inventory(inv)


# -- hosts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "count"),
    [("node1", 1), ("www[01:50].example.org", 50), ("db-[a:f]-[1:2]", 12), ("x[0:10:5]", 3),
     ("x[5:1]", 1), ("x[0:" + "9" * 5000 + "]", 1001)],
)
def test_host_count_expands_ranges_without_expanding(pattern: str, count: int) -> None:
    assert host_count(pattern, 1001) == count


def test_host_count_at_the_bound_and_one_past() -> None:
    def inv(hosts: str) -> str:
        return (f"all:\n  hosts:\n    {hosts}: {{}}\n"
                "  children:\n    g:\n      hosts:\n        node1:\n")

    check_text(inv("n[1:999]"), "inv.yml")  # 999 + node1
    assert "more than 1,000 hosts" in refused(inv("n[1:1000]"))
    assert "more than 1,000 hosts" in refused(inv("n[0:999999999999]"))
    assert "more than 1,000 hosts" in refused(
        "all:\n  vars:\n    many: &m {" + ", ".join(f"h{i}: 1" for i in range(1001))
        + "}\n  hosts: *m\n")


def test_ini_hosts_are_counted(tmp_path: Path) -> None:
    ini = tmp_path / "hosts.ini"
    ini.write_text("[web]\nn[1:1000]\n[web:vars]\nx=1\n")
    precheck_inventory(ini)
    ini.write_text("[web]\nn[1:1000] a=1\nm1\n")
    with pytest.raises(MirrorkitError, match="more than 1,000 hosts"):
        precheck_inventory(ini)


# -- duplicate keys -----------------------------------------------------------------


def test_duplicate_key_is_an_error_naming_key_and_lines() -> None:
    text = "m:\n  paths: [/a]\n  primary: node1\n  paths: [/b]\n"
    message = refused(text)
    assert message.startswith("inv.yml, line 4: key 'paths' appears twice")
    assert "first at line 2" in message


@pytest.mark.parametrize(
    "text",
    ["a: {x: 1}\nb: {x: 1}\n",  # the same key in different mappings
     "1: a\n'1': b\n",  # an integer and a string are different keys
     "base: &b {x: 1}\nm:\n  <<: *b\n  x: 2\n",  # overriding a merged key
     "[{x: 1}, {x: 2}]\n"],
)
def test_not_duplicates(text: str) -> None:
    check_text(text, "inv.yml")


def test_duplicate_json_key() -> None:
    assert "key 'a' appears twice" in refused(json.dumps({"x": 1})[:-1] + ', "a": 1, "a": 2}')


# -- which files ------------------------------------------------------------------


def test_group_vars_and_host_vars_files_are_checked(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n" + VALID_TAIL)
    (tmp_path / "group_vars" / "all").mkdir(parents=True)
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "node1.yml").write_text("a: 1\n")
    (tmp_path / "host_vars" / ".hidden.yml").write_text("[[[")
    (tmp_path / "host_vars" / "notes.txt").write_text("[[[")
    bomb = tmp_path / "group_vars" / "all" / "big"
    bomb.write_text(billion_laughs())
    files = [p.relative_to(tmp_path).as_posix() for p, _ in inventory_files(inv)]
    assert files == ["hosts.yml", "host_vars/node1.yml", "group_vars/all/big"]
    with pytest.raises(MirrorkitError, match="aliases") as info:
        load_inventory(inv)
    assert str(info.value).startswith(f"{bomb}, line ")


def test_vault_file_is_left_to_ansible() -> None:
    check_text("$ANSIBLE_VAULT;1.1;AES256\n" + "[" * 1000 + "\n", "vault.yml")


# -- in a child process: memory ---------------------------------------------------

_CHILD = """
import resource, sys
from mirrorkit.cli import main
code = main(["validate", sys.argv[1]])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


@pytest.mark.parametrize("kind", ["bomb", "deep"])
def test_hostile_files_are_refused_within_a_memory_bound(tmp_path: Path, kind: str) -> None:
    inv = tmp_path / f"{kind}.yml"
    inv.write_text(billion_laughs() if kind == "bomb" else "[" * 100_000 + "]" * 100_000)

    def cap_memory() -> None:  # the old code grew past a GB: fail fast instead of swapping
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    proc = subprocess.run([sys.executable, "-c", _CHILD, str(inv)], capture_output=True,
                          text=True, timeout=300, check=False, cwd=ROOT, preexec_fn=cap_memory)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"mirrorkit: error: {inv}, line ")
    max_rss_kb = int(proc.stdout.split()[-1])
    assert max_rss_kb < 200 * 1024  # the interpreter and Ansible's imports are most of it
