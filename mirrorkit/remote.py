"""Running a command on a member over SSH with the inventory's connection
settings (fabric/paramiko): the CLI's read-only questions (``probe_host``)
and the operations commands' ``mirrorkit-agent ...`` runs (``SshAgents``)."""

from __future__ import annotations

import contextlib
import json
import shlex
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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


# -- running mirrorkit-agent commands on members ---------------------------------------

AGENT = "/opt/mirrorkit/venv/bin/mirrorkit-agent"


@dataclass(frozen=True)
class AgentResult:
    """What one ``mirrorkit-agent ...`` run on a member gave: its exit status
    and output, or (``code`` None) why it could not be run at all."""

    host: str
    code: int | None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None

    def json(self) -> tuple[dict[str, Any] | None, str | None]:
        """(the JSON object the command printed, None) or (None, why not)."""
        if self.code is None:
            return None, self.error or "no answer"
        try:
            answer = json.loads(self.stdout) if self.stdout.strip() else None
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            return answer, None
        detail = (self.stderr or self.stdout).strip().splitlines()
        return None, (detail[-1] if detail else f"mirrorkit-agent exited {self.code}")


class AgentRunner(Protocol):
    """Runs ``mirrorkit-agent ARGS`` on one member: the one per-host call of
    the operations commands (``SshAgents`` in production; the integration
    tests plug in one that runs local agents' commands)."""

    def __call__(self, host: str, args: Sequence[str], timeout: float) -> AgentResult: ...


class SshAgents:
    """:class:`AgentRunner` over SSH with the inventory's connection settings.
    One connection per host, opened on first use and kept for the next calls
    (``mirrorkit events --follow`` asks every second); a connection that
    failed is dropped and opened again next time. Close with ``close()`` or
    use as a context manager."""

    def __init__(self, hosts: Mapping[str, Host], agent: str = AGENT) -> None:
        self.hosts = hosts
        self.agent = agent
        self._conns: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {h: threading.Lock() for h in hosts}

    def __call__(self, host: str, args: Sequence[str], timeout: float) -> AgentResult:
        target = self.hosts[host]
        command = shlex.join([self.agent, *args])
        with self._locks[host]:
            try:
                conn = self._conns.get(host)
                if conn is None:
                    conn = self._conns[host] = connect(target)
                result = conn.run(command, hide=True, warn=True, timeout=timeout)
            except Exception as exc:
                self._drop(host)
                return AgentResult(host, None, error=f"cannot run mirrorkit-agent on {host} "
                                                     f"({target.address}) over SSH: {exc}")
        return AgentResult(host, int(result.exited), str(result.stdout), str(result.stderr))

    def _drop(self, host: str) -> None:
        conn = self._conns.pop(host, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        for host in list(self._conns):
            self._drop(host)

    def __enter__(self) -> SshAgents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
