"""File specs end to end: one mirror with two paths and excludes (`*.tmp`
anywhere, `cache/**` anchored at a path's root), applied identically by the
initial mirror, live capture, checksum resync and the verify manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_loopback import (  # type: ignore[import-not-found]
    Cluster,
    Node,
    cluster_factory,
    differences,
    wait_for,
)

from mirrorkit.agent.verify.manifest import compare, parse_manifest

__all__ = ["cluster_factory"]  # the fixture, re-exported for this module
pytestmark = pytest.mark.integration
EXCLUDE = ["*.tmp", "cache/**"]


def two_path_cluster(factory: Callable[..., Cluster]) -> tuple[Cluster, list[Path], list[Path]]:
    """node1 primary of two paths, node2 backup; each config rewritten so the
    mirror has both paths, the excludes, and per-host targets."""
    c = factory({"node1": ("primary", None), "node2": ("backup", None)})
    primary, backup = c.nodes["node1"], c.nodes["node2"]
    sources = [primary.root, primary.root.parent / "data2"]
    replicas = [backup.root.parent / "replica-a", backup.root.parent / "replica-b"]
    for path in sources:
        path.mkdir(parents=True, exist_ok=True)
    for node, targets in ((primary, sources), (backup, replicas)):
        cfg = yaml.safe_load(node.config.read_text())
        mirror = cfg["mirrors"]["records"]
        mirror.update(paths=[str(p) for p in sources], exclude=EXCLUDE,
                      targets=[str(t) for t in targets])
        node.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return c, sources, replicas


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def agent(node: Node, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirrorkit.agent.cli.main", "--config", str(node.config), *args],
        capture_output=True, text=True, timeout=120, check=False, input=stdin,
    )


def manifest(node: Node) -> dict[Any, Any]:
    proc = agent(node, "manifest", "--mirror", "records", "--api-port", str(node.api_port))
    assert proc.returncode == 0, proc.stderr
    return parse_manifest(proc.stdout.splitlines())[1]


def expected_only(src: Path) -> set[str]:
    """What a replica of ``src`` must hold under EXCLUDE."""
    out = set()
    for p in src.rglob("*"):
        rel = p.relative_to(src).as_posix()
        if rel.endswith(".tmp") or rel == "cache" or rel.startswith("cache/"):
            continue
        out.add(rel)
    return out


def test_two_paths_with_excludes_everywhere(cluster_factory: Callable[..., Cluster]) -> None:
    c, sources, replicas = two_path_cluster(cluster_factory)
    a, b = sources
    # Before the agents start: the initial mirror.
    write(a / "a.txt", "a")
    write(a / "x.tmp", "scratch")
    write(a / "cache/c1", "cached")           # excluded: cache/** at the path's root
    write(a / "sub/cache/keep.txt", "keep")   # not excluded: cache/** is anchored
    write(b / "b.txt", "b")
    write(b / "deep/y.tmp", "scratch")
    for name in c.nodes:
        c.start(name)
    try:
        def trees_match() -> bool:
            return all({p.relative_to(r).as_posix() for p in r.rglob("*")} == expected_only(s)
                       for s, r in zip(sources, replicas, strict=True) if r.exists())
        wait_for(lambda: all(r.exists() for r in replicas) and trees_match(),
                 "the initial mirror of both paths, without excluded files", timeout=90)
        # Live capture: the same rules.
        write(a / "a.txt", "a2")
        write(b / "c.txt", "c")
        write(b / "z.tmp", "scratch")
        write(b / "cache/also-excluded", "x")
        wait_for(lambda: (replicas[1] / "c.txt").exists()
                 and (replicas[0] / "a.txt").read_text() == "a2" and trees_match(),
                 "live changes in both paths, excluded ones skipped", timeout=60)
        assert not (replicas[1] / "z.tmp").exists()
        assert not (replicas[1] / "cache").exists()
        # The verify manifests leave the same files out on both sides.
        prim, back = manifest(c.nodes["node1"]), manifest(c.nodes["node2"])
        assert {k[0] for k in prim} == {0, 1}
        assert not any(str(k[1]).endswith(".tmp") for k in prim)
        assert compare(prim, back).ok
        # A resync does not treat a replica's own excluded file as an orphan.
        write(replicas[0] / "local.tmp", "the backup's own scratch file")
        write(replicas[1] / "b.txt", "damaged")
        proc = agent(c.nodes["node1"], "resync", "--mirror", "records", "--member", "node2",
                     "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        wait_for(lambda: (replicas[1] / "b.txt").read_text() == "b", "resync repairs b.txt",
                 timeout=60)
        view = wait_for(lambda: (c.mirror("node1").get("peers", {}).get("node2", {})
                                 .get("resync") or {}).get("state") == "done"
                        and c.mirror("node1")["peers"]["node2"]["resync"], "resync done")
        assert view["orphans"] == 0, json.dumps(view)
        assert (replicas[0] / "local.tmp").read_text() == "the backup's own scratch file"
        for src, rep in zip(sources, replicas, strict=True):
            diffs = [d for d in differences(src, rep) if ".tmp" not in d and "cache" not in d]
            assert diffs == [], diffs
    finally:
        c.stop_all()
