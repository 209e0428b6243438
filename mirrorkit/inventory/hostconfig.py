"""What each host gets from the inventory: its agent config, its keepalived
VRRP instances, and the controller's PKI request.

The Ansible roles call these through the filters in
roles/mirrorkit_agent/filter_plugins/mirrorkit_filters.py, so the inventory
logic lives in one place. Shapes: docs/architecture.md ("Agent config").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirrorkit.inventory.load import CONNECTION_KEYS, InventoryInvalid, build_inventory, plain
from mirrorkit.inventory.model import DEFAULT_API_PORT, Inventory, Mirror
from mirrorkit.inventory.validate import MIRRORS_KEY, InventoryVars, validate

AGENT_PKI_DIR = "/etc/mirrorkit/pki"
STATE_DIR = "/var/lib/mirrorkit"
API_LISTEN = "127.0.0.1"
# The agent's root-only control socket; the role's unit makes /run/mirrorkit
# its RuntimeDirectory (mode 0700).
CONTROL_SOCKET = "/run/mirrorkit/control.sock"
# mirrorkit-mountd@<mirror>'s socket (capture: mount), beside the control
# socket: both units share the RuntimeDirectory /run/mirrorkit.
MOUNT_SOCKET = "/run/mirrorkit/mount-{mirror}.sock"
# keepalived priorities: the inventory's primary is preferred at start; who
# really holds the VIP is decided by the agent through the tracking script.
VRRP_PRIORITY = {"primary": 150, "backup": 100}


def inventory_from_vars(
    mirrors: Any,
    hostvars: Mapping[str, Mapping[str, Any]],
    api_port: Any = DEFAULT_API_PORT,
    file: str = "inventory",
) -> Inventory:
    """Validate and model an inventory from Ansible variables (as a play sees
    them); raises InventoryInvalid listing every problem."""
    plain_hostvars: dict[str, dict[str, Any]] = {}
    for host in hostvars:
        hv = hostvars[host]
        plain_hostvars[str(host)] = {k: plain(hv[k]) for k in CONNECTION_KEYS if k in hv}
    inv_vars = InventoryVars(
        file=file,
        all_vars={MIRRORS_KEY: plain(mirrors), "mirrorkit_api_port": plain(api_port)},
        hostvars=plain_hostvars,
    )
    errors = validate(inv_vars)
    if errors:
        raise InventoryInvalid(errors)
    return build_inventory(inv_vars)


def host_config(inventory: Inventory, host: str) -> dict[str, Any]:
    """The agent config (/etc/mirrorkit/agent.yml) of one host: only the
    mirrors it is a member of."""
    return {
        "host": host,
        "api": {"listen": API_LISTEN, "port": inventory.api_port},
        "control_socket": CONTROL_SOCKET,
        "state_dir": STATE_DIR,
        "mirrors": {m.name: _mirror_config(inventory, m, host) for m in inventory.mirrors_of(host)},
    }


def _mirror_config(inventory: Inventory, mirror: Mirror, host: str) -> dict[str, Any]:
    role = mirror.members()[host]
    member = mirror.async_member(host)
    pki = f"{AGENT_PKI_DIR}/{mirror.name}"
    members: dict[str, dict[str, Any]] = {}
    for name, member_role in mirror.members().items():
        entry: dict[str, Any] = {"address": inventory.address(name), "role": member_role}
        other = mirror.async_member(name)
        if other is not None:
            entry["kind"] = other.kind
        members[name] = entry
    config: dict[str, Any] = {
        "role": role,
        "kind": member.kind if member is not None else None,
        "mode": mirror.mode,
        "port": mirror.port,
        "paths": list(mirror.paths),
        "exclude": list(mirror.exclude),
        # With capture: mount, the backing directory: the agent never writes
        # through the mount (its writes would be logged).
        "targets": mirror.store_for(host),
        "timeouts": mirror.timeouts.as_dict(),
        "tls": {"ca": f"{pki}/ca.crt", "cert": f"{pki}/member.crt", "key": f"{pki}/member.key"},
        "members": members,
        "hooks": dict(mirror.hooks),
        # Always written out, defaults included: agent.yml shows the values in force.
        "max_lag_on_failover": mirror.max_lag_on_failover,
        "hook_timeout": mirror.hook_timeout,
        "health": mirror.health.as_dict(),
    }
    if mirror.mount_for(host) is not None:  # the arbiter holds no data and no mount
        config["capture"] = "mount"
        config["mount_socket"] = MOUNT_SOCKET.format(mirror=mirror.name)
    return config


def mount_units(inventory: Inventory, host: str) -> list[dict[str, str]]:
    """One mirrorkit-mountd@<mirror> instance per `capture: mount` mirror of
    `host` (every member but the arbiter): where it mounts, what it serves,
    its socket, and its flags (``--sync`` on the failover members of a
    `mode: sync` mirror: an fsync there waits for the backup)."""
    out: list[dict[str, str]] = []
    for mirror in inventory.mirrors_of(host):
        mount = mirror.mount_for(host)
        if mount is not None:
            # Sync mode is between the failover members; async members stay async.
            sync = mirror.mode == "sync" and mirror.members().get(host) in ("primary", "backup")
            out.append({"mirror": mirror.name, "mountpoint": mount[0], "backing": mount[1],
                        "socket": MOUNT_SOCKET.format(mirror=mirror.name),
                        "flags": "--sync" if sync else ""})
    return out


def vip_instances(inventory: Inventory, host: str) -> list[dict[str, Any]]:
    """One keepalived VRRP instance per mirror whose VIP `host` may hold
    (it is that mirror's primary or backup); [] on arbiters and async members."""
    out: list[dict[str, Any]] = []
    for mirror in inventory.mirrors_of(host):
        role = mirror.members()[host]
        if mirror.vip is None or role not in VRRP_PRIORITY:
            continue
        out.append(
            {
                "mirror": mirror.name,
                "address": mirror.vip.address,
                "prefix": mirror.vip.prefix,
                "interface": mirror.vip.interface,
                "router_id": mirror.vip.router_id,
                "priority": VRRP_PRIORITY[role],
                "unicast_src_ip": inventory.address(host),
                "unicast_peers": [
                    inventory.address(h) for h in mirror.failover_hosts() if h != host
                ],
            }
        )
    return out


def pki_members(inventory: Inventory) -> dict[str, dict[str, list[str]]]:
    """{mirror: {host: [address, class]}} for mirrorkit.pki.ensure_mirror_pki."""
    return {
        name: {h: [inventory.address(h), mirror.member_class(h)] for h in mirror.members()}
        for name, mirror in inventory.mirrors.items()
    }
