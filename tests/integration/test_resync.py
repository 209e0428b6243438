"""Difference resync between real agents on loopback: compare modes move what
they should, the automatic catch-up uses checksums and shows in status, and
``mirrorkit-agent resync`` starts one on the primary.

Every wait is a poll with a generous deadline; nothing asserts speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_loopback import (  # type: ignore[import-not-found]
    MIRROR,
    Cluster,
    cluster_factory,
    differences,
    outrun_the_log,
    wait_for,
)

pytestmark = pytest.mark.integration
__all__ = ["cluster_factory"]  # the fixture, re-exported for this module

BLOCK = 64 * 1024


@pytest.fixture
def pair(cluster_factory: Callable[..., Cluster],
         request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """node1 primary and dr1 async, started, with a first copy done."""
    c = cluster_factory({"node1": ("primary", None), "dr1": ("async", "dr")})
    root = c.nodes["node1"].root
    big = bytes(range(256)) * (100 * BLOCK // 256)  # 100 blocks
    (root / "big").write_bytes(big)
    (root / "sub").mkdir()
    for i in range(5):
        (root / "sub" / f"f{i}").write_bytes(os.urandom(3000 + i))
    for name in c.nodes:
        c.start(name)
    wait_for(lambda: c.converged("node1", "dr1"), "first copy")
    yield c
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(c.dump_logs())


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirrorkit.agent.cli.main", *args],
                          capture_output=True, text=True, timeout=60)


def resync(c: Cluster, mode: str, *extra: str) -> dict[str, Any]:
    """Start a resync of dr1 through ``mirrorkit-agent resync`` on node1 and
    wait until dr1 reports it done; return dr1's resync status."""
    got = agent_cli("--config", str(c.nodes["node1"].config), "resync", "--mirror", MIRROR,
                    "--member", "dr1", "--mode", mode, "--json", *extra)
    assert got.returncode == 0, got.stdout + got.stderr
    rid = json.loads(got.stdout)["resyncs"]["dr1"]

    def done() -> dict[str, Any] | None:
        r = c.mirror("dr1").get("resync") or {}
        return r if r.get("id") == rid and r.get("state") == "done" else None

    status: dict[str, Any] = wait_for(done, f"{mode} resync {rid} done")
    primary_view = c.mirror("node1")["peers"]["dr1"]["resync"]
    assert primary_view["id"] == rid and primary_view["requested_by"] == "operator"
    wait_for(lambda: primary_view["state"] == "done" or
             c.mirror("node1")["peers"]["dr1"]["resync"]["state"] == "done",
             "primary's view done")
    return status


def test_checksum_mode_moves_only_the_changed_blocks(pair: Cluster) -> None:
    c = pair
    replica = c.nodes["dr1"].root
    st = os.stat(replica / "big")
    with open(replica / "big", "r+b") as f:  # damage 1 block in 100 on the replica
        f.seek(37 * BLOCK + 5)
        f.write(b"X" * 10)
    os.utime(replica / "big", ns=(st.st_atime_ns, st.st_mtime_ns))
    (replica / "only-here").write_text("replica only")
    assert differences(c.nodes["node1"].root, replica) != []
    r = resync(c, "checksum", "--keep-orphans")
    assert r["mode"] == "checksum"
    assert r["bytes_received"] == BLOCK  # one block of ~6.4 MB moved
    assert r["files_total"] == 6 and r["files_done"] == 6
    assert r["bytes_done"] == r["bytes_total"] > 100 * BLOCK
    # the operator asked to keep orphans: reported, not moved
    assert r["orphans_kept"] == 1 and r["orphans_moved"] == 0
    assert (replica / "only-here").exists()
    assert Path(r["report"]).read_text().startswith("kept\t0\tonly-here")
    (replica / "only-here").unlink()
    assert differences(c.nodes["node1"].root, replica) == []
    # streaming continues after the resync
    (c.nodes["node1"].root / "after").write_text("later")
    wait_for(lambda: (replica / "after").exists(), "streaming after the resync")


def test_different_newer_and_all_modes(pair: Cluster) -> None:
    c = pair
    primary, replica = c.nodes["node1"].root, c.nodes["dr1"].root
    f0, f1 = replica / "sub" / "f0", replica / "sub" / "f1"
    st0, st1 = os.stat(f0), os.stat(f1)
    # f0: same size and mtime, other content -> invisible to `different`
    f0.write_bytes(b"Z" * st0.st_size)
    os.utime(f0, ns=(st0.st_atime_ns, st0.st_mtime_ns))
    # f1: other size, replica copy newer than the primary's
    f1.write_bytes(b"short")
    os.utime(f1, ns=(st1.st_atime_ns, st1.st_mtime_ns + 10**9))
    (replica / "orphan").write_text("gone on the primary")

    r = resync(c, "newer")  # nothing on the primary is newer: nothing moves
    assert r["bytes_received"] == 0
    assert r["orphans_moved"] == 1 and not (replica / "orphan").exists()
    assert list((c.nodes["dr1"].state_dir / MIRROR / "quarantine").rglob("orphan"))

    r = resync(c, "different")  # f1 differs in size and mtime: sent whole
    assert r["bytes_received"] == st1.st_size
    assert f1.read_bytes() == (primary / "sub" / "f1").read_bytes()
    assert f0.read_bytes() != (primary / "sub" / "f0").read_bytes()

    r = resync(c, "all")  # everything is sent whole
    total = sum(p.stat().st_size for p in primary.rglob("*") if p.is_file())
    assert r["bytes_received"] == total
    assert differences(primary, replica) == []


def test_catch_up_after_log_trimming_is_a_checksum_resync(
    cluster_factory: Callable[..., Cluster],
) -> None:
    c = cluster_factory({"node1": ("primary", None), "dr1": ("async", "dr")},
                        extra={"log_max_bytes": 64 * 1024, "log_segment_bytes": 16 * 1024})
    root = c.nodes["node1"].root
    (root / "kept").write_bytes(os.urandom(5 * BLOCK))
    for name in c.nodes:
        c.start(name)
    wait_for(lambda: c.converged("node1", "dr1"), "first copy")
    assert c.stop("dr1") == 0
    outrun_the_log(c, root, c.mirror("node1")["lsn"])
    c.start("dr1")
    wait_for(lambda: c.mirror("dr1").get("resyncs") == 1, "dr1 resyncs")
    r = c.mirror("dr1")["resync"]
    assert r["mode"] == "checksum" and r["state"] == "done"
    # the unchanged 5-block file did not move; the 12 new files did
    assert r["bytes_received"] == 12 * 30_000
    p = c.mirror("node1")["peers"]["dr1"]["resync"]
    assert p["requested_by"] == "auto" and p["mode"] == "checksum"
    wait_for(lambda: differences(root, c.nodes["dr1"].root) == [], "convergence")


def test_resync_command_refuses_clearly(pair: Cluster) -> None:
    c = pair
    primary = str(c.nodes["node1"].config)
    got = agent_cli("--config", primary, "resync", "--mirror", MIRROR, "--member", "nope")
    assert got.returncode == 1 and "not a receiver" in got.stderr
    got = agent_cli("--config", str(c.nodes["dr1"].config), "resync", "--mirror", MIRROR)
    assert got.returncode == 1 and "not the primary" in got.stderr
    got = agent_cli("--config", primary, "resync", "--mirror", MIRROR, "--mode", "bogus")
    assert got.returncode == 2  # argparse usage error
