"""A bounded look at every file an inventory consists of, before Ansible parses it.

Ansible builds the whole document in memory and then walks it several times
(variable merging, templating, our own conversion to plain values). A YAML
alias is a pointer while parsing but a copy on every walk, so a 628-byte
"billion laughs" file ran 40 s and grew to 1.27 GB; a document nested
100,000 deep overflowed the C stack of the YAML composer (a segfault). This
module reads each file once, as an event stream (`yaml.parse` is iterative:
no recursion, nothing built), and refuses it at the first bound it crosses:

* file size, number of files and total size;
* nesting depth of mappings and sequences;
* the size of the document with every alias expanded (an anchor's size is
  remembered, so counting never expands anything itself);
* a key written twice in one mapping (Ansible warns and keeps the last one,
  which silently drops the first `paths:`).

Which files: the inventory (a file, or every file of an inventory
directory) and everything under `host_vars/` and `group_vars/` beside it
that Ansible's vars plugin could read (names without extension or ending in
.yml, .yaml or .json, not hidden, not ending in `~`). A syntax error is left
to Ansible, which reports it with its own line and column; the event stream
stops there, so whatever came before it was within the bounds.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mirrorkit.agent.util.boundedjson import nesting_depth
from mirrorkit.errors import MirrorkitError


@dataclass(frozen=True)
class Limits:
    """The bounds (docs/architecture.md, "Inventory and templates")."""

    # One inventory file: 10,000 hosts with a few variables each fit in about
    # 1 MiB; 4 MiB leaves room and keeps Ansible's in-memory copies in the low
    # hundreds of MB.
    file_bytes: int = 4 * 1024 * 1024
    # Every file together (host_vars/ for thousands of hosts).
    total_bytes: int = 64 * 1024 * 1024
    # Files under the inventory directory, host_vars/ and group_vars/ each.
    files: int = 10_000
    # Directories below them (Ansible recurses into them).
    dir_depth: int = 16
    # The deepest mirrorkit field is 6 levels below a host's or group's vars;
    # groups add 2 levels per `children:`. 64 leaves room for 25 nested
    # groups and stays far below any recursion limit.
    depth: int = 64
    # The document with every alias expanded, in units: 1 per mapping or
    # sequence, 1 + length per scalar. An alias-free file within file_bytes
    # stays below twice its size (each unit needs at least a byte of text),
    # so only aliases can reach it.
    expanded: int = 8 * 1024 * 1024
    # Hosts declared (after expanding ranges like node[01:50]). Ansible takes
    # about 7 ms per host to parse and resolve (1,000 hosts: ~7 s here; 65,000
    # hosts in a 4 MiB file ran over 5 minutes): a mirrorkit inventory lists
    # the mirrors' members, not the whole fleet.
    hosts: int = 1_000


LIMITS = Limits()

YAML_SUFFIXES = (".yml", ".yaml", ".json")
VARS_DIRS = ("host_vars", "group_vars")
_VAULT = "$ANSIBLE_VAULT;"
_MERGE_KEY = "<<"


def precheck_inventory(source: Path, limits: Limits = LIMITS) -> None:
    """Refuse (MirrorkitError) the first file of the inventory at `source`
    that crosses a bound; return when every file is within them."""
    used = _Used()
    for path, as_yaml in inventory_files(source, limits):
        check_file(path, as_yaml=as_yaml, limits=limits, used=used)


def inventory_files(source: Path, limits: Limits = LIMITS) -> Iterator[tuple[Path, bool]]:
    """(file, parse as YAML?) for every file Ansible may read for `source`."""
    if source.is_dir():
        yield from _walk(source, limits, inventory_dir=True)
        base = source
    else:
        # Ansible's yaml plugin also takes a file without an extension.
        yield source, source.suffix in YAML_SUFFIXES or not source.suffix
        base = source.parent
    for name in VARS_DIRS:
        vars_dir = base / name
        if vars_dir.is_dir():
            yield from _walk(vars_dir, limits, inventory_dir=False)


def _walk(root: Path, limits: Limits, *, inventory_dir: bool) -> Iterator[tuple[Path, bool]]:
    seen: set[str] = set()
    count = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(here)
        if real in seen:  # a symlink loop: read each directory once
            dirnames[:] = []
            continue
        seen.add(real)
        depth = len(here.relative_to(root).parts)
        if depth > limits.dir_depth:
            raise MirrorkitError(
                f"{here}: directories nested {depth} deep in the inventory; at most "
                f"{limits.dir_depth} levels below {root} are read (flatten it)"
            )
        dirnames[:] = sorted(d for d in dirnames if _read_by_ansible(d, inventory_dir))
        if inventory_dir and here == root:
            dirnames[:] = [d for d in dirnames if d not in VARS_DIRS]  # walked separately
        for name in sorted(filenames):
            if not _read_by_ansible(name, inventory_dir):
                continue
            suffix = os.path.splitext(name)[1]
            if not inventory_dir and suffix and suffix not in YAML_SUFFIXES:
                continue  # the vars plugin skips other extensions
            count += 1
            if count > limits.files:
                raise MirrorkitError(
                    f"{root}: more than {limits.files:,} files; an inventory is read from at "
                    f"most {limits.files:,} files in each of its directories"
                )
            yield here / name, suffix in YAML_SUFFIXES or not suffix


def _read_by_ansible(name: str, inventory_dir: bool) -> bool:
    if name.startswith(".") or name.endswith("~"):
        return False
    # An inventory directory's files go to every inventory plugin; these
    # are the extensions Ansible ignores there (INVENTORY_IGNORE_EXTS).
    ignored = (".orig", ".ini", ".cfg", ".retry", ".pyc", ".pyo", ".md", ".txt", ".rst")
    return not (inventory_dir and name.endswith(ignored))


@dataclass
class _Used:
    """What the files read so far have used of the shared bounds."""

    total_bytes: int = 0
    host_patterns: set[str] = field(default_factory=set)
    hosts: int = 0

    def add_host(self, pattern: str, where: str, line: int, limits: Limits) -> None:
        if pattern in self.host_patterns:
            return
        self.host_patterns.add(pattern)
        self.hosts += host_count(pattern, limits.hosts + 1)
        if self.hosts > limits.hosts:
            raise MirrorkitError(
                f"{where}, line {line}: more than {limits.hosts:,} hosts (counting ranges such "
                f"as node[01:20]); mirrorkit reads inventories of at most {limits.hosts:,} "
                "hosts: keep the mirrors' members in an inventory of their own"
            )


_RANGE = re.compile(r"\[([^\[\]:]*):([^\[\]:]*)(?::([^\[\]:]*))?\]")


def host_count(pattern: str, cap: int) -> int:
    """How many hosts an Ansible host pattern declares (`www[01:50].x` is 50),
    at most `cap`; a range Ansible cannot expand counts as one."""
    count = 1
    for match in _RANGE.finditer(pattern):
        beg, end, step = match.groups()
        try:
            stride = int(step) if step else 1
            if beg.isalpha() and end.isalpha() and len(beg) == len(end) == 1:
                first, last = ord(beg), ord(end)
            else:
                first, last = int(beg or "0"), int(end)
        except ValueError:
            if (beg + end).isdigit():
                return cap  # more digits than Python converts: far too many hosts
            continue
        if stride > 0 and last >= first:
            count *= (last - first) // stride + 1
        if count >= cap:
            return cap
    return count


def check_file(
    path: Path, *, as_yaml: bool = True, limits: Limits = LIMITS, used: _Used | None = None
) -> None:
    """Refuse one file over a bound; a YAML or JSON file is also read as an
    event stream for depth, expanded size and duplicate keys."""
    used = used if used is not None else _Used()
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > limits.file_bytes:
                raise MirrorkitError(_too_big(path, size, limits))
            data = stream.read(limits.file_bytes + 1)
    except OSError as exc:
        raise MirrorkitError(f"{path}: cannot read the inventory: {exc.strerror}") from None
    if len(data) > limits.file_bytes:  # grew while we looked, or a file without a size
        raise MirrorkitError(_too_big(path, len(data), limits))
    used.total_bytes += len(data)
    if used.total_bytes > limits.total_bytes:
        raise MirrorkitError(
            f"{path}: the inventory's files exceed {_size(limits.total_bytes)} together "
            f"(at most {limits.total_bytes:,} bytes); split the fleet into several inventories"
        )
    text = data.decode("utf-8", errors="surrogateescape")
    if as_yaml:
        check_text(text, str(path), limits, used)
    else:
        _count_ini_hosts(text, str(path), limits, used)


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 and n % 2**20 == 0 else f"{n:,} bytes"


def _too_big(path: Path, size: int, limits: Limits) -> str:
    return (
        f"{path}: the file is {size:,} bytes; an inventory file may be at most "
        f"{_size(limits.file_bytes)} (split it, e.g. into host_vars/ and group_vars/ files)"
    )


def check_text(
    text: str, where: str, limits: Limits = LIMITS, used: _Used | None = None
) -> None:
    """Refuse YAML or JSON text over the bounds (MirrorkitError naming `where`,
    the line, the bound and what is accepted)."""
    used = used if used is not None else _Used()
    head = text.lstrip()[:64]
    if head.startswith(_VAULT):
        return  # encrypted: Ansible needs the vault password first, and refuses it without
    if head[:1] in ("{", "[") and nesting_depth(text.encode(errors="replace")) <= limits.depth:
        try:
            data = json.loads(text, object_pairs_hook=_JsonKeys(where))
        except ValueError:
            pass  # not JSON (YAML flow style): the YAML reading below decides
        else:
            _count_json_hosts(data, where, limits, used)
            return  # JSON has no aliases; its depth and size are checked
    _check_events(text, where, limits, used)


def _count_json_hosts(data: Any, where: str, limits: Limits, used: _Used) -> None:
    todo = [data]
    while todo:  # iterative: depth is bounded, but no recursion is needed either
        node = todo.pop()
        if isinstance(node, dict):
            hosts = node.get("hosts")
            if isinstance(hosts, dict):
                for name in hosts:
                    used.add_host(name, where, 0, limits)
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)


def _count_ini_hosts(text: str, where: str, limits: Limits, used: _Used) -> None:
    """Host lines of an INI inventory: in a [group] section (not :vars or
    :children), the first word of each line is a host pattern."""
    hosts_section = True
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            hosts_section = not line.rstrip("]").endswith((":vars", ":children"))
            continue
        if hosts_section:
            used.add_host(line.split()[0], where, number, limits)


class _JsonKeys:
    def __init__(self, where: str) -> None:
        self.where = where

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise MirrorkitError(_duplicate(self.where, None, key, None))
            out[key] = value
        return out


@dataclass
class _Collection:
    mapping: bool
    anchor: str | None
    start_units: int
    expect_key: bool = True
    keys: dict[tuple[str, str], int] = field(default_factory=dict)
    last_key: str | None = None
    hosts: bool = False  # the value of a `hosts:` key: its keys are host patterns


def _check_events(text: str, where: str, limits: Limits, used: _Used) -> None:
    resolver = yaml.resolver.Resolver()
    stack: list[_Collection] = []
    anchors: dict[str, int] = {}
    anchor_keys: dict[str, list[str]] = {}  # an anchored mapping's keys, for `hosts: *a`
    units = 0
    loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    events = yaml.parse(text, Loader=loader)
    while True:
        try:
            event = next(events)
        except StopIteration:
            return
        except yaml.YAMLError:
            return  # Ansible reports the syntax error, with line and column
        if isinstance(event, yaml.DocumentStartEvent):
            anchors.clear()  # anchors are per document
            anchor_keys.clear()
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            done = stack.pop()
            if done.anchor is not None:
                anchors[done.anchor] = units - done.start_units
                anchor_keys[done.anchor] = [value for _, value in done.keys]
            _completed(stack)
            continue
        if not isinstance(event, yaml.NodeEvent):
            continue
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        parent = stack[-1] if stack else None
        if parent is not None and parent.mapping and parent.expect_key:
            _check_key(event, parent, resolver, where, line)
            if parent.hosts and isinstance(event, yaml.ScalarEvent):
                used.add_host(event.value, where, line, limits)
        if isinstance(event, yaml.AliasEvent):
            units += anchors.get(str(event.anchor), 1)
            if parent is not None and parent.mapping and not parent.expect_key and (
                parent.last_key == "hosts" or (parent.hosts and parent.last_key == _MERGE_KEY)
            ):  # `hosts: *a` or `<<: *a` inside hosts: the anchored mapping's keys are hosts
                for name in anchor_keys.get(str(event.anchor), []):
                    used.add_host(name, where, line, limits)
        elif isinstance(event, yaml.ScalarEvent):
            units += 1 + len(event.value)
            if event.anchor is not None:
                anchors[event.anchor] = 1 + len(event.value)
        else:
            is_map = isinstance(event, yaml.MappingStartEvent)
            hosts = bool(is_map and parent and parent.mapping and parent.last_key == "hosts")
            stack.append(_Collection(is_map, event.anchor, units, hosts=hosts))
            units += 1
            if len(stack) > limits.depth:
                raise MirrorkitError(
                    f"{where}, line {line}: nested more than {limits.depth} levels deep; an "
                    f"inventory may nest mappings and lists at most {limits.depth} levels"
                )
        if units > limits.expanded:
            raise MirrorkitError(
                f"{where}, line {line}: with its aliases (*name) expanded, the document "
                f"would exceed {limits.expanded:,} units (1 per mapping or list, 1 + length "
                "per string), twice what a file of the largest accepted size holds without "
                "aliases; use fewer or smaller aliases (a YAML alias bomb is refused here)"
            )
        if not isinstance(event, yaml.CollectionStartEvent):
            _completed(stack)


def _completed(stack: list[_Collection]) -> None:
    """A node ended inside the innermost collection: in a mapping, a key is
    followed by its value and a value by the next key."""
    if stack and stack[-1].mapping:
        stack[-1].expect_key = not stack[-1].expect_key


def _check_key(
    event: yaml.NodeEvent, mapping: _Collection, resolver: yaml.resolver.Resolver,
    where: str, line: int,
) -> None:
    mapping.last_key = event.value if isinstance(event, yaml.ScalarEvent) else None
    if not isinstance(event, yaml.ScalarEvent) or event.value == _MERGE_KEY:
        return  # a complex key, an alias as key, or a merge (<<: *a): not compared
    tag = event.tag
    if tag in (None, "!"):
        tag = resolver.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
    key = (str(tag), event.value)
    first = mapping.keys.get(key)
    if first is not None:
        raise MirrorkitError(_duplicate(where, line, event.value, first))
    mapping.keys[key] = line


def _duplicate(where: str, line: int | None, key: str, first: int | None) -> str:
    at = f", line {line}" if line is not None else ""
    before = f" (first at line {first})" if first else ""
    return (
        f"{where}{at}: key {key!r} appears twice in the same mapping{before}; each key may "
        "appear once (Ansible would silently keep only the last): remove or merge one"
    )
