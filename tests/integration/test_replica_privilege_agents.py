"""Replica privilege between real agents (docs/architecture.md, "Replica
privilege"): a setuid file on the primary arrives on the backup without the
bit, its logical mode survives a receiver restart, verify finds no
difference, a checksum resync sends nothing for it, and after a role swap
the promoted member's file is 4755 again (the demoted one holds it back)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_loopback import (  # type: ignore[import-not-found]
    MIRROR,
    Cluster,
    cluster_factory,
    make_cluster,
    wait_for,
)
from test_role_swap import until  # type: ignore[import-not-found]
from test_verify import LocalTransport  # type: ignore[import-not-found]

from mirrorkit.agent.apply.held_modes import HELD_MODES_FILE, HeldModes
from mirrorkit.agent.config import load_config
from mirrorkit.agent.daemon import Agent
from mirrorkit.agent.stream.receiver import ReceiverMirror
from mirrorkit.agent.stream.sender import PrimaryMirror
from mirrorkit.verification import verify_mirror

pytestmark = pytest.mark.integration
__all__ = ["cluster_factory"]


def mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None


def held_mode(state_dir: Path, rel: str, actual: int) -> int:
    held = HeldModes(state_dir / MIRROR / HELD_MODES_FILE, readonly=True)
    try:
        return held.logical(0, rel, actual)
    finally:
        held.close()


def test_a_setuid_file_is_held_back_on_the_backup_and_verify_and_resync_agree(
        cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None)})
    root, replica = c.nodes["node1"].root, c.nodes["node2"].root
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "bin" / "tool", 0o4755)
    (root / "plain").write_text("plain\n")
    for name in c.nodes:
        c.start(name)
    wait_for(lambda: (replica / "plain").exists() and mode(replica / "bin" / "tool") == 0o755
             and (replica / "bin" / "tool").read_bytes() == (root / "bin" / "tool").read_bytes(),
             "the setuid file on node2, without the bit")
    assert held_mode(c.nodes["node2"].state_dir, "bin/tool", 0o755) == 0o4755
    assert mode(root / "bin" / "tool") == 0o4755  # the primary keeps its file as it is
    assert c.mirror("node2")["held_setid_files"] == 1

    c.stop("node2")
    c.start("node2")
    wait_for(lambda: c.mirror("node2").get("connected"), "node2 back")
    assert mode(replica / "bin" / "tool") == 0o755
    assert held_mode(c.nodes["node2"].state_dir, "bin/tool", 0o755) == 0o4755

    report = verify_mirror(LocalTransport(c), MIRROR, "node1", {"node2": "backup"})
    assert report["ok"], report

    got = subprocess.run([sys.executable, "-m", "mirrorkit.agent.cli.main", "--config",
                          str(c.nodes["node1"].config), "resync", "--mirror", MIRROR,
                          "--member", "node2", "--mode", "checksum"],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stdout + got.stderr

    def resynced() -> dict[str, Any] | None:
        r = c.mirror("node2").get("resync")
        return r if r and r.get("state") == "done" and c.mirror("node2")["resyncs"] >= 1 \
            else None

    r = wait_for(resynced, "the checksum resync ends")
    assert r["records"] == 0, r  # nothing differed: no CHMOD of the held-back file
    assert mode(replica / "bin" / "tool") == 0o755


def test_promotion_gives_the_bits_back_and_demotion_holds_them(tmp_path: Path) -> None:
    c = make_cluster(tmp_path, {"node1": ("primary", None), "node2": ("backup", None)})
    agents = {n: Agent(load_config(node.config)) for n, node in c.nodes.items()}
    root = {n: node.root for n, node in c.nodes.items()}

    def sup(name: str) -> Any:
        return agents[name].supervisors[MIRROR]

    async def switch(old: str, new: str, term: int) -> None:
        await sup(old).roles.change("backup", term, new, "test: switchover")
        await sup(new).roles.change("primary", term, new, "test: switchover")
        await until(lambda: isinstance(sup(new).worker, PrimaryMirror)
                    and isinstance(sup(old).worker, ReceiverMirror), f"{new} runs as primary")

    async def main() -> None:
        (root["node1"] / "tool").write_bytes(b"#!/bin/sh\n")
        os.chmod(root["node1"] / "tool", 0o4755)
        runs = [asyncio.create_task(a.run(signals=False)) for a in agents.values()]
        try:
            await until(lambda: mode(root["node2"] / "tool") == 0o755, "held back on node2")
            await switch("node1", "node2", 2)
            assert mode(root["node2"] / "tool") == 0o4755  # before it serves as primary
            await until(lambda: mode(root["node1"] / "tool") == 0o755,
                        "the demoted node1 holds the bit back")
            (root["node2"] / "after").write_text("written on node2\n")
            await until(lambda: (root["node1"] / "after").exists(), "term 2 replicates")
            assert mode(root["node2"] / "tool") == 0o4755
            assert mode(root["node1"] / "tool") == 0o755
            await switch("node2", "node1", 3)
            assert mode(root["node1"] / "tool") == 0o4755
            await until(lambda: mode(root["node2"] / "tool") == 0o755, "node2 holds it back")
        finally:
            for a in agents.values():
                a.stop()
            await asyncio.gather(*runs, return_exceptions=True)

    asyncio.run(main())
