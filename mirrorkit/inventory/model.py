"""The inventory as mirrorkit sees it: mirrors, their members, and the hosts.

Everything here is built from an inventory that `validate.validate` accepted,
with defaults applied; nothing here re-checks the rules. See docs/inventory.md.
"""

from __future__ import annotations

import ipaddress
import posixpath
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_API_PORT = 7480
DEFAULT_PORT = 7410
DEFAULT_PKI_DIR = "~/.mirrorkit/pki"
# The agent's defaults (mirrorkit/agent/config.py): an async backup within
# 1 MiB of the primary is *active*; a hook still running after 30 s is killed.
DEFAULT_MAX_LAG_ON_FAILOVER = 1 << 20
DEFAULT_HOOK_TIMEOUT = 30.0
MAX_HOOK_TIMEOUT = 3600.0
DEFAULT_MODE = "async"  # the `watch` capture (the default) is async-only
MODES = ("sync", "async")
# How the primary captures changes (docs/inventory.md, "Capture"): `watch`
# (inotify on the directory itself) or `mount` (a FUSE mount at the path over
# a backing directory, mirrorkit-mountd@<mirror>).
CAPTURES = ("watch", "mount")
DEFAULT_CAPTURE = "watch"
ASYNC_KINDS = ("dr", "reporting")
HOOKS = ("on_promote", "on_demote", "on_role_change", "health_check")

Role = Literal["primary", "backup", "arbiter", "async"]
MemberClass = Literal["failover", "arbiter", "async"]


def default_router_id(mirror: str) -> int:
    """A VRRP router id (1..255) derived stably from the mirror's name."""
    return 1 + zlib.crc32(mirror.encode()) % 254


@dataclass(frozen=True)
class Timeouts:
    """Failover timing in seconds (rules in docs/inventory.md)."""

    heartbeat: float = 0.25
    qos: float = 1.0
    arbiter: float = 2.0

    def as_dict(self) -> dict[str, float]:
        return {"heartbeat": self.heartbeat, "qos": self.qos, "arbiter": self.arbiter}


@dataclass(frozen=True)
class HealthCheck:
    """Timing of the `hooks.health_check` command (rules in docs/inventory.md):
    run every `interval` s, killed after `timeout` s; `failures` failed runs
    in a row on the primary ask for a switchover to an active backup."""

    interval: float = 5.0
    timeout: float = 5.0
    failures: int = 3

    def as_dict(self) -> dict[str, float | int]:
        return {"interval": self.interval, "timeout": self.timeout, "failures": self.failures}


@dataclass(frozen=True)
class Vip:
    address: str  # the IP, without prefix
    prefix: int
    interface: str
    router_id: int

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix}"


@dataclass(frozen=True)
class AsyncMember:
    host: str
    kind: Literal["dr", "reporting"]
    root: str | None = None


@dataclass(frozen=True)
class Mirror:
    name: str
    paths: tuple[str, ...]
    primary: str
    exclude: tuple[str, ...] = ()
    mode: Literal["sync", "async"] = "async"
    port: int = DEFAULT_PORT
    backup: str | None = None
    arbiter: str | None = None
    asyncs: tuple[AsyncMember, ...] = ()
    vip: Vip | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    hooks: Mapping[str, str] = field(default_factory=dict)
    max_lag_on_failover: int = DEFAULT_MAX_LAG_ON_FAILOVER
    hook_timeout: float = DEFAULT_HOOK_TIMEOUT
    health: HealthCheck = field(default_factory=HealthCheck)
    capture: Literal["watch", "mount"] = "watch"
    # `capture: mount` only: where the data really lives on a member whose
    # path is the mount (default_backing(paths[0]) unless the inventory says).
    backing: str | None = None

    def members(self) -> dict[str, Role]:
        """Every member host -> its inventory role, primary first."""
        out: dict[str, Role] = {self.primary: "primary"}
        if self.backup:
            out[self.backup] = "backup"
        if self.arbiter:
            out[self.arbiter] = "arbiter"
        for member in self.asyncs:
            out[member.host] = "async"
        return out

    def failover_hosts(self) -> list[str]:
        """The hosts that may be primary (and hold the VIP): primary, then backup."""
        return [self.primary] + ([self.backup] if self.backup else [])

    def async_member(self, host: str) -> AsyncMember | None:
        return next((m for m in self.asyncs if m.host == host), None)

    def member_class(self, host: str) -> MemberClass:
        """The certificate class of a member: failover, arbiter or async."""
        role = self.members().get(host)
        if role is None:
            raise KeyError(f"{host!r} is not a member of mirror {self.name!r}")
        if role in ("primary", "backup"):
            return "failover"
        return "arbiter" if role == "arbiter" else "async"

    def targets_for(self, host: str) -> list[str]:
        """Where each of `paths` lands on `host` (same order); [] on the arbiter."""
        role = self.members().get(host)
        if role is None:
            raise KeyError(f"{host!r} is not a member of mirror {self.name!r}")
        if role == "arbiter":
            return []
        member = self.async_member(host)
        if member is not None and member.root:
            return [join_root(member.root, p) for p in self.paths]
        return list(self.paths)

    def store_for(self, host: str) -> list[str]:
        """Where the agent on `host` reads and writes this mirror's data (the
        agent config's `targets`): the backing directory with `capture:
        mount`, under the async member's root like the path; else the targets."""
        if self.capture != "mount" or self.backing is None:
            return self.targets_for(host)
        if self.members().get(host) == "arbiter":
            return []
        member = self.async_member(host)
        if member is not None and member.root:
            return [join_root(member.root, self.backing)]
        return [self.backing]

    def mount_for(self, host: str) -> tuple[str, str] | None:
        """(mount point, backing directory) of this mirror on `host`, or None
        when it has no mount there (`capture: watch`, or the arbiter)."""
        if self.capture != "mount" or self.members().get(host) in (None, "arbiter"):
            return None
        return self.targets_for(host)[0], self.store_for(host)[0]


def default_backing(path: str) -> str:
    """The backing directory of a mount at `path` when the inventory names
    none: a hidden sibling on the same parent, so it is (normally) on the
    same file system: /srv/records -> /srv/.records.mirrorkit."""
    parent, name = posixpath.split(path.rstrip("/"))
    return posixpath.join(parent, f".{name}.mirrorkit")


def join_root(root: str, path: str) -> str:
    """`/srv/replicas/records` + `/srv/records` -> `/srv/replicas/records/srv/records`."""
    return posixpath.join(root, path.lstrip("/"))


@dataclass(frozen=True)
class Host:
    """An inventory host and how to reach it (the ansible_* connection variables)."""

    name: str
    address: str
    user: str | None = None
    port: int | None = None
    key_file: str | None = None  # ansible_ssh_private_key_file, ~ expanded
    ssh_common_args: str | None = None


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: dict[str, Host]
    mirrors: dict[str, Mirror]
    api_port: int = DEFAULT_API_PORT
    pki_dir: Path = field(default_factory=lambda: Path(DEFAULT_PKI_DIR).expanduser())
    lab: Mapping[str, Any] | None = None

    def address(self, host: str) -> str:
        return self.hosts[host].address

    def mirrors_of(self, host: str) -> list[Mirror]:
        """The mirrors `host` is a member of, by name."""
        return [m for _, m in sorted(self.mirrors.items()) if host in m.members()]


# -- building from validated variables ---------------------------------------------


def build_mirror(name: str, raw: Mapping[str, Any]) -> Mirror:
    """A Mirror from a *validated* `mirrorkit_mirrors.<name>` mapping, defaults applied."""
    vip = None
    raw_vip = raw.get("vip")
    if raw_vip:
        iface = ipaddress.IPv4Interface(raw_vip["address"])
        vip = Vip(
            address=str(iface.ip),
            prefix=iface.network.prefixlen,
            interface=raw_vip["interface"],
            router_id=int(raw_vip.get("router_id") or default_router_id(name)),
        )
    timeouts = {k: float(v) for k, v in (raw.get("timeouts") or {}).items()}
    raw_health = raw.get("health") or {}
    d = HealthCheck()
    health = HealthCheck(
        interval=float(raw_health.get("interval", d.interval)),
        timeout=float(raw_health.get("timeout", d.timeout)),
        failures=int(raw_health.get("failures", d.failures)),
    )
    capture: Literal["watch", "mount"] = "mount" if raw.get("capture") == "mount" else "watch"
    backing = None
    if capture == "mount":
        backing = raw.get("backing") or default_backing(raw["paths"][0])
    return Mirror(
        name=name,
        paths=tuple(raw["paths"]),
        exclude=tuple(raw.get("exclude") or ()),
        mode="sync" if raw.get("mode") == "sync" else "async",
        port=int(raw.get("port") or DEFAULT_PORT),
        primary=raw["primary"],
        backup=raw.get("backup") or None,
        arbiter=raw.get("arbiter") or None,
        asyncs=tuple(
            AsyncMember(host=a["host"], kind=a["kind"], root=a.get("root") or None)
            for a in raw.get("async") or ()
        ),
        vip=vip,
        timeouts=Timeouts(**timeouts),
        hooks=dict(raw.get("hooks") or {}),
        # JSON Schema's "integer" also accepts 1048576.0; the agent wants an int.
        max_lag_on_failover=int(raw.get("max_lag_on_failover", DEFAULT_MAX_LAG_ON_FAILOVER)),
        hook_timeout=float(raw.get("hook_timeout", DEFAULT_HOOK_TIMEOUT)),
        health=health,
        capture=capture,
        backing=backing,
    )


def build_mirrors(raw: Mapping[str, Any]) -> dict[str, Mirror]:
    return {name: build_mirror(name, spec) for name, spec in sorted(raw.items())}
