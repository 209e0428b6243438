"""Agent configuration: load and validate ``/etc/mirrorkit/agent.yml``.

The shape is the one in docs/architecture.md ("Agent config"). Validation
collects every problem before reporting, because the file is checked as the
``validate:`` step of an Ansible template task and an operator should fix all
errors in one round. Each :class:`ConfigIssue` names the field path, what is
wrong and what would be right.

Optional fields beyond the documented shape (all default to production
behaviour; tests use them to run several agents on one loopback address):

* ``mirrors.M.listen``: address to bind instead of this host's member address;
* ``mirrors.M.members.H.port``: port of that member instead of the mirror's
  ``port``;
* ``mirrors.M.log_max_bytes`` / ``log_segment_bytes``: mirror log retention
  limit (default 1 GiB) and segment size (default 64 MiB).

``control_socket`` (default ``/run/mirrorkit/control.sock``) is the agent's
root-only control socket (``api/control_socket.py``); tests give every agent
its own.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

__all__ = [
    "DEFAULT_CONTROL_SOCKET",
    "RELOAD_IN_PLACE",
    "ROLES",
    "AgentConfig",
    "ConfigError",
    "ConfigIssue",
    "HealthCheck",
    "MemberConfig",
    "MirrorConfig",
    "ReloadPlan",
    "Timeouts",
    "TlsConfig",
    "load_config",
    "parse_config",
    "plan_reload",
]

ROLES = ("primary", "backup", "arbiter", "async")
HOOKS = ("on_promote", "on_demote", "on_role_change", "health_check")
KINDS = ("dr", "reporting")
MODES = ("sync", "async")
CAPTURES = ("watch", "mount")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
DEFAULT_LOG_MAX_BYTES = 1 << 30
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_MAX_LAG_ON_FAILOVER = 1 << 20
DEFAULT_HOOK_TIMEOUT = 30.0
MAX_HOOK_TIMEOUT = 3600.0
DEFAULT_CONTROL_SOCKET = Path("/run/mirrorkit/control.sock")
# sun_path holds 108 bytes, the terminating NUL included.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    path: str
    problem: str
    expected: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem} (expected {self.expected})"


class ConfigError(Exception):
    """The config file is unreadable or invalid; ``issues`` lists every problem."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        lines = [f"{source}: {len(issues)} error(s)"] + [f"  {i}" for i in issues]
        super().__init__("\n".join(lines))


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Failover timing (docs/architecture.md, "Failover timing"): members
    heartbeat every ``heartbeat`` s; a failover member whose peer is silent
    for ``qos`` s has lost it, and a primary that has heard neither its
    backup nor the arbiter acknowledge it for ``qos`` s is fenced (its lease
    ran out); the backup promotes only when the arbiter has not heard the
    primary for ``arbiter`` s, so ``arbiter >= qos + 2 * heartbeat`` keeps
    "the old primary is fenced" strictly before "the backup is writable"."""

    heartbeat: float = 0.25
    qos: float = 1.0
    arbiter: float = 2.0


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """The application health check's timing (the command is ``hooks.health_check``):
    run every ``interval`` s, each run killed after ``timeout`` s, and
    ``failures`` failed runs in a row on the primary ask for a switchover
    to an active backup."""

    interval: float = 5.0
    timeout: float = 5.0
    failures: int = 3


@dataclass(frozen=True, slots=True)
class TlsConfig:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class MemberConfig:
    name: str
    address: str
    role: str
    port: int
    kind: str | None = None

    @property
    def member_class(self) -> str:
        """Certificate OU this member must carry (docs/architecture.md, PKI)."""
        return "failover" if self.role in ("primary", "backup") else self.role


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    name: str
    role: str
    kind: str | None
    mode: str
    port: int
    paths: list[Path]
    exclude: list[str]
    targets: list[Path]
    timeouts: Timeouts
    tls: TlsConfig
    members: dict[str, MemberConfig]
    hooks: dict[str, str] = field(default_factory=dict)
    listen: str | None = None
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    log_segment_bytes: int = DEFAULT_SEGMENT_BYTES
    # An async backup is *active* (may be promoted automatically) while it is
    # at most this many bytes of log behind the primary.
    max_lag_on_failover: int = DEFAULT_MAX_LAG_ON_FAILOVER
    hook_timeout: float = DEFAULT_HOOK_TIMEOUT  # seconds; a hook still running is killed
    health: HealthCheck = field(default_factory=HealthCheck)
    # How the primary captures changes: ``watch`` (inotify) or ``mount``
    # (mirrorkit-mountd's FUSE mount over ``targets[0]``, its socket below).
    capture: str = "watch"
    mount_socket: Path | None = None

    @property
    def arbiter_name(self) -> str | None:
        return next((n for n, m in self.members.items() if m.member_class == "arbiter"), None)

    @property
    def failover_names(self) -> list[str]:
        return [n for n, m in self.members.items() if m.member_class == "failover"]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    host: str
    api_listen: str
    api_port: int
    state_dir: Path
    mirrors: dict[str, MirrorConfig]
    control_socket: Path = DEFAULT_CONTROL_SOCKET

    def mirror_dir(self, mirror: str) -> Path:
        return self.state_dir / mirror


def load_config(path: Path) -> AgentConfig:
    """Read and validate ``path``; raise :class:`ConfigError` with all problems."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [ConfigIssue("(file)", str(exc), "a readable file")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            source, [ConfigIssue("(file)", f"not valid YAML: {exc}", "a YAML mapping")]
        ) from None
    return parse_config(data, source)


def parse_config(data: Any, source: str = "agent.yml") -> AgentConfig:
    v = _Validator()
    cfg = v.agent(data)
    if v.issues or cfg is None:
        raise ConfigError(source, v.issues)
    return cfg


class _Validator:
    """Collects issues while building the dataclasses; ``None`` means invalid."""

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []

    def err(self, path: str, problem: str, expected: str) -> None:
        self.issues.append(ConfigIssue(path, problem, expected))

    def mapping(self, value: Any, path: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.err(path, f"is {_kind(value)}", "a mapping")
            return None
        return value

    def unknown(self, value: dict[str, Any], allowed: set[str], path: str) -> None:
        for key in value:
            if key not in allowed:
                self.err(f"{path}.{key}", "unknown field", "one of " + ", ".join(sorted(allowed)))

    def string(self, m: dict[str, Any], key: str, path: str, *, required: bool = True,
               choices: tuple[str, ...] | None = None) -> str | None:
        if key not in m or m[key] is None:
            if required:
                self.err(f"{path}.{key}", "is missing", _choices(choices) or "a string")
            return None
        value = m[key]
        if not isinstance(value, str) or not value:
            expected = _choices(choices) or "a non-empty string"
            self.err(f"{path}.{key}", f"is {_kind(value)}", expected)
            return None
        if choices is not None and value not in choices:
            self.err(f"{path}.{key}", f"is {value!r}", "one of " + ", ".join(choices))
            return None
        return value

    def port(self, value: Any, path: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self.err(path, f"is {value!r}", "a TCP port 1-65535")
            return None
        return value

    def address(self, value: Any, path: str) -> str | None:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            self.err(path, f"is {value!r}", "an IP address such as 198.18.7.11")
            return None

    def abspath(self, value: Any, path: str) -> Path | None:
        if not isinstance(value, str) or not value.startswith("/"):
            self.err(path, f"is {value!r}", "an absolute path")
            return None
        if ".." in PurePosixPath(value).parts:
            self.err(path, f"{value!r} contains '..'", "a normalised absolute path")
            return None
        return Path(value)

    def pathlist(self, m: dict[str, Any], key: str, path: str) -> list[Path] | None:
        value = m.get(key)
        if not isinstance(value, list) or not value:
            self.err(f"{path}.{key}", f"is {_kind(value)}", "a non-empty list of absolute paths")
            return None
        out = [self.abspath(p, f"{path}.{key}[{i}]") for i, p in enumerate(value)]
        return None if any(p is None for p in out) else [p for p in out if p is not None]

    def agent(self, data: Any) -> AgentConfig | None:
        top = self.mapping(data, "(top)")
        if top is None:
            return None
        self.unknown(top, {"host", "api", "control_socket", "state_dir", "mirrors"}, "(top)")
        host = self.string(top, "host", "(top)")
        api_listen, api_port = "127.0.0.1", 7480
        if "api" in top:
            api = self.mapping(top["api"], "api")
            if api is not None:
                self.unknown(api, {"listen", "port"}, "api")
                api_listen = self.address(api.get("listen", api_listen), "api.listen") or api_listen
                api_port = self.port(api.get("port", api_port), "api.port") or api_port
        state_dir = self.abspath(top.get("state_dir", "/var/lib/mirrorkit"), "state_dir")
        control = self.socket_path(top.get("control_socket", str(DEFAULT_CONTROL_SOCKET)),
                                   "control_socket")
        mirrors: dict[str, MirrorConfig] = {}
        raw = self.mapping(top.get("mirrors"), "mirrors")
        if raw is not None:
            if not raw:
                self.err("mirrors", "is empty", "at least one mirror")
            for name, body in raw.items():
                if not isinstance(name, str) or not _NAME.match(name):
                    self.err(f"mirrors.{name}", "bad mirror name", "[a-z][a-z0-9_-]{0,30}")
                    continue
                mirror = self.mirror(name, body, host)
                if mirror is not None:
                    mirrors[name] = mirror
        self.cross_mirror(mirrors, host)
        if host is None or state_dir is None or control is None or self.issues:
            return None
        return AgentConfig(host, api_listen, api_port, state_dir, mirrors, control)

    def socket_path(self, value: Any, path: str,
                    default: str = str(DEFAULT_CONTROL_SOCKET)) -> Path | None:
        expected = (f"an absolute path to a socket file, at most {MAX_SOCKET_PATH} bytes "
                    f"(default {default})")
        if isinstance(value, str) and (value.endswith("/") or value.rstrip("/") == ""):
            self.err(path, f"{value!r} names a directory", expected)
            return None
        if isinstance(value, str) and len(value.encode()) > MAX_SOCKET_PATH:
            self.err(path, f"is {len(value.encode())} bytes long", expected)
            return None
        sock = self.abspath(value, path)
        if sock is not None and str(sock) != value:
            self.err(path, f"{value!r} is not normalised", f"{str(sock)!r}")
            return None
        return sock

    def mirror(self, name: str, body: Any, host: str | None) -> MirrorConfig | None:
        p = f"mirrors.{name}"
        m = self.mapping(body, p)
        if m is None:
            return None
        self.unknown(m, {"role", "kind", "mode", "port", "paths", "exclude", "targets",
                         "timeouts", "tls", "members", "hooks", "listen", "log_max_bytes",
                         "log_segment_bytes", "max_lag_on_failover", "hook_timeout",
                         "health", "capture", "mount_socket"}, p)
        before = len(self.issues)
        role = self.string(m, "role", p, choices=ROLES)
        kind = self.string(m, "kind", p, required=role == "async", choices=KINDS)
        mode = self.string(m, "mode", p, required=False, choices=MODES) or "async"
        port = self.port(m.get("port", 7410), f"{p}.port")
        paths = self.pathlist(m, "paths", p) if role != "arbiter" else []
        targets = self.pathlist(m, "targets", p) if role != "arbiter" else []
        if paths is not None and targets is not None and len(paths) != len(targets):
            self.err(f"{p}.targets", f"has {len(targets)} entries for {len(paths)} paths",
                     "one target per path")
        exclude = m.get("exclude") or []
        if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
            self.err(f"{p}.exclude", f"is {_kind(exclude)}", "a list of fnmatch patterns")
            exclude = []
        timeouts = self.timeouts(m.get("timeouts", {}), f"{p}.timeouts")
        tls = self.tls(m.get("tls"), f"{p}.tls")
        members = self.members(m.get("members"), f"{p}.members", port or 7410)
        hooks = m.get("hooks") or {}
        if not isinstance(hooks, dict) or not all(isinstance(x, str) for x in hooks.values()):
            self.err(f"{p}.hooks", f"is {_kind(hooks)}", "a mapping of hook name to command")
            hooks = {}
        listen = m.get("listen")
        if listen is not None:
            listen = self.address(listen, f"{p}.listen")
        log_max = self.positive_int(m.get("log_max_bytes", DEFAULT_LOG_MAX_BYTES),
                                    f"{p}.log_max_bytes")
        seg = self.positive_int(m.get("log_segment_bytes", DEFAULT_SEGMENT_BYTES),
                                f"{p}.log_segment_bytes")
        max_lag = m.get("max_lag_on_failover", DEFAULT_MAX_LAG_ON_FAILOVER)
        if isinstance(max_lag, bool) or not isinstance(max_lag, int) or max_lag < 0:
            self.err(f"{p}.max_lag_on_failover", f"is {max_lag!r}",
                     "an integer number of bytes >= 0")
        hook_timeout = self.seconds(m.get("hook_timeout", DEFAULT_HOOK_TIMEOUT),
                                    f"{p}.hook_timeout", MAX_HOOK_TIMEOUT)
        health = self.health(m.get("health", {}), f"{p}.health")
        capture = self.string(m, "capture", p, required=False, choices=CAPTURES) or "watch"
        mount_socket = None
        if capture == "mount":
            default_socket = f"/run/mirrorkit/mount-{name}.sock"
            mount_socket = self.socket_path(m.get("mount_socket", default_socket),
                                            f"{p}.mount_socket", default_socket)
            if paths is not None and len(paths) != 1:
                self.err(f"{p}.paths", f"has {len(paths)} entries with capture: mount",
                         "exactly one path (one mount per mirror)")
        elif "mount_socket" in m:
            self.err(f"{p}.mount_socket", "is set but capture is not 'mount'",
                     "capture: mount, or no mount_socket")
        if mode == "sync" and capture != "mount" and role in ("primary", "backup"):
            # Only the mount can make an application's fsync wait for the
            # backup; `watch` sees a change after the fact. Arbiters and async
            # members capture nothing in sync mode (async ones stay async).
            self.err(f"{p}.mode", "is 'sync' with capture 'watch', which cannot make fsync "
                     "wait for the backup", "capture: mount for sync mode, or mode: async")
        for hook in hooks:
            if hook not in HOOKS:
                self.err(f"{p}.hooks.{hook}", "is not a hook", "one of " + ", ".join(HOOKS))
        if members is not None and host is not None:
            me = members.get(host)
            if me is None:
                self.err(f"{p}.members", f"does not list this host {host!r}",
                         "every member of the mirror, this host included")
            elif role is not None and me.role != role:
                self.err(f"{p}.members.{host}.role", f"is {me.role!r} but {p}.role is {role!r}",
                         "the same role in both places")
            primaries = [n for n, mc in members.items() if mc.role == "primary"]
            if len(primaries) != 1:
                self.err(f"{p}.members", f"has {len(primaries)} primaries", "exactly one primary")
        if len(self.issues) != before:
            return None
        assert role is not None and port is not None and tls is not None
        assert members is not None and timeouts is not None and paths is not None
        assert targets is not None and log_max is not None and seg is not None
        assert hook_timeout is not None and health is not None
        return MirrorConfig(name, role, kind, mode, port, paths, list(exclude), targets,
                            timeouts, tls, members, dict(hooks), listen, log_max, seg,
                            max_lag, hook_timeout, health, capture, mount_socket)

    def seconds(self, value: Any, path: str, limit: float) -> float | None:
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not 0 < value <= limit):
            self.err(path, f"is {value!r}", f"a number of seconds > 0 and <= {limit:g}")
            return None
        return float(value)

    def health(self, value: Any, path: str) -> HealthCheck | None:
        m = self.mapping(value, path)
        if m is None:
            return None
        self.unknown(m, {"interval", "timeout", "failures"}, path)
        d = HealthCheck()
        interval = self.seconds(m.get("interval", d.interval), f"{path}.interval", 3600)
        timeout = self.seconds(m.get("timeout", d.timeout), f"{path}.timeout", 3600)
        failures = m.get("failures", d.failures)
        if isinstance(failures, bool) or not isinstance(failures, int) or not 1 <= failures <= 1000:
            self.err(f"{path}.failures", f"is {failures!r}", "an integer from 1 to 1000")
            return None
        if interval is None or timeout is None:
            return None
        return HealthCheck(interval, timeout, failures)

    def positive_int(self, value: Any, path: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.err(path, f"is {value!r}", "a positive integer (bytes)")
            return None
        return value

    def timeouts(self, value: Any, path: str) -> Timeouts | None:
        m = self.mapping(value, path)
        if m is None:
            return None
        self.unknown(m, {"heartbeat", "qos", "arbiter"}, path)
        d = Timeouts()
        got: dict[str, float] = {}
        for key, default in (("heartbeat", d.heartbeat), ("qos", d.qos), ("arbiter", d.arbiter)):
            raw = m.get(key, default)
            if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
                self.err(f"{path}.{key}", f"is {raw!r}", "a positive number of seconds")
                return None
            got[key] = float(raw)
        t = Timeouts(**got)
        if t.heartbeat * 3 > t.qos:
            self.err(f"{path}.qos", f"{t.qos} is less than 3 x heartbeat ({t.heartbeat})",
                     "qos >= 3 * heartbeat")
        if t.qos + 2 * t.heartbeat > t.arbiter:
            self.err(f"{path}.arbiter", f"{t.arbiter} is less than qos + 2 x heartbeat "
                     f"({t.qos + 2 * t.heartbeat:g})",
                     "arbiter >= qos + 2 * heartbeat, so that an isolated primary is fenced "
                     "before the backup may promote")
        return t

    def tls(self, value: Any, path: str) -> TlsConfig | None:
        m = self.mapping(value, path)
        if m is None:
            return None
        self.unknown(m, {"ca", "cert", "key"}, path)
        files = [self.abspath(m.get(k), f"{path}.{k}") for k in ("ca", "cert", "key")]
        if any(f is None for f in files):
            return None
        ca, cert, key = (f for f in files if f is not None)
        return TlsConfig(ca, cert, key)

    def members(self, value: Any, path: str, port: int) -> dict[str, MemberConfig] | None:
        m = self.mapping(value, path)
        if m is None:
            return None
        out: dict[str, MemberConfig] = {}
        ok = True
        for name, body in m.items():
            p = f"{path}.{name}"
            mb = self.mapping(body, p)
            if mb is None:
                ok = False
                continue
            self.unknown(mb, {"address", "role", "kind", "port"}, p)
            address = self.address(mb.get("address"), f"{p}.address")
            role = self.string(mb, "role", p, choices=ROLES)
            kind = self.string(mb, "kind", p, required=False, choices=KINDS)
            mport = self.port(mb.get("port", port), f"{p}.port")
            if address is None or role is None or mport is None:
                ok = False
                continue
            out[str(name)] = MemberConfig(str(name), address, role, mport, kind)
        return out if ok else None

    def cross_mirror(self, mirrors: dict[str, MirrorConfig], host: str | None) -> None:
        # Two mirrors bound to the same port on this host cannot both listen.
        seen: dict[tuple[str, int], str] = {}
        for name, mc in mirrors.items():
            if host is None or host not in mc.members:
                continue
            me = mc.members[host]
            key = (mc.listen or me.address, me.port)
            if key in seen:
                self.err(f"mirrors.{name}.port", f"port {me.port} already used by mirror "
                         f"{seen[key]!r}", "a distinct port per mirror on this host")
            seen[key] = name


def _kind(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"a {type(value).__name__} ({value!r})"[:120]


def _choices(choices: tuple[str, ...] | None) -> str | None:
    return None if choices is None else "one of " + ", ".join(choices)


# Mirror settings a running worker reads each time it needs them, so a reload
# applies them in place (no reconnect, no restart of the mirror's worker).
RELOAD_IN_PLACE = frozenset({"timeouts", "hooks", "max_lag_on_failover", "hook_timeout",
                             "health"})


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload of ``old`` into ``new`` must do (see :func:`plan_reload`)."""

    unchanged: tuple[str, ...]
    in_place: tuple[str, ...]  # only RELOAD_IN_PLACE fields changed
    restart: tuple[str, ...]  # the mirror's worker restarts (role and term are kept)
    added: tuple[str, ...]
    removed: tuple[str, ...]
    api: bool  # the API listener or the control socket moves
    everything: bool  # host or state_dir changed: every mirror restarts


def plan_reload(old: AgentConfig, new: AgentConfig) -> ReloadPlan:
    """Compare two configs of this host, mirror by mirror."""
    everything = (old.host, old.state_dir) != (new.host, new.state_dir)
    unchanged, in_place, restart = [], [], []
    for name in sorted(old.mirrors.keys() & new.mirrors.keys()):
        a, b = old.mirrors[name], new.mirrors[name]
        changed = {f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)}
        if everything or changed - RELOAD_IN_PLACE:
            restart.append(name)
        elif changed:
            in_place.append(name)
        else:
            unchanged.append(name)
    return ReloadPlan(tuple(unchanged), tuple(in_place), tuple(restart),
                      tuple(sorted(new.mirrors.keys() - old.mirrors.keys())),
                      tuple(sorted(old.mirrors.keys() - new.mirrors.keys())),
                      (old.api_listen, old.api_port, old.control_socket)
                      != (new.api_listen, new.api_port, new.control_socket),
                      everything)
