"""Manifests and their comparison (agent/verify.py), repair ops (agent/repair.py)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from mirrorkit.agent.log.records import OpKind
from mirrorkit.agent.util.hashing import block_digest
from mirrorkit.agent.verify.manifest import (
    BLOCK_SIZE,
    ManifestError,
    build_manifest,
    compare,
    parse_manifest,
)
from mirrorkit.agent.verify.repair import RepairResult, locate, repair_ops
from mirrorkit.verification import Manifest, verify_mirror


def tree(root: Path) -> Path:
    (root / "d" / "e").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "d" / "big").write_bytes(os.urandom(BLOCK_SIZE * 2 + 10))
    (root / "d" / "x.tmp").write_bytes(b"excluded")
    (root / "cache").mkdir()
    (root / "cache" / "inside").write_bytes(b"excluded too")
    (root / "link").symlink_to("/etc")  # never followed
    (root / "dangling").symlink_to("nowhere")
    os.mkfifo(root / "fifo")  # not mirrored
    os.chmod(root / "a.txt", 0o640)
    return root


EXCLUDE = ["*.tmp", "cache/**"]


def manifest(root: Path, only: list[tuple[int, str]] | None = None) -> dict[tuple[int, str],
                                                                            dict[str, object]]:
    return {(e["tree"], e["path"]): e for e in build_manifest([str(root)], EXCLUDE, only)}


def test_manifest_lists_what_is_mirrored(tmp_path: Path) -> None:
    m = manifest(tree(tmp_path / "p"))
    assert sorted(p for _, p in m) == ["a.txt", "d", "d/big", "d/e", "dangling", "link"]
    assert m[(0, "link")]["type"] == "l" and m[(0, "link")]["target"] == "/etc"
    assert m[(0, "d")]["type"] == "d" and "digest" not in m[(0, "d")]
    a = m[(0, "a.txt")]
    assert (a["type"], a["mode"], a["size"]) == ("f", 0o640, 5)
    assert a["mtime_ns"] == os.stat(tmp_path / "p" / "a.txt").st_mtime_ns
    # the digest is blockindex's block hash over the block hashes
    assert a["digest"] == block_digest(block_digest(b"alpha")).hex()
    data = (tmp_path / "p" / "d" / "big").read_bytes()
    blocks = [data[i:i + BLOCK_SIZE] for i in range(0, len(data), BLOCK_SIZE)]
    expect = block_digest(b"".join(block_digest(b) for b in blocks)).hex()
    assert m[(0, "d/big")]["digest"] == expect


def test_manifest_of_chosen_paths_never_crosses_a_symlink(tmp_path: Path) -> None:
    root = tree(tmp_path / "p")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s")
    (root / "through").symlink_to(tmp_path / "outside")
    only = [(0, "a.txt"), (0, "through/secret"), (0, "d/x.tmp"), (0, "gone"), (0, "d")]
    m = manifest(root, only)
    assert sorted(p for _, p in m) == ["a.txt", "d"]
    with pytest.raises(ManifestError):
        list(build_manifest([str(root)], [], [(3, "a.txt")]))


def test_compare_reports_missing_different_and_orphans(tmp_path: Path) -> None:
    p = manifest(tree(tmp_path / "p"))
    r = {k: dict(v) for k, v in p.items()}
    del r[(0, "a.txt")]
    r[(0, "d/big")]["digest"] = "0" * 32
    r[(0, "d")]["mode"] = 0o700
    r[(0, "link")]["target"] = "/tmp"
    r[(0, "orphan")] = {"tree": 0, "path": "orphan", "type": "f"}
    r[(0, "d/e")] = {"tree": 0, "path": "d/e", "type": "f"}
    c = compare(p, r)
    assert c.missing == [(0, "a.txt")]
    assert c.different == {(0, "d/big"): ["digest"], (0, "d"): ["mode"],
                           (0, "link"): ["target"], (0, "d/e"): ["type"]}
    assert c.orphans == [(0, "orphan")]
    assert (c.compared, c.matched, c.ok) == (6, 1, False)
    assert compare(p, p).ok


def test_directory_mtime_is_not_compared(tmp_path: Path) -> None:
    p = manifest(tree(tmp_path / "p"))
    os.utime(tmp_path / "p" / "d", ns=(1, 1))
    assert compare(p, manifest(tmp_path / "p")).ok


def test_parse_manifest_detects_truncation() -> None:
    head = json.dumps({"manifest": 1, "trees": ["/t"]})
    line = json.dumps({"tree": 0, "path": "a", "type": "d", "mode": 0o755})
    header, entries = parse_manifest([head, line, json.dumps({"end": 1})])
    assert header["trees"] == ["/t"] and list(entries) == [(0, "a")]
    for lines in ([head, line], [line], [head, line, json.dumps({"end": 2})], ["{"]):
        with pytest.raises(ManifestError):
            parse_manifest(lines)


def test_repair_ops_set_full_state_parents_first(tmp_path: Path) -> None:
    root = tree(tmp_path / "p")
    result = RepairResult()
    paths = [f"{root}/d/big", f"{root}/d", f"{root}/link", f"{root}/gone", f"{root}/d/x.tmp",
             "/elsewhere/a", f"{root}/../p/a.txt"]
    ops = list(repair_ops([str(root)], EXCLUDE, paths, result))
    starts = [(o.kind, o.path) for o in ops if o.kind is not OpKind.WRITE
              and o.kind is not OpKind.UTIME]
    assert starts == [(OpKind.CREATE, "a.txt"), (OpKind.MKDIR, "d"), (OpKind.SYMLINK, "link"),
                      (OpKind.CREATE, "d/big")]  # parents before children
    big = [o for o in ops if o.path == "d/big"]
    assert [o.kind for o in big] == [OpKind.CREATE] + [OpKind.WRITE] * 3 + [OpKind.UTIME]
    assert b"".join(o.data for o in big) == (root / "d" / "big").read_bytes()
    assert result.not_on_primary == [f"{root}/gone"]
    assert result.refused == [f"{root}/d/x.tmp", "/elsewhere/a"]
    assert sorted(result.resent) == sorted([f"{root}/d/big", f"{root}/d", f"{root}/link",
                                            f"{root}/../p/a.txt"])


def test_locate() -> None:
    roots = ["/srv/a", "/srv/ab"]
    assert locate("/srv/ab/x", roots) == (1, "x")
    assert locate("/srv/a/x/../y", roots) == (0, "y")
    assert locate("/srv/a", roots) is None
    assert locate("/srv/abc/x", roots) is None


class DirTransport:
    """verify_mirror's transport over local directories: real manifests of
    real trees; ``between`` runs before each round after the first (what
    replication or a writer does meanwhile)."""

    def __init__(self, roots: dict[str, Path], between: list[Callable[[], None]]) -> None:
        self.roots = roots
        self.between = between
        self.lsn = 0

    def primary_lsn(self, host: str, mirror: str) -> int:
        self.lsn += 1
        if self.lsn > 1 and self.between:
            self.between.pop(0)()
        return self.lsn

    def manifest(self, host: str, mirror: str, at_lsn: int | None,
                 only: Sequence[tuple[int, str]] | None) -> Manifest:
        entries = build_manifest([str(self.roots[host])], EXCLUDE, only)
        return {"trees": [str(self.roots[host])]}, {(e["tree"], e["path"]): e for e in entries}

    def repair(self, host: str, mirror: str, paths: Sequence[str]) -> dict[str, Any]:
        raise AssertionError("not asked to repair")


def test_recheck_drops_lag_and_writes_in_progress(tmp_path: Path) -> None:
    p, r = tmp_path / "p", tmp_path / "r"
    for root in (p, r):
        root.mkdir()
    (p / "stable").write_text("same")
    shutil.copy2(p / "stable", r / "stable")
    (p / "late").write_text("replica catches up")  # missing on r in round 1 only
    (p / "busy").write_text("v1")  # being written on the primary
    (r / "busy").write_text("v0")
    (p / "wrong").write_text("primary")
    (r / "wrong").write_text("replica")
    os.utime(r / "wrong", ns=(1, os.stat(p / "wrong").st_mtime_ns))

    def meanwhile() -> None:
        shutil.copy2(p / "late", r / "late")
        (p / "busy").write_text("v2")

    t = DirTransport({"p": p, "r": r}, [meanwhile])
    report = verify_mirror(t, "m", "p", {"r": "backup"}, settle=0)
    [m] = report["members"]
    assert m["missing"] == [] and m["orphans"] == []
    assert m["different"] == [{"path": f"{p}/wrong", "fields": ["digest"]}]
    assert m["changing"] == [f"{p}/busy"]
    assert (m["compared"], m["matched"], report["ok"]) == (4, 2, False)


def test_reporting_copy_modes_are_compared_as_apply_stores_them() -> None:
    from mirrorkit.agent.verify.manifest import differs

    primary = {"type": "f", "mode": 0o4775, "size": 1, "mtime_ns": 5, "digest": "x"}
    locked = {**primary, "mode": 0o755, "ro": True}
    assert differs(primary, locked) == []
    # Without the reporting mark the same bits are a real difference...
    assert differs(primary, {**primary, "mode": 0o755}) == ["mode"]
    # ...and a reporting copy that kept a group-writable bit is reported.
    assert differs(primary, {**locked, "mode": 0o775}) == ["mode"]
    directory = {"type": "d", "mode": 0o2777}
    assert differs(directory, {"type": "d", "mode": 0o2755, "ro": True}) == []
