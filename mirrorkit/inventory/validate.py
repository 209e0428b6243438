"""Validate an inventory as a whole and report every problem at once.

Structure (types, required keys, unknown keys, enums, ranges) is checked with
JSON Schema (`schema.py`); the rules that span fields, mirrors and hosts are
checked here. Every error names the file, the mirror, the host and the field,
says what is wrong and what would be right. The rules are listed, with their
reasons, in docs/inventory.md.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mirrorkit.inventory.model import (
    DEFAULT_API_PORT,
    DEFAULT_PORT,
    HealthCheck,
    Timeouts,
    default_backing,
    default_router_id,
    join_root,
)
from mirrorkit.inventory.schema import NAME_PATTERN, describe, dotted, short, structural_errors

MIRRORS_KEY = "mirrorkit_mirrors"
_VIP_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}/\d{1,2}")
# A member's name is its certificate's CN (at most 64 characters), the name of
# its key file on the controller and a log label: a DNS name or an Ansible
# host name, dot-separated labels of letters, digits, '-' and '_'.
_HOST_RE = re.compile(r"(?!.{65})[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_][A-Za-z0-9_-]*)*",
                      re.DOTALL)
_HOST_FIX = (
    "use a DNS name or Ansible host name: dot-separated labels of letters, digits, '-' and "
    "'_' (a label does not start with '-'), at most 64 characters; the name becomes the "
    "member's certificate and key file names"
)
# The shortest VIP prefix accepted: keepalived adds the VIP with its prefix,
# which puts the whole prefix on-link on the holder; /0 would make every
# address "local" and break the host's routing. /8 is the largest real subnet.
MIN_VIP_PREFIX = 8
# NAME_MAX on Linux filesystems.
MAX_COMPONENT_BYTES = 255


@dataclass(frozen=True)
class InventoryVars:
    """What validation and the model are built from.

    all_vars: the `all` group's variables (mirrorkit_mirrors, mirrorkit_api_port, ...);
    hostvars: every host's resolved variables (only ansible_host and
    mirrorkit_mirrors are read). Ansible's `hostvars` object works as is.
    """

    file: str
    all_vars: Mapping[str, Any]
    hostvars: Mapping[str, Mapping[str, Any]]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ValidationError:
    file: str
    mirror: str | None
    host: str | None
    field: str  # dotted, from the top of the variables: mirrorkit_mirrors.records.vip.address
    problem: str
    fix: str

    def __str__(self) -> str:
        where = [self.file + ":"]
        if self.mirror is not None:
            where.append(f"mirror {self.mirror!r},")
        if self.host is not None:
            where.append(f"host {self.host!r},")
        where.append(f"field {self.short_field}: {self.problem}; {self.fix}")
        return " ".join(where)

    @property
    def short_field(self) -> str:
        """The field relative to its mirror (`vip.address`) when it is in one."""
        prefix = f"{MIRRORS_KEY}.{self.mirror}"
        if self.mirror is not None and self.field.startswith(prefix + "."):
            return self.field[len(prefix) + 1 :]
        if self.mirror is not None and self.field.startswith(prefix + "["):
            return self.field[len(prefix) :]
        return self.field


@dataclass
class _Ctx:
    file: str
    hostvars: Mapping[str, Mapping[str, Any]]
    api_port: int
    errors: list[ValidationError] = field(default_factory=list)
    reported_hosts: set[str] = field(default_factory=set)

    def add(
        self, mirror: str | None, host: str | None, path: str, problem: str, fix: str
    ) -> None:
        err = ValidationError(self.file, mirror, host, path, problem, fix)
        if err not in self.errors:
            self.errors.append(err)


def validate(inv: InventoryVars) -> list[ValidationError]:
    """Every problem of the inventory, in a stable order; [] when it is valid."""
    api_port = inv.all_vars.get("mirrorkit_api_port", DEFAULT_API_PORT)
    ctx = _Ctx(inv.file, inv.hostvars, api_port if _is_int(api_port) else DEFAULT_API_PORT)
    for path, problem, fix in structural_errors(inv.all_vars):
        mirror = str(path[1]) if len(path) > 1 and path[0] == MIRRORS_KEY else None
        ctx.add(mirror, None, dotted(path), problem, fix)
    pki_dir = inv.all_vars.get("mirrorkit_pki_dir")
    if isinstance(pki_dir, str) and pki_dir and not pki_dir.isprintable():
        ctx.add(None, None, "mirrorkit_pki_dir", f"{short(pki_dir)} contains {_control(pki_dir)}",
                "give a directory on the controller, in printable characters")
    mirrors = inv.all_vars.get(MIRRORS_KEY)
    if not isinstance(mirrors, Mapping):
        return ctx.errors
    _check_redefined(ctx, mirrors)
    addresses: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
    for name in sorted(mirrors, key=str):
        spec = mirrors[name]
        if not isinstance(name, str):
            ctx.add(
                str(name), None, _f(str(name)), f"the mirror name is {describe(name)}",
                "a mirror name is a string: a lowercase letter then up to 30 of a-z, 0-9, "
                "'_' or '-' (quote it if YAML reads it as a number: '1.5' is still refused)",
            )
            continue
        if not isinstance(spec, Mapping):
            continue
        _check_mirror(ctx, name, spec, addresses)
    _check_across_mirrors(
        ctx, {k: v for k, v in mirrors.items() if isinstance(k, str) and isinstance(v, Mapping)})
    return sorted(ctx.errors, key=lambda e: (e.mirror or "", e.field))


# -- helpers -----------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _f(mirror: str, *parts: str | int) -> str:
    return dotted([MIRRORS_KEY, mirror, *parts])


def _members(spec: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(host, role, field) of every member named in the spec, in declaration order."""
    out: list[tuple[str, str, str]] = []
    for role in ("primary", "backup", "arbiter"):
        host = _str(spec.get(role))
        if host:
            out.append((host, role, role))
    entries = spec.get("async")
    if isinstance(entries, list):
        for i, entry in enumerate(entries):
            if isinstance(entry, Mapping) and _str(entry.get("host")):
                out.append((entry["host"], "async", f"async[{i}].host"))
    return out


def _paths(spec: Mapping[str, Any]) -> list[str]:
    raw = spec.get("paths")
    return [p for p in raw if isinstance(p, str)] if isinstance(raw, list) else []


def _overlap(a: str, b: str) -> bool:
    a, b = a.rstrip("/") or "/", b.rstrip("/") or "/"
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _address(ctx: _Ctx, host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The host's ansible_host as an IP, or None (and one error per host) if unusable."""
    hv = ctx.hostvars[host]
    raw = hv.get("ansible_host") if isinstance(hv, Mapping) else None
    if raw is None:
        if host not in ctx.reported_hosts:
            ctx.add(
                None, host, "ansible_host", "is missing",
                f"set ansible_host: <IP address> for {host} (mirror members are addressed by IP "
                "in certificates and for the VIP)",
            )
        ctx.reported_hosts.add(host)
        return None
    def refuse(problem: str, fix: str) -> None:
        # A host in several mirrors is reported once.
        if host not in ctx.reported_hosts:
            ctx.add(None, host, "ansible_host", problem, fix)
        ctx.reported_hosts.add(host)

    try:
        address = ipaddress.ip_address(str(raw))
    except ValueError:
        refuse(f"{describe(raw)} is not an IP address",
               "set ansible_host to the member's IP address, e.g. 198.18.7.11 "
               "(DNS names are not accepted: certificates and the VIP need the address)")
        return None
    problem = not_unicast(address)
    if problem is None:
        return address
    refuse(f"{address} is {problem}",
           "set ansible_host to the member's own unicast address, the one its peers "
           "connect to (e.g. 198.18.7.11)")
    return None


def not_unicast(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `address` cannot be a member's or a VIP's address, or None if it can."""
    if address.is_unspecified:
        return "the unspecified address (it names no host)"
    if address.is_loopback:
        return "a loopback address (no other host can reach it)"
    if address.is_multicast:
        return "a multicast address"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if address.is_link_local and address.version == 6:
        return "an IPv6 link-local address (it needs an interface scope)"
    if address.is_reserved:
        return "a reserved address"
    return None


def _check_redefined(ctx: _Ctx, mirrors: Mapping[str, Any]) -> None:
    for host in sorted(ctx.hostvars):
        hv = ctx.hostvars[host]
        if isinstance(hv, Mapping) and MIRRORS_KEY in hv and hv[MIRRORS_KEY] != mirrors:
            ctx.add(
                None, host, MIRRORS_KEY, "is redefined for this host (in group or host vars)",
                "define mirrorkit_mirrors once, in all.vars (or group_vars/all); "
                "remove the other definition",
            )


# -- one mirror --------------------------------------------------------------------


def _check_mirror(
    ctx: _Ctx,
    name: str,
    spec: Mapping[str, Any],
    addresses: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    if not re.match(NAME_PATTERN, name):
        ctx.add(
            name, None, _f(name), "invalid mirror name",
            "use a lowercase letter then up to 30 of a-z, 0-9, '_' or '-' (e.g. records)",
        )
    known = [str(h) for h in ctx.hostvars]
    seen: dict[str, str] = {}
    for host, role, path in _members(spec):
        if not _HOST_RE.fullmatch(host):
            ctx.add(name, None, _f(name, *_split(path)),
                    f"host name {short(host)} is not allowed", _HOST_FIX)
            continue
        if host.lower() == "ca":  # pki.RESERVED_HOST: its files are the mirror's CA
            ctx.add(name, host, _f(name, *_split(path)),
                    f"host name {host!r} is reserved: the mirror's CA files are ca.crt and "
                    "ca.key, so a member named so would get the CA's private key",
                    "rename the host (e.g. ca1)")
            continue
        if host not in ctx.hostvars:
            close = difflib.get_close_matches(host, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            ctx.add(
                name, host, _f(name, *_split(path)), f"host {host!r} is not in the inventory",
                f"{hint}name a host of the inventory ({', '.join(sorted(known)) or 'none'}) "
                "or add it under all.hosts",
            )
            continue
        if host in seen:
            what = "listed twice as an async member" if role == seen[host] == "async" else (
                f"already the {seen[host]} of this mirror"
            )
            ctx.add(
                name, host, _f(name, *_split(path)), f"host {host!r} is {what}",
                "a host holds one role per mirror; pick another host or remove this entry",
            )
            continue
        seen[host] = role
        address = _address(ctx, host)
        if address is not None:
            addresses[host] = address
    _check_addresses_distinct(ctx, name, seen, addresses)
    _check_mode(ctx, name, spec)
    _check_paths(ctx, name, spec)
    _check_capture(ctx, name, spec)
    _check_hooks(ctx, name, spec.get("hooks"))
    _check_timeouts(ctx, name, spec.get("timeouts"))
    _check_health(ctx, name, spec)
    _check_port(ctx, name, spec)
    _check_vip(ctx, name, spec, seen, addresses)


def _check_mode(ctx: _Ctx, name: str, spec: Mapping[str, Any]) -> None:
    # `sync` promises that data the application fsync'ed on the primary is on
    # the backup before fsync returns. Only the `mount` capture method (the
    # agent in the write path) can keep that promise; `watch` sees changes
    # after the fact. Accepting `sync` with it would silently deliver async.
    if spec.get("mode") == "sync" and spec.get("capture") != "mount":
        ctx.add(
            name, None, _f(name, "mode"),
            "mode 'sync' needs capture: mount (an fsync on the mount waits for the "
            "backup); the 'watch' capture (the default) sees changes only after the "
            "fact, so it is asynchronous",
            "add capture: mount to this mirror, or use mode: async",
        )


def _check_capture(ctx: _Ctx, name: str, spec: Mapping[str, Any]) -> None:
    """`capture: mount` serves one directory through one FUSE mount, over a
    backing directory of its own (docs/inventory.md, "Capture")."""
    mount = spec.get("capture") == "mount"
    backing = spec.get("backing")
    if not mount:
        if backing is not None:
            ctx.add(name, None, _f(name, "backing"),
                    "backing is set but the capture is 'watch' (the default), which has none",
                    "set capture: mount, or remove backing")
        return
    paths = _paths(spec)
    raw = spec.get("paths")
    if isinstance(raw, list) and len(raw) > 1:
        ctx.add(name, None, _f(name, "paths"),
                f"has {len(raw)} entries, but capture: mount serves exactly one directory "
                "(one FUSE mount per mirror)",
                "list exactly one path, split the paths into one mirror each, or use "
                "capture: watch")
    if spec.get("exclude"):
        ctx.add(name, None, _f(name, "exclude"),
                "is set, but capture: mount logs every change made on the mount",
                "remove exclude (keep excluded files outside the mirrored directory), or use "
                "capture: watch")
    if not isinstance(backing, str) or not backing:
        return  # the default, a hidden sibling of the path; or reported by the schema
    where = _f(name, "backing")
    problem = path_problem(backing)
    if problem:
        ctx.add(name, None, where, f"{short(backing)} {problem}", _PATH_FIX)
        return
    norm = posixpath.normpath(backing)
    if not backing.startswith("/") or norm != backing or norm == "/":
        ctx.add(name, None, where,
                f"{backing!r} is not a normalised absolute directory other than '/'",
                "use e.g. backing: " + (default_backing(paths[0]) if paths and
                                        paths[0].startswith("/") else "/srv/.records.mirrorkit"))
        return
    for path in paths[:1]:
        if path.startswith("/") and _overlap(backing, path):
            how = ("is the mirrored path" if backing.rstrip("/") == path.rstrip("/") else
                   "is inside the mirrored path" if backing.startswith(path.rstrip("/") + "/")
                   else "contains the mirrored path")
            ctx.add(name, None, where,
                    f"{backing!r} {how} {path!r}: the mount would hide or loop over its own data",
                    "choose a directory beside the path on the same file system, e.g. "
                    f"backing: {default_backing(path)} (the default)")


def _split(path: str) -> list[str | int]:
    out: list[str | int] = []
    for part in re.split(r"\.|(?=\[)", path):
        if part.startswith("["):
            out.append(int(part[1:-1]))
        elif part:
            out.append(part)
    return out


def _check_addresses_distinct(
    ctx: _Ctx, name: str, seen: Mapping[str, str], addresses: Mapping[str, Any]
) -> None:
    by_address: dict[Any, str] = {}
    for host in seen:
        addr = addresses.get(host)
        if addr is None:
            continue
        if addr in by_address:
            ctx.add(
                name, host, "ansible_host", f"{addr} is also the address of {by_address[addr]!r}",
                "each member of a mirror needs its own address",
            )
        else:
            by_address[addr] = host


def _check_paths(ctx: _Ctx, name: str, spec: Mapping[str, Any]) -> None:
    raw = spec.get("paths")
    good: list[tuple[int, str]] = []
    for i, path in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(path, str) or not path:
            continue
        where = _f(name, "paths", i)
        problem = path_problem(path)
        if problem:
            ctx.add(name, None, where, f"{short(path)} {problem}", _PATH_FIX)
            continue
        if not path.startswith("/"):
            ctx.add(name, None, where, f"{path!r} is a relative path",
                    f"use an absolute path, e.g. /{path.lstrip('./')}")
            continue
        norm = posixpath.normpath(path)
        if norm.startswith("//"):
            norm = "/" + norm.lstrip("/")
        if norm == "/":
            ctx.add(name, None, where, "mirroring the whole filesystem '/' is not supported",
                    "name the data directories, e.g. /srv/records")
            continue
        if norm != path:
            ctx.add(name, None, where, f"{path!r} is not normalised", f"write it as {norm!r}")
            continue
        for j, other in good:
            if _overlap(path, other):
                ctx.add(
                    name, None, where, f"{path!r} overlaps paths[{j}] {other!r}",
                    "list each directory once and never one inside another "
                    "(use exclude: to leave parts out)",
                )
                break
        else:
            good.append((i, path))
    root_fields = spec.get("async")
    for i, entry in enumerate(root_fields if isinstance(root_fields, list) else []):
        root = entry.get("root") if isinstance(entry, Mapping) else None
        if isinstance(root, str) and root and path_problem(root):
            ctx.add(name, _str(entry.get("host")), _f(name, "async", i, "root"),
                    f"{short(root)} {path_problem(root)}", _PATH_FIX)
        elif isinstance(root, str) and root:
            norm = posixpath.normpath(root)
            if not root.startswith("/") or norm != root or norm == "/":
                ctx.add(
                    name, _str(entry.get("host")), _f(name, "async", i, "root"),
                    f"{root!r} is not a normalised absolute directory other than '/'",
                    "use e.g. root: /srv/replicas/" + name,
                )
    excludes = spec.get("exclude")
    for i, pattern in enumerate(excludes if isinstance(excludes, list) else []):
        if isinstance(pattern, str) and not pattern.isprintable():
            ctx.add(name, None, _f(name, "exclude", i),
                    f"{short(pattern)} contains {_control(pattern)}",
                    "write the pattern with printable characters only (use ? or [...] "
                    "to match an unusual character)")
        elif isinstance(pattern, str) and pattern.startswith("/"):
            ctx.add(
                name, None, _f(name, "exclude", i), f"{pattern!r} starts with '/'",
                "exclude patterns match the path relative to each mirror path; "
                f"write {pattern.lstrip('/')!r} or '*/{posixpath.basename(pattern)}'",
            )


_PATH_FIX = (
    "use an absolute path of printable characters (spaces are fine), each component at "
    f"most {MAX_COMPONENT_BYTES} bytes, e.g. /srv/records"
)


def path_problem(path: str) -> str | None:
    """What makes `path` unusable as a directory on a member, or None.
    (Absolute and normalised are checked by the caller, with their own fix.)"""
    if not path.isprintable():
        return f"contains {_control(path)}"
    for part in path.split("/"):
        if len(part.encode("utf-8", errors="surrogatepass")) > MAX_COMPONENT_BYTES:
            return f"has a component longer than {MAX_COMPONENT_BYTES} bytes ({short(part, 20)})"
    return None


def _control(text: str) -> str:
    """Names the first non-printable character of `text`."""
    char = next(c for c in text if not c.isprintable())
    names = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\0": "a NUL byte"}
    return names.get(char, f"the non-printable character {char!r}")


def _check_hooks(ctx: _Ctx, name: str, raw: object) -> None:
    # A command may span lines (a shell script) and use tabs; any other
    # control character (NUL above all: no exec() takes it) is a mistake.
    if not isinstance(raw, Mapping):
        return
    for hook, command in raw.items():
        if isinstance(command, str) and not command.replace("\n", "").replace(
                "\t", "").isprintable():
            stripped = command.replace("\n", " ").replace("\t", " ")
            ctx.add(name, None, _f(name, "hooks", str(hook)),
                    f"the command contains {_control(stripped)}",
                    "write the command with printable characters, newlines and tabs only")


def _check_timeouts(ctx: _Ctx, name: str, raw: object) -> None:
    if not isinstance(raw, Mapping):
        return
    for key, value in raw.items():
        if isinstance(value, float) and math.isnan(value):  # JSON Schema's ranges miss NaN
            ctx.add(name, None, _f(name, "timeouts", str(key)), "is not a number (NaN)",
                    "give a number of seconds, e.g. 1.0")
    d = Timeouts()
    hb = raw.get("heartbeat", d.heartbeat)
    qos = raw.get("qos", d.qos)
    arb = raw.get("arbiter", d.arbiter)
    if not all(_is_num(v) and 0 < v < math.inf for v in (hb, qos, arb)):
        return  # reported by the schema
    if hb * 3 > qos:
        ctx.add(
            name, None, _f(name, "timeouts", "qos"),
            f"qos {qos} is less than 3 heartbeats ({hb} s each)",
            f"set qos >= {_at_least(hb * 3)} (or a shorter heartbeat): one lost heartbeat must not "
            "drop the backup",
        )
    if qos + 2 * hb > arb:  # the agent's own test, to the bit (mirrorkit/agent/config.py)
        ctx.add(
            name, None, _f(name, "timeouts", "arbiter"),
            f"arbiter {arb} is less than qos + 2 heartbeats ({qos + 2 * hb:g} s)",
            f"set arbiter >= {_at_least(qos + 2 * hb)} (or a shorter qos or heartbeat): "
            "an isolated primary's lease runs out qos seconds after the arbiter last heard "
            "it and it notices within a heartbeat, so the arbiter must wait longer before "
            "it lets the backup promote, or two primaries could be writable at once",
        )


def _at_least(bound: float) -> str:
    """`bound` written so that the written value passes `value >= bound`:
    3 * 0.05 is 0.15000000000000002 in floating point, so '0.15' would not."""
    written = f"{bound:g}"
    if float(written) < bound:
        written = f"{math.ceil(bound * 1000) / 1000:g}"
    return written


def _check_health(ctx: _Ctx, name: str, spec: Mapping[str, Any]) -> None:
    raw = spec.get("health")
    hook_timeout = spec.get("hook_timeout")
    if isinstance(hook_timeout, float) and math.isnan(hook_timeout):
        ctx.add(name, None, _f(name, "hook_timeout"), "is not a number (NaN)",
                "give a number of seconds > 0 and <= 3600, e.g. 30")
    if raw is None or not isinstance(raw, Mapping):
        return  # absent, or reported by the schema
    hooks = spec.get("hooks")
    if not (isinstance(hooks, Mapping) and _str(hooks.get("health_check"))):
        ctx.add(
            name, None, _f(name, "health"),
            "health is set but hooks.health_check is not: there is no check to run",
            "add hooks.health_check: <command> (e.g. curl -fsS http://127.0.0.1:8080/health), "
            "or remove health",
        )
    for key in ("interval", "timeout"):
        value = raw.get(key)
        if isinstance(value, float) and math.isnan(value):
            ctx.add(name, None, _f(name, "health", key), "is not a number (NaN)",
                    "give a number of seconds > 0 and <= 3600, e.g. 5")
    d = HealthCheck()
    interval = raw.get("interval", d.interval)
    timeout = raw.get("timeout", d.timeout)
    if not all(_is_num(v) and 0 < v <= 3600 for v in (interval, timeout)):
        return  # reported by the schema or above
    if timeout > interval:
        given = "" if "timeout" in raw else " (the default)"
        ctx.add(
            name, None, _f(name, "health", "timeout"),
            f"timeout {timeout:g}{given} is longer than interval {interval:g}",
            f"set health.timeout <= {interval:g} (or a longer interval): a check must be "
            "over, killed if need be, before the next one is due, so runs never pile up",
        )


def _check_port(ctx: _Ctx, name: str, spec: Mapping[str, Any]) -> None:
    port = spec.get("port", DEFAULT_PORT)
    if _is_int(port) and port == ctx.api_port:
        ctx.add(
            name, None, _f(name, "port"), f"port {port} is the agent API port",
            "choose another port (mirrorkit_api_port is used by the status API)",
        )


def _check_vip(
    ctx: _Ctx,
    name: str,
    spec: Mapping[str, Any],
    roles: Mapping[str, str],
    addresses: Mapping[str, Any],
) -> None:
    vip = spec.get("vip")
    if not isinstance(vip, Mapping):
        return
    raw = vip.get("address")
    if not isinstance(raw, str):
        return
    where = _f(name, "vip", "address")
    try:
        if not _VIP_RE.fullmatch(raw):
            raise ValueError(raw)
        iface = ipaddress.IPv4Interface(raw)
    except ValueError:
        ctx.add(name, None, where, f"{short(raw)} is not an IPv4 address with prefix length",
                "write it as a.b.c.d/len, e.g. 198.18.7.100/24")
        return
    net = iface.network
    if net.prefixlen < MIN_VIP_PREFIX:
        ctx.add(name, None, where, f"the prefix /{net.prefixlen} is too short",
                f"use a prefix length from /{MIN_VIP_PREFIX} to /32, that of the subnet "
                "the VIP lives in (e.g. /24): keepalived puts the whole prefix on-link")
        return
    problem = not_unicast(iface.ip)
    if problem is not None:
        ctx.add(name, None, where, f"{iface.ip} is {problem}",
                "choose an unused unicast address in the primary's and backup's subnet")
        return
    if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        ctx.add(name, None, where, f"{iface.ip} is the network or broadcast address of {net}",
                f"choose a host address inside {net}")
    for host, address in addresses.items():
        if host in roles and address == iface.ip:
            ctx.add(name, host, where, f"{iface.ip} is the address of member {host!r}",
                    "choose an unused address: the VIP moves between hosts")
    failover = [h for h in (_str(spec.get("primary")), _str(spec.get("backup"))) if h]
    inside_others = [h for h, r in roles.items() if r in ("arbiter", "async")
                     and h in addresses and addresses[h] in net]
    failover_inside = [h for h in failover if h in addresses and addresses[h] in net]
    hint = ""
    if inside_others and not failover_inside:
        verb = "is" if len(inside_others) == 1 else "are"
        hint = (f" (only {', '.join(inside_others)} {verb} in {net}, but arbiter and async "
                "members never hold the VIP)")
    for host in failover:
        address = addresses.get(host)
        if host not in roles or roles[host] not in ("primary", "backup") or address is None:
            continue
        if address not in net:
            ctx.add(
                name, host, where,
                f"{raw} is outside the subnet of {roles[host]} {host!r} ({address}){hint}",
                "choose a VIP in the subnet shared by the primary and the backup, "
                "which are the only members that may hold it",
            )


# -- across mirrors ----------------------------------------------------------------


def _check_across_mirrors(ctx: _Ctx, mirrors: Mapping[str, Mapping[str, Any]]) -> None:
    ports: dict[tuple[str, int], str] = {}
    routers: dict[tuple[str, int], str] = {}
    vips: dict[str, str] = {}
    targets: dict[str, list[tuple[str, str, str | None, str]]] = {}
    for name in sorted(mirrors):
        spec = mirrors[name]
        port = spec.get("port", DEFAULT_PORT)
        members = [(h, r, p) for h, r, p in _members(spec) if h in ctx.hostvars]
        seen: set[str] = set()
        for host, role, _ in members:
            if host in seen:
                continue
            seen.add(host)
            if _is_int(port):
                if (host, port) in ports:
                    ctx.add(
                        name, host, _f(name, "port"),
                        f"port {port} is also used on this host by mirror {ports[host, port]!r}",
                        f"give each mirror its own port (e.g. port: {_free_port(ports, host)})",
                    )
                else:
                    ports[host, port] = name
            _collect_targets(targets, name, spec, host, role)
        vip = spec.get("vip")
        if isinstance(vip, Mapping) and isinstance(vip.get("interface"), str):
            rid = vip.get("router_id", default_router_id(name))
            if _is_int(rid):
                key = (vip["interface"], rid)
                if key in routers:
                    ctx.add(
                        name, None, _f(name, "vip", "router_id"),
                        f"VRRP router_id {rid} on {vip['interface']} is also used by mirror "
                        f"{routers[key]!r}" + ("" if "router_id" in vip else " (derived default)"),
                        "set vip.router_id to a value 1..255 that no other mirror uses "
                        "on that interface",
                    )
                else:
                    routers[key] = name
            address = vip.get("address")
            if isinstance(address, str) and address.split("/")[0] in vips:
                ctx.add(
                    name, None, _f(name, "vip", "address"),
                    f"{address} is also the VIP of mirror {vips[address.split('/')[0]]!r}",
                    "give each mirror its own VIP",
                )
            elif isinstance(address, str):
                vips[address.split("/")[0]] = name
    _check_targets(ctx, targets)


def _free_port(ports: Mapping[tuple[str, int], str], host: str) -> int:
    port = DEFAULT_PORT + 1
    while (host, port) in ports:
        port += 1
    return port


def _collect_targets(
    targets: dict[str, list[tuple[str, str, str | None, str]]],
    name: str,
    spec: Mapping[str, Any],
    host: str,
    role: str,
) -> None:
    """Remember where this mirror's data lands on `host`: (mirror, target, root, field)."""
    if role == "arbiter":
        return
    root: str | None = None
    where = role
    if role == "async":
        for i, entry in enumerate(spec.get("async") or []):
            if isinstance(entry, Mapping) and entry.get("host") == host:
                root = _str(entry.get("root"))
                where = f"async[{i}]"
                break
    dirs = _paths(spec)
    if spec.get("capture") == "mount" and dirs:
        backing = spec.get("backing")
        # The backing directory holds the data too: no other mirror's may overlap it.
        store = backing if isinstance(backing, str) and backing else default_backing(dirs[0])
        dirs = [dirs[0], store]
    for path in dirs:
        if not path.startswith("/"):
            continue
        target = join_root(root, path) if root and root.startswith("/") else path
        targets.setdefault(host, []).append((name, target, root, where))


def _check_targets(
    ctx: _Ctx, targets: Mapping[str, list[tuple[str, str, str | None, str]]]
) -> None:
    for host in sorted(targets):
        entries = targets[host]
        for i, (mirror, target, root, where) in enumerate(entries):
            for other, other_target, _, _ in entries[:i]:
                if other == mirror or not _overlap(target, other_target):
                    continue
                if where.startswith("async"):
                    fix = (
                        f"set root: on this async entry (e.g. root: /srv/replicas/{mirror}) so "
                        "each mirror lands in its own directory"
                        if root is None else "choose a root: that no other mirror's data uses"
                    )
                else:
                    fix = ("a host's data directories may belong to one mirror only; "
                           "change the paths or the members")
                ctx.add(
                    mirror, host, _f(mirror, *_split(where)),
                    f"data lands at {target} on {host}, overlapping {other_target} of "
                    f"mirror {other!r}",
                    fix,
                )
                break
