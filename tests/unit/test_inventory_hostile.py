"""Values that reach templates, file names and sockets are checked against what
the target accepts (issue 7): each rule refuses the hostile value with an error
naming the field and what is accepted, and accepts the nearest valid value."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from mirrorkit.inventory.validate import InventoryVars, ValidationError, validate

HOSTS = {"node1": "198.18.7.11", "node2": "198.18.7.12", "arb1": "198.18.7.13",
         "dr1": "198.18.7.14"}
Vars = dict[str, Any]
Mutation = Callable[[Vars, dict[str, str]], None]


def base() -> Vars:
    return {"mirrorkit_mirrors": {"records": {
        "paths": ["/srv/records"], "primary": "node1", "backup": "node2", "arbiter": "arb1",
        "async": [{"host": "dr1", "kind": "dr"}],
        "vip": {"address": "198.18.7.100/24", "interface": "eth0"},
    }}}


def check(all_vars: Vars, hosts: dict[str, str]) -> list[ValidationError]:
    return validate(InventoryVars("inv.yml", all_vars, {h: {"ansible_host": a}
                                                         for h, a in hosts.items()}))


def rec(v: Vars) -> dict[str, Any]:
    spec: dict[str, Any] = v["mirrorkit_mirrors"]["records"]
    return spec


def field(**kw: Any) -> Mutation:
    return lambda v, h: rec(v).update(kw)


def vip(**kw: Any) -> Mutation:
    return lambda v, h: rec(v)["vip"].update(kw)


def timeouts(**kw: Any) -> Mutation:
    return lambda v, h: rec(v).update(timeouts=kw)


def hook(command: str) -> Mutation:
    return lambda v, h: rec(v).update(hooks={"on_promote": command})


def dr_named(name: str) -> Mutation:
    def mutate(v: Vars, hosts: dict[str, str]) -> None:
        hosts[name] = hosts.pop("dr1")
        rec(v)["async"][0]["host"] = name
    return mutate


def address(host: str, addr: str) -> Mutation:
    return lambda v, hosts: hosts.update({host: addr})


def mirror_named(name: Any) -> Mutation:
    return lambda v, h: v.update(mirrorkit_mirrors={name: v["mirrorkit_mirrors"]["records"]})


# (id, hostile, nearest valid, field, substring of problem + fix)
CASES: list[tuple[str, Mutation, Mutation, str, str]] = [
    ("host name with ..", dr_named("../../escaped"), dr_named("escaped"), "async[0].host",
     "DNS name or Ansible host name"),
    ("host name with /", dr_named("a/b"), dr_named("a_b"), "async[0].host", "at most 64"),
    ("host name with newline", dr_named("dr1\nx"), dr_named("dr1.x"), "async[0].host",
     "DNS name"),
    ("host name 65 characters", dr_named("d" * 65), dr_named("d" * 64), "async[0].host",
     "at most 64 characters"),
    ("host name starting with -", dr_named("-dr1"), dr_named("dr-1"), "async[0].host",
     "does not start with '-'"),
    ("host name empty label", dr_named("dr1..example"), dr_named("dr1.example"),
     "async[0].host", "dot-separated labels"),
    ("interface with newline", vip(interface="eth0\n    priority 255"), vip(interface="eth0"),
     "vip.interface", "1 to 15 of a-z"),
    ("interface with space", vip(interface="eth 0"), vip(interface="eth_0"), "vip.interface",
     "a Linux interface name"),
    ("interface of 16 characters", vip(interface="e" * 16), vip(interface="e" * 15),
     "vip.interface", "1 to 15"),
    ("interface of 300 characters", vip(interface="e" * 300), vip(interface="bond0.100"),
     "vip.interface", "1 to 15"),
    ("interface ..", vip(interface=".."), vip(interface="br-lan"), "vip.interface", "1 to 15"),
    ("path with newline", field(paths=["/srv/rec\nords"]), field(paths=["/srv/rec ords"]),
     "paths[0]", "a newline"),
    ("path with NUL", field(paths=["/srv/rec\0ords"]), field(paths=["/srv/rec%ords"]),
     "paths[0]", "a NUL byte"),
    ("path with tab", field(paths=["/srv/a\tb"]), field(paths=['/srv/a"b\\c']), "paths[0]",
     "a tab"),
    ("path component of 256 bytes", field(paths=["/srv/" + "é" * 128]),
     field(paths=["/srv/" + "é" * 127]), "paths[0]", "longer than 255 bytes"),
    ("path of 1025 characters", field(paths=["/" + "/".join(["a" * 100] * 10) + "/" + "b" * 14]),
     field(paths=["/" + "/".join(["a" * 100] * 10) + "/" + "b" * 13]), "paths[0]",
     "at most 1024 characters"),
    ("65 paths", field(paths=[f"/srv/p{i}" for i in range(65)]),
     field(paths=[f"/srv/p{i}" for i in range(64)]), "paths", "1 to 64"),
    ("async root with newline", lambda v, h: rec(v)["async"][0].update(root="/srv/r\n"),
     lambda v, h: rec(v)["async"][0].update(root="/srv/r s"), "async[0].root", "a newline"),
    ("exclude of 257 characters", field(exclude=["x" * 257]), field(exclude=["x" * 256]),
     "exclude[0]", "at most 256 characters"),
    ("257 excludes", field(exclude=[f"*.t{i}" for i in range(257)]),
     field(exclude=[f"*.t{i}" for i in range(256)]), "exclude", "at most 256 patterns"),
    ("exclude with newline", field(exclude=["*.tmp\n"]), field(exclude=["*.tmp?"]),
     "exclude[0]", "a newline"),
    ("heartbeat .inf", timeouts(heartbeat=float("inf")), timeouts(heartbeat=60, qos=180,
                                                                   arbiter=300),
     "timeouts.heartbeat", "between 0.05 and 60"),
    ("heartbeat .nan", timeouts(heartbeat=float("nan")), timeouts(heartbeat=0.3),
     "timeouts.heartbeat", "NaN"),
    ("heartbeat under 50 ms", timeouts(heartbeat=0.049), timeouts(heartbeat=0.05),
     "timeouts.heartbeat", "between 0.05 and 60"),
    ("arbiter over an hour", timeouts(arbiter=3600.5), timeouts(arbiter=3600),
     "timeouts.arbiter", "between 0.15 and 3600"),
    ("qos .inf", timeouts(qos=float("inf")), timeouts(qos=3599, arbiter=3600), "timeouts.qos",
     "between 0.15 and 3600"),
    ("member 0.0.0.0", address("dr1", "0.0.0.0"), address("dr1", "0.0.0.1"), "ansible_host",
     "unspecified"),
    ("member multicast", address("dr1", "224.0.0.1"), address("dr1", "223.255.255.254"),
     "ansible_host", "multicast"),
    ("member loopback", address("dr1", "127.0.0.2"), address("dr1", "128.0.0.2"),
     "ansible_host", "loopback"),
    ("member broadcast", address("dr1", "255.255.255.255"), address("dr1", "198.18.7.255"),
     "ansible_host", "broadcast"),
    ("member reserved", address("dr1", "240.0.0.1"), address("dr1", "198.18.9.1"),
     "ansible_host", "reserved"),
    ("member IPv6 loopback", address("dr1", "::1"), address("dr1", "2001:db8::1"),
     "ansible_host", "loopback"),
    ("member IPv6 link-local", address("dr1", "fe80::1"), address("dr1", "fd00::1"),
     "ansible_host", "link-local"),
    ("VIP /0", vip(address="198.18.7.100/0"), None, "vip.address", "from /8 to /32"),
    ("VIP /7", vip(address="198.18.7.100/7"), vip(address="198.18.7.100/8"), "vip.address",
     "from /8 to /32"),
    ("VIP multicast", vip(address="224.0.0.18/24"), None, "vip.address", "multicast"),
    ("VIP with newline", vip(address="198.18.7.100/24\n"), vip(address="198.18.7.101/24"),
     "vip.address", "a.b.c.d/len"),
    ("hook with NUL", hook("systemctl start\0app"), hook("systemctl start app\n\tlogger ok"),
     "hooks.on_promote", "a NUL byte"),
    ("hook of 4097 characters", hook("x" * 4097), hook("x" * 4096), "hooks.on_promote",
     "at most 4096"),
    ("mirror name a number", mirror_named(1.5), mirror_named("m1_5"), "mirrorkit_mirrors.1.5",
     "a mirror name is a string"),
    ("mirror name with newline", mirror_named("records\n"), mirror_named("records"),
     "mirrorkit_mirrors['records\\n']", "invalid mirror name"),
    ("pki dir with NUL", lambda v, h: v.update(mirrorkit_pki_dir="/tmp/p\0ki"),
     lambda v, h: v.update(mirrorkit_pki_dir="/tmp/p ki"), "mirrorkit_pki_dir", "a NUL byte"),
]


@pytest.mark.parametrize(("hostile", "valid", "where", "text"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_hostile_value_refused_nearest_valid_accepted(
    hostile: Mutation, valid: Mutation | None, where: str, text: str
) -> None:
    v, hosts = base(), dict(HOSTS)
    hostile(v, hosts)
    errors = check(v, hosts)
    full = where if where.startswith(("mirrorkit_", "ansible_")) else \
        f"mirrorkit_mirrors.records.{where}".replace(".[", "[")
    hits = [e for e in errors if e.field == full]
    assert hits, f"no error on {full!r}; got:\n" + "\n".join(map(str, errors))
    assert text in f"{hits[0].problem}; {hits[0].fix}"
    assert "\n" not in str(hits[0]).replace("\\n", "")  # never echoes a raw newline
    if valid is not None:
        v, hosts = copy.deepcopy(base()), dict(HOSTS)
        valid(v, hosts)
        assert check(v, hosts) == []


def test_a_huge_value_is_not_echoed_whole() -> None:
    v = base()
    rec(v)["exclude"] = ["x" * 10_000_000]
    errors = check(v, dict(HOSTS))
    assert len(errors) == 1 and len(str(errors[0])) < 500
    assert "10,000,000 characters" in str(errors[0])


def test_a_member_named_ca_is_refused_and_ca1_accepted() -> None:
    for name, ok in (("ca", False), ("Ca", False), ("ca1", True)):
        v, hosts = base(), dict(HOSTS)
        dr_named(name)(v, hosts)
        errors = check(v, hosts)
        assert (not errors) == ok, (name, errors)
        if not ok:
            assert "reserved" in str(errors[0]) and "rename the host" in str(errors[0])
