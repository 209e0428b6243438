"""Read an inventory with Ansible's own API, so it is an ordinary Ansible
inventory: groups, children, host_vars/ and group_vars/ directories, templated
values all work as they do for `ansible-playbook`.

Any failure (missing file, YAML syntax error, not an inventory, a template that
does not resolve) is a `MirrorkitError` naming the file, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mirrorkit.errors import MirrorkitError
from mirrorkit.inventory.model import (
    DEFAULT_API_PORT,
    DEFAULT_PKI_DIR,
    Host,
    Inventory,
    build_mirrors,
)
from mirrorkit.inventory.precheck import YAML_SUFFIXES, precheck_inventory
from mirrorkit.inventory.validate import MIRRORS_KEY, InventoryVars, ValidationError, validate

SETTINGS = ("mirrorkit_mirrors", "mirrorkit_api_port", "mirrorkit_pki_dir", "mirrorkit_lab")
# canonical connection variable -> the older aliases Ansible also accepts
CONNECTION_VARS: dict[str, tuple[str, ...]] = {
    "ansible_host": ("ansible_ssh_host",),
    "ansible_user": ("ansible_ssh_user",),
    "ansible_port": ("ansible_ssh_port",),
    "ansible_ssh_private_key_file": ("ansible_private_key_file",),
    "ansible_ssh_common_args": (),
}
# every variable read per host: the connection variables and their aliases
CONNECTION_KEYS = (*CONNECTION_VARS, *(a for aliases in CONNECTION_VARS.values() for a in aliases))


class InventoryInvalid(MirrorkitError):
    """The inventory breaks rules; `errors` holds every one of them."""

    def __init__(self, errors: list[ValidationError]) -> None:
        self.errors = errors
        n = len(errors)
        super().__init__(
            f"inventory is invalid ({n} error{'s' if n != 1 else ''}):\n"
            + "\n".join(f"  {e}" for e in errors)
        )


def load_inventory(path: str | Path) -> Inventory:
    """Read, validate and model an inventory; raises InventoryInvalid with all errors."""
    inv_vars = read_inventory_vars(path)
    errors = validate(inv_vars)
    if errors:
        raise InventoryInvalid(errors)
    return build_inventory(inv_vars, Path(path))


def build_inventory(inv_vars: InventoryVars, path: Path | None = None) -> Inventory:
    """The model of a *validated* inventory."""
    settings = inv_vars.all_vars
    hosts = {name: host_from_vars(name, hv) for name, hv in inv_vars.hostvars.items()}
    lab = settings.get("mirrorkit_lab")
    return Inventory(
        path=path if path is not None else Path(inv_vars.file),
        hosts=hosts,
        mirrors=build_mirrors(settings.get(MIRRORS_KEY) or {}),
        api_port=int(settings.get("mirrorkit_api_port") or DEFAULT_API_PORT),
        pki_dir=Path(str(settings.get("mirrorkit_pki_dir") or DEFAULT_PKI_DIR)).expanduser(),
        lab=dict(lab) if isinstance(lab, Mapping) else None,
    )


def host_from_vars(name: str, hv: Mapping[str, Any]) -> Host:
    """A Host (address and SSH settings) from one host's resolved variables."""

    def get(key: str) -> Any:
        for alias in (key, *CONNECTION_VARS[key]):
            if hv.get(alias) is not None:
                return hv[alias]
        return None

    port = get("ansible_port")
    key_file = get("ansible_ssh_private_key_file")
    return Host(
        name=name,
        address=str(get("ansible_host") or name),
        user=None if get("ansible_user") is None else str(get("ansible_user")),
        port=int(port) if isinstance(port, int | str) and str(port).isdigit() else None,
        key_file=None if key_file is None else os.path.expanduser(str(key_file)),
        ssh_common_args=None
        if get("ansible_ssh_common_args") is None
        else str(get("ansible_ssh_common_args")),
    )


def read_inventory_vars(path: str | Path) -> InventoryVars:
    """Parse an inventory with Ansible and return the variables mirrorkit reads,
    templated and converted to plain Python values."""
    source = Path(path)
    _precheck(source)
    from ansible.errors import AnsibleError  # type: ignore[import-untyped]

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            return _read(source, captured)
    except AnsibleError as exc:
        raise MirrorkitError(f"{source}: {_ansible_message(exc)}") from None


def _precheck(source: Path) -> None:
    if not source.exists():
        raise MirrorkitError(f"{source}: inventory file not found")
    if not os.access(source, os.R_OK):
        raise MirrorkitError(f"{source}: cannot read the inventory (permission denied)")
    precheck_inventory(source)  # size, depth, aliases, duplicate keys: before Ansible
    if source.is_dir() or source.suffix not in YAML_SUFFIXES:
        return
    from ansible.errors import AnsibleError
    from ansible.parsing.dataloader import DataLoader  # type: ignore[import-untyped]

    try:
        data = DataLoader().load_from_file(str(source))
    except AnsibleError as exc:
        raise MirrorkitError(f"{source}: {_ansible_message(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MirrorkitError(f"{source}: cannot read the inventory: {exc}") from None
    if not isinstance(data, Mapping) or not data:
        raise MirrorkitError(
            f"{source}: not an Ansible inventory: expected a mapping of groups "
            "(all: {hosts: ..., vars: ...}), found "
            + ("an empty file" if not data else _kind(data))
        )


def _read(source: Path, captured: io.StringIO) -> InventoryVars:
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager  # type: ignore[import-untyped]
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar  # type: ignore[import-untyped]
    from ansible.vars.manager import VariableManager  # type: ignore[import-untyped]

    loader = DataLoader()
    try:
        manager = InventoryManager(loader=loader, sources=[str(source)])
        parsed = bool(manager._inventory.processed_sources)
    except AnsibleError:
        parsed = False
    if not parsed:
        why = _why_unparsed(source, captured)
        raise MirrorkitError(f"{source}: not an Ansible inventory: {why}")
    variables = VariableManager(loader=loader, inventory=manager)
    all_group_vars = manager.groups["all"].get_vars()
    hostvars: dict[str, dict[str, Any]] = {}
    settings: dict[str, Any] = {}
    for host in manager.get_hosts():
        try:
            resolved = variables.get_vars(host=host, include_hostvars=False)
            templar = Templar(loader=loader, variables=resolved)
            hv = {k: plain(templar.template(resolved[k])) for k in CONNECTION_KEYS if k in resolved}
            if MIRRORS_KEY in resolved:
                hv[MIRRORS_KEY] = plain(templar.template(resolved[MIRRORS_KEY]))
            if not settings:  # the all-group's view, resolved with the first host's variables
                for key in SETTINGS:
                    value = all_group_vars.get(key, resolved.get(key))
                    if value is not None:
                        settings[key] = plain(templar.template(value))
        except AnsibleError as exc:
            raise MirrorkitError(
                f"{source}: host {host.name!r}: {_ansible_message(exc)}"
            ) from None
        hostvars[host.name] = hv
    if not hostvars:
        settings.update({k: plain(v) for k, v in all_group_vars.items() if k in SETTINGS})
    warnings = tuple(
        line.removeprefix("[WARNING]: ").strip()
        for line in captured.getvalue().splitlines()
        if line.startswith("[WARNING]: ")
    )
    return InventoryVars(file=str(source), all_vars=settings, hostvars=hostvars, warnings=warnings)


def _kind(data: object) -> str:
    if isinstance(data, str):
        return "a string"
    if isinstance(data, list):
        return "a list"
    return f"a {type(data).__name__.removeprefix('_AnsibleTagged').lower()}"


def _why_unparsed(source: Path, captured: io.StringIO) -> str:
    plugin = "yaml" if source.suffix in YAML_SUFFIXES else "ini"
    text = captured.getvalue()
    match = re.search(rf"Failed to parse inventory with '{plugin}' plugin: (.*)", text)
    if match:
        found = re.sub(r"<class '[\w.]*?(?:_AnsibleTagged)?(\w+)'>", r"\1", match.group(1))
        return found.strip().replace('"List"', '"list"').replace('"Str"', '"string"')
    return "Ansible could not parse it (run `ansible-inventory -i FILE --list` for details)"


def _ansible_message(exc: Exception) -> str:
    message = str(getattr(exc, "message", "") or exc).strip().splitlines()[0]
    origin = getattr(exc, "obj", None)
    line = getattr(origin, "line_num", None)
    col = getattr(origin, "col_num", None)
    if line is not None:
        message += f" (line {line}" + (f", column {col})" if col is not None else ")")
    return message


def plain(value: Any) -> Any:
    """Ansible's tagged/lazy values as plain dict, list, str, int, float, bool, None."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)
