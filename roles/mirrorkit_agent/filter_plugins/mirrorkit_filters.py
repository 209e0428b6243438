"""Ansible filters that turn the inventory into per-host settings.

They call into `mirrorkit.inventory.hostconfig` (the controller runs Ansible
from the venv where mirrorkit is installed), so the roles and the CLI share one
implementation. Every filter validates the whole inventory first and fails
with every problem listed, never a traceback.

    {{ mirrorkit_mirrors | mirrorkit_host_config(inventory_hostname, hostvars, api_port) }}
    {{ mirrorkit_mirrors | mirrorkit_vip_instances(inventory_hostname, hostvars) }}
    {{ mirrorkit_mirrors | mirrorkit_pki_members(hostvars) }}
    {{ mirrorkit_mirrors | mirrorkit_mount_units(inventory_hostname, hostvars) }}
    ReadWritePaths={{ paths | mirrorkit_systemd_words }}
    interface {{ vi.interface | mirrorkit_keepalived_word }}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError  # type: ignore[import-untyped]

try:
    from mirrorkit.errors import MirrorkitError
    from mirrorkit.inventory import escape, hostconfig
    from mirrorkit.inventory.model import DEFAULT_API_PORT
except ImportError as exc:  # pragma: no cover - depends on the controller's environment
    _IMPORT_ERROR: ImportError | None = exc
    DEFAULT_API_PORT = 7480
else:
    _IMPORT_ERROR = None


def _inventory(mirrors: Any, hostvars: Mapping[str, Any], api_port: Any) -> Any:
    if _IMPORT_ERROR is not None:
        raise AnsibleFilterError(
            f"mirrorkit filters: cannot import mirrorkit ({_IMPORT_ERROR}); run ansible from "
            "the environment where mirrorkit is installed"
        )
    try:
        return hostconfig.inventory_from_vars(mirrors, hostvars, api_port)
    except MirrorkitError as exc:
        raise AnsibleFilterError(str(exc)) from None


def _known(inventory: Any, host: str) -> None:
    if host not in inventory.hosts:
        raise AnsibleFilterError(f"mirrorkit filters: {host!r} is not an inventory host")


def mirrorkit_host_config(
    mirrors: Any, host: str, hostvars: Mapping[str, Any], api_port: Any = DEFAULT_API_PORT
) -> dict[str, Any]:
    """The agent config (/etc/mirrorkit/agent.yml) of `host`."""
    inventory = _inventory(mirrors, hostvars, api_port)
    _known(inventory, host)
    result: dict[str, Any] = hostconfig.host_config(inventory, host)
    return result


def mirrorkit_vip_instances(
    mirrors: Any, host: str, hostvars: Mapping[str, Any], api_port: Any = DEFAULT_API_PORT
) -> list[dict[str, Any]]:
    """keepalived VRRP instances `host` takes part in (primary/backup with a VIP)."""
    inventory = _inventory(mirrors, hostvars, api_port)
    _known(inventory, host)
    result: list[dict[str, Any]] = hostconfig.vip_instances(inventory, host)
    return result


def mirrorkit_mount_units(
    mirrors: Any, host: str, hostvars: Mapping[str, Any], api_port: Any = DEFAULT_API_PORT
) -> list[dict[str, str]]:
    """mirrorkit-mountd@ instances of `host` (its `capture: mount` mirrors)."""
    inventory = _inventory(mirrors, hostvars, api_port)
    _known(inventory, host)
    result: list[dict[str, str]] = hostconfig.mount_units(inventory, host)
    return result


def mirrorkit_pki_members(
    mirrors: Any, hostvars: Mapping[str, Any], api_port: Any = DEFAULT_API_PORT
) -> dict[str, dict[str, list[str]]]:
    """{mirror: {host: [address, class]}} for the controller's PKI step."""
    result: dict[str, dict[str, list[str]]] = hostconfig.pki_members(
        _inventory(mirrors, hostvars, api_port)
    )
    return result


def _escaping(name: str) -> Callable[..., str]:
    def apply(value: Any) -> str:
        if _IMPORT_ERROR is not None:
            raise AnsibleFilterError(f"mirrorkit filters: cannot import mirrorkit: {_IMPORT_ERROR}")
        try:
            result: str = getattr(escape, name)(value)
        except MirrorkitError as exc:
            raise AnsibleFilterError(str(exc)) from None
        return result

    apply.__name__ = f"mirrorkit_{name}"
    apply.__doc__ = f"mirrorkit.inventory.escape.{name} as a filter."
    return apply


class FilterModule:
    """mirrorkit's inventory filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "mirrorkit_host_config": mirrorkit_host_config,
            "mirrorkit_vip_instances": mirrorkit_vip_instances,
            "mirrorkit_pki_members": mirrorkit_pki_members,
            "mirrorkit_mount_units": mirrorkit_mount_units,
            "mirrorkit_systemd_words": _escaping("systemd_words"),
            "mirrorkit_keepalived_word": _escaping("keepalived_word"),
        }
