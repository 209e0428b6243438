"""What a lab is made of, read from an inventory: hosts, addresses, network.

A deliberately simple YAML reader (all.hosts, all.vars, all.children.*.hosts,
nested children): the lab only needs host names, `ansible_host` and
`all.vars.mirrorkit_lab: {network, subnet, prefix}`. Every problem found is
reported at once, as one MirrorkitError.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mirrorkit.errors import MirrorkitError

DEFAULT_INVENTORY = Path("inventories/lab.yml")
# Reserved for network benchmark tests (RFC 2544): the only addresses the lab uses.
LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_HOSTNAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")


@dataclass(frozen=True)
class LabHost:
    name: str        # inventory host name == container hostname
    container: str   # container name: prefix + name
    address: str


@dataclass(frozen=True)
class LabSpec:
    inventory: Path
    network: str
    subnet: ipaddress.IPv4Network
    hosts: tuple[LabHost, ...]

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if name in (h.name, h.container):
                return h
        known = ", ".join(h.name for h in self.hosts)
        raise MirrorkitError(f"{self.inventory}: no lab host {name!r} (hosts: {known})")


def load_spec(path: Path | str) -> LabSpec:
    """Read and check INVENTORY's lab description; raise MirrorkitError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise MirrorkitError(f"{path}: inventory file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MirrorkitError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from exc
    except OSError as exc:
        raise MirrorkitError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_spec(data, path)


def parse_spec(data: Any, path: Path) -> LabSpec:
    if not isinstance(data, dict) or not isinstance(data.get("all"), dict):
        raise MirrorkitError(f"{path}: expected a YAML inventory with a top-level 'all:' mapping")
    top: dict[str, Any] = data["all"]
    errors: list[str] = []
    all_vars = top.get("vars") or {}
    if not isinstance(all_vars, dict):
        errors.append("all.vars: must be a mapping")
        all_vars = {}
    hostvars: dict[str, dict[str, Any]] = {}
    _collect_hosts(top, "all", hostvars, errors)

    lab = all_vars.get("mirrorkit_lab")
    network, subnet, prefix = "", None, ""
    if lab is None:
        errors.append(
            "all.vars.mirrorkit_lab: missing; a lab inventory declares "
            "mirrorkit_lab: {network: NAME, subnet: 198.18.X.0/24}"
        )
    elif not isinstance(lab, dict):
        errors.append("all.vars.mirrorkit_lab: must be a mapping {network: NAME, subnet: CIDR}")
    else:
        network, subnet, prefix = _check_lab(lab, errors)

    hosts: list[LabHost] = []
    seen: dict[str, str] = {}
    for name, hv in hostvars.items():
        where = f"host {name}"
        if not _HOSTNAME.match(name):
            errors.append(f"{where}: name must be a valid hostname (letters, digits, '-')")
        addr_raw = hv.get("ansible_host", all_vars.get("ansible_host"))
        if addr_raw is None:
            errors.append(f"{where}.ansible_host: missing; lab hosts need a fixed IPv4 address")
            continue
        try:
            addr = ipaddress.IPv4Address(str(addr_raw))
        except ValueError:
            errors.append(f"{where}.ansible_host: {addr_raw!r} is not an IPv4 address")
            continue
        if addr not in LAB_RANGE:
            errors.append(f"{where}.ansible_host: {addr} is outside {LAB_RANGE}")
        elif subnet is not None:
            if addr not in subnet:
                errors.append(f"{where}.ansible_host: {addr} is outside the lab subnet {subnet}")
            elif addr in (subnet.network_address, subnet.broadcast_address, _gateway(subnet)):
                errors.append(
                    f"{where}.ansible_host: {addr} is reserved in {subnet} "
                    f"(network, broadcast or gateway {_gateway(subnet)})"
                )
        if str(addr) in seen:
            errors.append(f"{where}.ansible_host: {addr} is already used by host {seen[str(addr)]}")
        seen[str(addr)] = name
        hosts.append(LabHost(name=name, container=prefix + name, address=str(addr)))
    if not hostvars:
        errors.append("all.hosts: no hosts declared")
    if errors or subnet is None:
        raise MirrorkitError(
            f"{path}: invalid lab inventory:\n  - " + "\n  - ".join(errors)
        )
    return LabSpec(inventory=path, network=network, subnet=subnet, hosts=tuple(hosts))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(problem)


def _gateway(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """podman/netavark gives the first address of the subnet to the host bridge."""
    return subnet.network_address + 1


def _check_lab(lab: dict[str, Any], errors: list[str]
               ) -> tuple[str, ipaddress.IPv4Network | None, str]:
    where = "all.vars.mirrorkit_lab"
    network = lab.get("network")
    if not isinstance(network, str) or not _NAME.match(network):
        errors.append(f"{where}.network: {network!r} is not a valid podman network name")
        network = ""
    subnet = None
    raw = lab.get("subnet")
    try:
        subnet = ipaddress.IPv4Network(str(raw))
    except ValueError:
        errors.append(f"{where}.subnet: {raw!r} is not an IPv4 network like 198.18.7.0/24")
    if subnet is not None and not subnet.subnet_of(LAB_RANGE):
        errors.append(
            f"{where}.subnet: {subnet} is outside {LAB_RANGE} "
            "(the lab only uses addresses reserved for test networks)"
        )
        subnet = None
    elif subnet is not None and subnet.prefixlen > 29:
        errors.append(f"{where}.subnet: {subnet} is too small (use /24 .. /29)")
        subnet = None
    prefix = lab.get("prefix", "")
    if not isinstance(prefix, str) or (prefix and not _NAME.match(prefix)):
        errors.append(f"{where}.prefix: {prefix!r} must be a container-name prefix like 'mk-'")
        prefix = ""
    unknown = sorted(set(lab) - {"network", "subnet", "prefix"})
    if unknown:
        errors.append(
            f"{where}: unknown keys {', '.join(unknown)} (known: network, subnet, prefix)"
        )
    return network, subnet, prefix


def _collect_hosts(group: dict[str, Any], where: str,
                   out: dict[str, dict[str, Any]], errors: list[str]) -> None:
    hosts = group.get("hosts") or {}
    if not isinstance(hosts, dict):
        errors.append(f"{where}.hosts: must be a mapping of host names")
        hosts = {}
    for name, hv in hosts.items():
        if hv is not None and not isinstance(hv, dict):
            errors.append(f"{where}.hosts.{name}: host variables must be a mapping")
            hv = {}
        merged = out.setdefault(str(name), {})
        merged.update(hv or {})
    children = group.get("children") or {}
    if not isinstance(children, dict):
        errors.append(f"{where}.children: must be a mapping of groups")
        return
    for gname, child in children.items():
        if child is None:
            continue
        if not isinstance(child, dict):
            errors.append(f"{where}.children.{gname}: must be a mapping")
            continue
        _collect_hosts(child, f"{where}.children.{gname}", out, errors)
