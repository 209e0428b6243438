"""The inventory: loading (Ansible's API), validation, the model, per-host config."""

from mirrorkit.inventory.load import InventoryInvalid, load_inventory, read_inventory_vars
from mirrorkit.inventory.model import AsyncMember, Host, Inventory, Mirror, Timeouts, Vip
from mirrorkit.inventory.validate import InventoryVars, ValidationError, validate

__all__ = [
    "AsyncMember",
    "Host",
    "Inventory",
    "InventoryInvalid",
    "InventoryVars",
    "Mirror",
    "Timeouts",
    "ValidationError",
    "Vip",
    "load_inventory",
    "read_inventory_vars",
    "validate",
]
