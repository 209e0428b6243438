"""Running a command on a member over SSH with the inventory's connection
settings (fabric/paramiko), for the CLI's read-only questions."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirrorkit.inventory.model import Host

SSH_TIMEOUT = 10.0


@dataclass
class HostProbe:
    host: str
    status: dict[str, Any] | None = None
    addresses: set[str] = field(default_factory=set)
    error: str | None = None


def _strict_host_keys(common_args: str | None) -> bool:
    """Honour the inventory's own `-o StrictHostKeyChecking=no` (the lab sets
    it); production inventories keep checking against known_hosts."""
    words = shlex.split(common_args or "")
    text = " ".join(words).replace("=", " ").lower()
    return "stricthostkeychecking no" not in text


def connect(target: Host) -> Any:
    import paramiko
    from fabric import Config, Connection

    connect_kwargs: dict[str, Any] = {"timeout": SSH_TIMEOUT, "banner_timeout": SSH_TIMEOUT}
    if target.key_file:
        connect_kwargs["key_filename"] = str(Path(target.key_file).expanduser())
    config = Config(overrides={"load_ssh_configs": False})
    conn = Connection(
        host=target.address,
        user=target.user or "root",
        port=target.port or 22,
        connect_kwargs=connect_kwargs,
        config=config,
    )
    if _strict_host_keys(target.ssh_common_args):
        conn.client.load_system_host_keys()
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        conn.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    return conn


def probe_host(target: Host, agent: str) -> HostProbe:
    """Ask one host's agent for /status and list the IPv4 addresses it holds."""
    probe = HostProbe(target.name)
    try:
        with connect(target) as conn:
            result = conn.run(f"{agent} status --json", hide=True, warn=True, timeout=30)
            if result.ok:
                probe.status = json.loads(result.stdout)
            else:
                detail = (result.stderr or result.stdout).strip().splitlines()
                probe.error = "agent not answering" + (f": {detail[-1]}" if detail else "")
            addrs = conn.run("ip -o -4 addr show", hide=True, warn=True, timeout=30)
            for line in addrs.stdout.splitlines():
                parts = line.split()
                if "inet" in parts:
                    probe.addresses.add(parts[parts.index("inet") + 1].split("/")[0])
    except json.JSONDecodeError as exc:
        probe.error = f"agent returned invalid JSON: {exc}"
    except Exception as exc:
        probe.error = f"cannot reach {target.address} over SSH: {exc}"
    return probe
