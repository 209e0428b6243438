"""The structural rules of the inventory as JSON Schema, and their translation
into mirrorkit's error form (file, mirror, host, field, problem, fix).

Semantic rules that span fields and hosts live in `validate.py`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jsonschema  # type: ignore[import-untyped]

from mirrorkit.inventory.model import ASYNC_KINDS, CAPTURES, HOOKS, MAX_HOOK_TIMEOUT, MODES

# `\Z`, not `$`: `$` also matches before a final newline ("records\n").
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,30}\Z"
# A Linux interface name: at most IFNAMSIZ - 1 = 15 bytes; the kernel also
# refuses "." and "..", "/", ":" and whitespace. The safe set is what `ip link`
# creates in practice (eth0, ens3, bond0.100, br-lan).
INTERFACE_PATTERN = r"^(?!\.{1,2}\Z)[A-Za-z0-9_.-]{1,15}\Z"
# Longest path, exclude pattern and hook command accepted (see docs/inventory.md).
MAX_PATH = 1024
MAX_PATTERN = 256
MAX_HOOK = 4096

_HOST = {"type": "string", "minLength": 1, "description": "an inventory host name"}


def _seconds(low: float, high: float) -> dict[str, Any]:
    return {"type": "number", "minimum": low, "maximum": high,
            "description": f"seconds, from {low:g} to {high:g}"}


def _positive_seconds(high: float) -> dict[str, Any]:
    return {"type": "number", "exclusiveMinimum": 0, "maximum": high,
            "description": f"a number of seconds > 0 and <= {high:g}"}


def _text(max_length: int, description: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length,
            "description": description}

_PORT = {
    "type": "integer", "minimum": 1024, "maximum": 65535,
    "description": "an integer TCP port from 1024 to 65535",
}

MIRROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["paths", "primary"],
    "additionalProperties": False,
    "properties": {
        "paths": {
            "type": "array",
            "minItems": 1,
            "maxItems": 64,
            "items": _text(MAX_PATH, f"an absolute path of at most {MAX_PATH} characters"),
            "description": "a list of 1 to 64 absolute paths, e.g. [/srv/records]",
        },
        "exclude": {
            "type": "array",
            "maxItems": 256,
            "items": _text(MAX_PATTERN, f"a pattern of at most {MAX_PATTERN} characters"),
            "description": "a list of at most 256 patterns, e.g. ['*.tmp']",
        },
        "mode": {"enum": list(MODES)},
        "capture": {"enum": list(CAPTURES)},
        "backing": _text(MAX_PATH, f"an absolute path of at most {MAX_PATH} characters, "
                                   "e.g. /srv/.records.mirrorkit"),
        "port": _PORT,
        "primary": _HOST,
        "backup": {**_HOST, "type": ["string", "null"]},
        "arbiter": {**_HOST, "type": ["string", "null"]},
        "async": {
            "type": ["array", "null"],
            "maxItems": 64,
            "description": "a list of at most 64 entries like [{host: dr1, kind: dr}]",
            "items": {
                "type": "object",
                "required": ["host", "kind"],
                "additionalProperties": False,
                "description": "{host: HOST, kind: dr|reporting, root: /abs/dir (optional)}",
                "properties": {
                    "host": _HOST,
                    "kind": {"enum": list(ASYNC_KINDS)},
                    "root": _text(MAX_PATH, f"an absolute path of at most {MAX_PATH} characters"),
                },
            },
        },
        "vip": {
            "type": ["object", "null"],
            "required": ["address", "interface"],
            "additionalProperties": False,
            "description": "{address: a.b.c.d/len, interface: eth0, router_id: 1..255}",
            "properties": {
                "address": {"type": "string", "description": "a.b.c.d/len"},
                "interface": {
                    "type": "string", "pattern": INTERFACE_PATTERN,
                    "description": "a Linux interface name: 1 to 15 of a-z, A-Z, 0-9, '.', '_' "
                                   "or '-' (e.g. eth0)",
                },
                "router_id": {"type": "integer", "minimum": 1, "maximum": 255},
            },
        },
        "timeouts": {
            "type": "object",
            "additionalProperties": False,
            # A heartbeat below 50 ms is busy-polling; above a minute, failover
            # takes many minutes. An hour is past any sensible qos or arbiter wait.
            "properties": {"heartbeat": _seconds(0.05, 60), "qos": _seconds(0.15, 3600),
                           "arbiter": _seconds(0.15, 3600)},
        },
        "max_lag_on_failover": {
            "type": "integer", "minimum": 0,
            "description": "an integer number of bytes >= 0, e.g. 1048576 (1 MiB)",
        },
        "hook_timeout": _positive_seconds(MAX_HOOK_TIMEOUT),
        "health": {
            "type": "object",
            "additionalProperties": False,
            "description": "{interval: seconds, timeout: seconds, failures: 1..1000}",
            "properties": {
                "interval": _positive_seconds(3600),
                "timeout": _positive_seconds(3600),
                "failures": {"type": "integer", "minimum": 1, "maximum": 1000,
                             "description": "an integer from 1 to 1000"},
            },
        },
        "hooks": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                h: {"type": "string", "maxLength": MAX_HOOK,
                    "description": f"a command of at most {MAX_HOOK} characters"}
                for h in HOOKS
            },
        },
    },
}

SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["mirrorkit_mirrors"],
    "properties": {
        "mirrorkit_mirrors": {
            "type": "object",
            "maxProperties": 256,
            "description": "a mapping of at most 256 mirror names -> mirror settings",
            "additionalProperties": MIRROR_SCHEMA,
        },
        "mirrorkit_api_port": _PORT,
        "mirrorkit_pki_dir": _text(MAX_PATH, f"a path of at most {MAX_PATH} characters"),
        "mirrorkit_lab": {"type": "object"},
    },
}

# Keys people write when they try to give the VIP to someone other than the
# failover pair; the VIP always follows the primary (and the backup after a failover).
_VIP_HOLDER_KEYS = {"holders", "holder", "hosts", "host", "members", "nodes", "priority"}
_VIP_FIX = (
    "remove it: the VIP always follows the primary and backup; "
    "arbiter and async members never hold it"
)

_JSON_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "null": "empty",
    "boolean": "true/false",
}


def describe(value: object) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return f"the string {short(value)}"
    return f"{type(value).__name__} {short(repr(value), quote=False)}"


def short(value: str, limit: int = 60, quote: bool = True) -> str:
    """`value` quoted (repr), cut to `limit` characters with its length when longer:
    an error message never echoes a 100 MB value."""
    if len(value) <= limit:
        return repr(value) if quote else value
    head = repr(value[:limit]) if quote else value[:limit]
    return f"{head}... ({len(value):,} characters)"


def dotted(path: Sequence[str | int]) -> str:
    """('mirrorkit_mirrors', 'm', 'async', 0, 'kind') -> 'mirrorkit_mirrors.m.async[0].kind'."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.isprintable():
            out += f"[{short(part)}]"  # never a raw newline in an error line
        else:  # a key; YAML also allows numbers and booleans as keys (`1.5:`)
            out += ("." if out else "") + str(part)
    return out


def structural_errors(settings: Mapping[str, Any]) -> Iterator[tuple[list[Any], str, str]]:
    """(path, problem, fix) for every JSON Schema violation, in document order."""
    validator = jsonschema.Draft202012Validator(SETTINGS_SCHEMA)
    errors = sorted(validator.iter_errors(settings), key=lambda e: [str(p) for p in e.path])
    for error in errors:
        yield from _translate(error)


def _expected(schema: Mapping[str, Any]) -> str:
    if "description" in schema:
        return str(schema["description"])
    if "enum" in schema:
        return " or ".join(str(c) for c in schema["enum"])
    types = schema.get("type")
    names = types if isinstance(types, list) else [types]
    return " or ".join(_JSON_TYPES.get(str(t), str(t)) for t in names if t)


def _translate(error: Any) -> Iterator[tuple[list[Any], str, str]]:
    path: list[Any] = list(error.absolute_path)
    kind = error.validator
    schema = error.schema
    value = error.instance
    if kind == "additionalProperties" and isinstance(value, Mapping):
        allowed = sorted(schema.get("properties", {}))
        for key in sorted(set(value) - set(allowed), key=str):
            fix = _unknown_key_fix(path, str(key), allowed)
            yield [*path, str(key)], f"unknown key {short(str(key))}", fix
    elif kind == "required":
        missing = next(
            (k for k in schema["required"] if k not in value and repr(k) in error.message), "?"
        )
        sub = schema.get("properties", {}).get(missing, {})
        yield [*path, missing], "is missing", f"add {missing}: {_expected(sub)}"
    elif kind == "type":
        want = _expected(schema)
        yield path, f"is {describe(value)}", f"it must be {want}"
    elif kind == "enum":
        choices = " or ".join(str(c) for c in schema["enum"])
        yield path, f"{describe(value)} is not allowed", f"use {choices}"
    elif kind in ("minimum", "maximum", "exclusiveMinimum"):
        yield path, f"{value!r} is out of range", f"use a value {_range(schema)}"
    elif kind in ("minItems", "minLength"):
        yield path, f"is {describe(value) if value else 'empty'}", f"give {_expected(schema)}"
    elif kind in ("maxItems", "maxProperties"):
        yield path, f"has {len(value)} entries, too many", f"give {_expected(schema)}"
    elif kind == "maxLength":
        yield path, f"is {len(value):,} characters long, too long", f"give {_expected(schema)}"
    elif kind == "pattern":
        yield path, f"{describe(value)} is not allowed", f"use {_expected(schema)}"
    else:  # pragma: no cover - every keyword we use is handled above
        yield path, error.message, "see docs/inventory.md"


def _range(schema: Mapping[str, Any]) -> str:
    """'between 1 and 9', 'greater than 0 and at most 3600', 'of at least 0'."""
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if lo is not None and hi is not None:
        return f"between {lo:g} and {hi:g}"
    parts = []
    if "exclusiveMinimum" in schema:
        parts.append(f"greater than {schema['exclusiveMinimum']:g}")
    elif lo is not None:
        parts.append(f"of at least {lo:g}")
    if hi is not None:
        parts.append(f"at most {hi:g}")
    return " and ".join(parts)


def _unknown_key_fix(path: list[Any], key: str, allowed: list[str]) -> str:
    parent = path[-1] if path else ""
    in_async = len(path) >= 2 and path[-2] == "async"
    if parent == "vip" and key in _VIP_HOLDER_KEYS:
        return _VIP_FIX
    if in_async and key in ("vip", "priority"):
        return "remove it: async members never hold the VIP (it follows the primary and backup)"
    if key == "vip" and parent not in ("", "mirrorkit_mirrors"):
        return _VIP_FIX
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}allowed keys: {', '.join(allowed)}"
