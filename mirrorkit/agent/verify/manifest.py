"""Online verification: manifests of a mirror's trees, and comparing them.

A *manifest* describes every entry of a mirror's trees on one host: per path
(relative to its tree root, tree by index into the mirror's ``paths``) its
type, permission bits, size, mtime and content digest (regular files) or
target (symlinks). It honours the mirror's exclude patterns
(:func:`filespec.is_excluded`, the same rule capture uses) and reads the
trees with capture's walker (:mod:`mirrorkit.agent.util.walk`: never follows
a symlink below a tree root, skips what capture does not mirror: fifos,
sockets, devices).

What is compared (:func:`differs`) is what replication promises to keep
equal: for files type, mode, size, mtime and content; for symlinks the
target; for directories type and mode (directory mtimes are not mirrored).

The content digest is ``block_digest`` (blockindex's block hash) over the
concatenation of the file's 64 KiB block digests: the same function and
block size capture uses, so both sides hash alike.

Wire form (``mirrorkit-agent manifest``): JSON lines, first a header
``{"manifest": 1, "host", "mirror", "role", "trees", "applied_lsn"}``, then one
object per entry ``{"tree", "path", "type", "mode", "size", "mtime_ns",
"target", "digest"}``, then ``{"end": N}`` with the number of entries (a
truncated manifest is detected, never read as "files missing").
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mirrorkit.agent.apply.applier import reporting_mode
from mirrorkit.agent.apply.held_modes import LogicalMode
from mirrorkit.agent.capture.filespec import excluder, is_excluded
from mirrorkit.agent.capture.index import DIR, FILE, LINK
from mirrorkit.agent.util.fs import UnsafePath, open_dir_nofollow, open_file_nofollow, safe_parts
from mirrorkit.agent.util.hashing import block_digest, read_blocks
from mirrorkit.agent.util.walk import WalkEntry, lookup, walk

__all__ = [
    "BLOCK_SIZE",
    "Comparison",
    "Key",
    "ManifestError",
    "build_manifest",
    "compare",
    "differs",
    "file_digest",
    "manifest_entry",
    "parse_manifest",
]

BLOCK_SIZE = 64 * 1024  # capture's block size (WatchCapture's default)

Key = tuple[int, str]  # (tree index, path relative to the tree root)
Entry = dict[str, Any]


class ManifestError(Exception):
    """A manifest cannot be built or parsed; the message says why."""


def file_digest(fd: int, block_size: int = BLOCK_SIZE) -> tuple[str, int]:
    """(hex digest, bytes read) of the open file ``fd`` from offset 0."""
    hashes = bytearray()
    size = 0
    for offset, block, digest in read_blocks(fd, block_size):
        hashes += digest
        size = offset + len(block)
    return block_digest(bytes(hashes)).hex(), size


def _entry(found: WalkEntry, logical: LogicalMode | None = None) -> Entry | None:
    st, dfd, name = found.st, found.dir_fd, found.name
    assert st is not None
    base: Entry = {"tree": found.tree, "path": found.rel, "mode": stat.S_IMODE(st.st_mode)}
    if found.kind == DIR:
        return {**base, "type": DIR}
    if found.kind == LINK:
        try:
            target = os.readlink(name, dir_fd=dfd)
        except OSError:
            return None  # replaced while we looked
        return {**base, "type": LINK, "target": target}
    opened = open_file_nofollow(name, dfd)
    if opened is None:
        return None
    fd, fst = opened  # the stat of what we hash, taken before reading
    try:
        digest, size = file_digest(fd)
    finally:
        os.close(fd)
    mode = stat.S_IMODE(fst.st_mode)
    if logical is not None:  # setuid/setgid this member holds back (apply.held_modes)
        mode = logical(found.tree, found.rel, mode)
    return {**base, "type": FILE, "mode": mode, "size": size,
            "mtime_ns": fst.st_mtime_ns, "digest": digest}


def manifest_entry(root: str, tree: int, rel: str, exclude: Sequence[str],
                   logical: LogicalMode | None = None) -> Entry | None:
    """The entry of one path, or None when it is absent, excluded or not
    mirrored. A path that could leave the tree is a ManifestError."""
    try:
        safe_parts(rel)
    except UnsafePath as exc:
        raise ManifestError(f"refused path in tree {tree}: {exc}") from None
    if is_excluded(rel, exclude):
        return None
    with lookup(root, rel, tree=tree) as found:
        return None if found is None else _entry(found, logical)


def _walk(root: str, tree: int, exclude: Sequence[str],
          logical: LogicalMode | None) -> Iterator[Entry]:
    fd = open_dir_nofollow(root, "")
    if fd is None:
        raise ManifestError(f"mirror tree {root} is missing or not a directory")
    os.close(fd)
    for found in walk(root, tree=tree, skip=excluder(exclude)):
        entry = _entry(found, logical)
        if entry is not None:
            yield entry


def build_manifest(roots: Sequence[str], exclude: Sequence[str],
                   only: Iterable[Key] | None = None,
                   logical: LogicalMode | None = None) -> Iterator[Entry]:
    """Entries of every tree (``roots[i]`` is tree ``i``), or of just the
    paths in ``only`` (those absent produce nothing). ``logical(tree, rel,
    mode)`` turns a file's mode here into the primary's (a non-primary
    member holds setuid/setgid back)."""
    if only is None:
        for tree, root in enumerate(roots):
            yield from _walk(root, tree, exclude, logical)
        return
    for tree, rel in sorted(set(only)):
        if not 0 <= tree < len(roots):
            raise ManifestError(f"no tree {tree} in this mirror ({len(roots)} trees)")
        entry = manifest_entry(roots[tree], tree, rel, exclude, logical)
        if entry is not None:
            yield entry


def parse_manifest(lines: Iterable[str]) -> tuple[dict[str, Any], dict[Key, Entry]]:
    """(header, entries by key) from JSON lines; a missing header or end
    marker, or a count mismatch, is a ManifestError."""
    import json

    header: dict[str, Any] | None = None
    entries: dict[Key, Entry] = {}
    end: int | None = None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ManifestError(f"manifest line {n} is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ManifestError(f"manifest line {n} is not an object")
        if header is None:
            if obj.get("manifest") != 1:
                raise ManifestError("manifest does not start with a version-1 header")
            header = obj
        elif "end" in obj:
            end = int(obj["end"])
        else:
            entries[(int(obj["tree"]), str(obj["path"]))] = obj
    if header is None or end is None:
        raise ManifestError("manifest is truncated (no header or no end marker)")
    if end != len(entries):
        raise ManifestError(f"manifest announces {end} entries but holds {len(entries)}")
    return header, entries


_COMPARED = {FILE: ("type", "mode", "size", "mtime_ns", "digest"),
             DIR: ("type", "mode"), LINK: ("type", "target")}


def differs(primary: Mapping[str, Any], replica: Mapping[str, Any]) -> list[str]:
    """The fields in which ``replica`` differs from ``primary`` ([] = equal).

    A reporting copy (entries marked ``"ro"``) stores modes without group and
    other write bits (and files without setuid/setgid): its mode is compared
    with what apply makes of the primary's mode.
    """
    if primary.get("type") != replica.get("type"):
        return ["type"]
    fields = _COMPARED.get(str(primary.get("type")), ("type",))
    expected = dict(primary)
    if replica.get("ro") and isinstance(primary.get("mode"), int):
        expected["mode"] = reporting_mode(int(primary["mode"]), primary.get("type") == DIR)
    return [f for f in fields if expected.get(f) != replica.get(f)]


@dataclass
class Comparison:
    """One replica against the primary. ``different`` maps a key to the
    differing field names; ``orphans`` are on the replica only."""

    compared: int = 0
    matched: int = 0
    different: dict[Key, list[str]] = field(default_factory=dict)
    missing: list[Key] = field(default_factory=list)
    orphans: list[Key] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.different or self.missing or self.orphans)


def compare(primary: Mapping[Key, Entry], replica: Mapping[Key, Entry]) -> Comparison:
    out = Comparison(compared=len(primary))
    for key in sorted(primary):
        other = replica.get(key)
        if other is None:
            out.missing.append(key)
            continue
        fields = differs(primary[key], other)
        if fields:
            out.different[key] = fields
        else:
            out.matched += 1
    out.orphans = sorted(k for k in replica if k not in primary)
    return out
