"""molecule/default verify: what a user of the converged lab would notice.

Runs over SSH (testinfra's ansible backend reads the scenario's inventory and
connects with plain ssh, using its ansible_host, user, key and SSH options).

- the agent runs on every member and reports healthy;
- create, modify, rename and delete under /srv/records on the primary reach
  the backup and the DR copy within REPLICATION_DEADLINE seconds each;
- the VIP is on the primary only;
- the arbiter holds no replica data.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import testinfra
import yaml

SCENARIO = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).parent.parent))
INVENTORY = SCENARIO / "inventory.yml"
MIRROR = "records"
REPLICATION_DEADLINE = 20.0
VIP_DEADLINE = 10.0
AGENT = "/opt/mirrorkit/venv/bin/mirrorkit-agent"

_INV = yaml.safe_load(INVENTORY.read_text())["all"]
_SPEC = _INV["vars"]["mirrorkit_mirrors"][MIRROR]
MEMBERS = list(_INV["hosts"])
DATA_PATH = _SPEC["paths"][0]
VIP = _SPEC["vip"]["address"].split("/")[0]
API_PORT = _INV["vars"].get("mirrorkit_api_port", 7480)

testinfra_hosts = [f"ansible://{h}?ansible_inventory={INVENTORY}" for h in MEMBERS]


def member(name: str) -> testinfra.host.Host:
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def api(host: testinfra.host.Host, path: str) -> tuple[int, str]:
    """GET the agent's loopback API on `host`: (status code, body)."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:{API_PORT}{path}', timeout=5)\n"
        "    print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
    )
    out = host.check_output("python3 -c %s", script)
    code, _, body = out.partition("\n")
    return int(code), body


def eventually(check: Callable[[], bool], deadline: float, what: str) -> float:
    """Poll `check` until it holds; fail after `deadline` seconds. Returns the time taken."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > deadline:
            pytest.fail(f"{what}: not true within {deadline:.0f} s")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def primary() -> str:
    """The live primary of the mirror, as the agents report it."""
    found = None
    for name in MEMBERS:
        code, body = api(member(name), "/status")
        assert code == 200, f"{name}: /status answered {code}"
        m = json.loads(body)["mirrors"].get(MIRROR)
        if m and m.get("role") == "primary" and not m.get("fenced"):
            assert found is None, f"two writable primaries of {MIRROR}: {found} and {name}"
            found = name
    assert found, f"no member reports being the primary of {MIRROR}"
    return found


@pytest.fixture(scope="module")
def receivers() -> list[str]:
    """Members that hold a copy: the backup and the async members."""
    return [_SPEC["backup"]] + [a["host"] for a in _SPEC.get("async", [])]


def test_agent_service_running_and_healthy(host: testinfra.host.Host) -> None:
    service = host.service("mirrorkit-agent")
    assert service.is_running
    assert service.is_enabled
    code, _ = api(host, "/health")
    assert code == 200


def test_agent_config_is_valid(host: testinfra.host.Host) -> None:
    config = host.file("/etc/mirrorkit/agent.yml")
    assert config.mode == 0o640
    assert host.file(f"/etc/mirrorkit/pki/{MIRROR}/member.key").mode == 0o600
    host.check_output(f"{AGENT} --check-config /etc/mirrorkit/agent.yml")


def _content(name: str, path: str) -> str | None:
    f = member(name).file(path)
    return f.content_string if f.exists else None


def test_changes_on_primary_reach_backup_and_async(primary: str, receivers: list[str]) -> None:
    src = member(primary)
    others = [r for r in receivers if r != primary]
    tag = uuid.uuid4().hex[:8]
    first = f"{DATA_PATH}/verify-{tag}.txt"
    renamed = f"{DATA_PATH}/verify-{tag}-renamed.txt"
    sub = f"{DATA_PATH}/verify-{tag}.d/nested.txt"

    src.check_output(
        "mkdir -p %s && printf 'one\\n' > %s && printf 'nested\\n' > %s",
        os.path.dirname(sub), first, sub,
    )
    for r in others:
        eventually(lambda r=r: _content(r, first) == "one\n", REPLICATION_DEADLINE,
                   f"create of {first} on {primary} reaches {r}")
        eventually(lambda r=r: _content(r, sub) == "nested\n", REPLICATION_DEADLINE,
                   f"create of {sub} on {primary} reaches {r}")

    src.check_output("printf 'two\\n' >> %s", first)
    for r in others:
        eventually(lambda r=r: _content(r, first) == "one\ntwo\n", REPLICATION_DEADLINE,
                   f"modification of {first} reaches {r}")

    src.check_output("mv %s %s", first, renamed)
    for r in others:
        eventually(
            lambda r=r: _content(r, renamed) == "one\ntwo\n" and _content(r, first) is None,
            REPLICATION_DEADLINE, f"rename {first} -> {renamed} reaches {r}",
        )

    src.check_output("rm -rf %s %s", renamed, os.path.dirname(sub))
    for r in others:
        eventually(
            lambda r=r: _content(r, renamed) is None
            and not member(r).file(os.path.dirname(sub)).exists,
            REPLICATION_DEADLINE, f"delete of {renamed} and {os.path.dirname(sub)} reaches {r}",
        )


def _has_vip(name: str) -> bool:
    return member(name).run(f"ip -o -4 addr show | grep -qw {VIP}").rc == 0


def test_vip_on_the_primary_only(primary: str) -> None:
    eventually(lambda: _has_vip(primary), VIP_DEADLINE, f"{VIP} is on the primary {primary}")
    holders = [name for name in MEMBERS if _has_vip(name)]
    assert holders == [primary]


def test_arbiter_holds_no_replica_data() -> None:
    arbiter = member(_SPEC["arbiter"])
    data = arbiter.file(DATA_PATH)
    assert not data.exists or data.listdir() == []
