"""A former primary's divergent tail: found by term history, quarantined with a
report, and the member brought back to the new primary's version.

The diverged state is built directly (failover comes with a later issue): the
old primary keeps writing in term 1 while the backup is down; then the backup
is made primary of term 2 (its state.json, as a promotion would leave it) and
writes its own changes. When the old primary comes back it still believes it
is primary of term 1; the arbiter has seen term 2 and says so in every
heartbeat, so the old primary steps down (inside the running agent), joins
the new primary as backup, quarantines what it wrote after term 2 began and
is resynced. The DR copy, which received the old primary's tail, is handled
the same way.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from test_loopback import (
    Cluster,
    cluster,  # noqa: F401 - fixture
    cluster_factory,  # noqa: F401 - fixture
    differences,
    wait_for,
)

pytestmark = pytest.mark.integration


def _write_state(c: Cluster, name: str, term: int, role: str, primary: str) -> None:
    path = c.nodes[name].state_dir / "records" / "state.json"
    path.write_text(json.dumps({"term": term, "role": role, "primary": primary}))


def _lsn(c: Cluster, name: str) -> int:
    return int(c.mirror(name).get("lsn") or 0)


def _report(c: Cluster, name: str) -> Path | None:
    q = c.nodes[name].state_dir / "records" / "quarantine"
    reports = sorted(q.glob("diverged-*/REPORT.txt")) if q.exists() else []
    return reports[-1] if reports else None


def test_divergent_tail_is_quarantined_and_resynced(cluster: Cluster) -> None:  # noqa: F811
    c = cluster
    n1 = c.nodes["node1"].root
    wait_for(lambda: all(c.mirror(r).get("connected") for r in ("node2", "dr1")),
             "receivers connect")
    (n1 / "a.txt").write_text("base a\n")
    (n1 / "b.txt").write_text("base b\n")
    (n1 / "dir").mkdir()
    (n1 / "dir" / "c.txt").write_text("base c\n")
    (n1 / "keep.txt").write_text("untouched\n")
    wait_for(lambda: not differences(n1, c.nodes["node2"].root)
             and not differences(n1, c.nodes["dr1"].root), "base files everywhere")
    wait_for(lambda: c.mirror("node2").get("applied_lsn") == _lsn(c, "node1"),
             "backup applied everything")

    # node2 goes away; node1 writes on alone in term 1 (dr1 receives it).
    c.stop("node2")
    base_lsn = _lsn(c, "node1")
    (n1 / "a.txt").write_text("node1's divergent a\n")
    (n1 / "new.txt").write_text("only node1 wrote this\n")
    os.rename(n1 / "b.txt", n1 / "b2.txt")
    os.unlink(n1 / "dir" / "c.txt")
    (n1 / "newdir").mkdir()
    (n1 / "newdir" / "deep.txt").write_text("in a new directory\n")
    wait_for(lambda: not differences(n1, c.nodes["dr1"].root), "dr1 holds node1's tail")
    assert _lsn(c, "node1") > base_lsn
    c.stop("node1", signal.SIGKILL)
    c.stop("dr1")

    # node2 was promoted meanwhile (term 2) and writes its own changes.
    _write_state(c, "node2", 2, "primary", "node2")
    c.start("node2")
    n2 = c.nodes["node2"].root
    wait_for(lambda: c.mirror("node2").get("role") == "primary", "node2 runs as primary")
    (n2 / "a.txt").write_text("node2's a\n")
    (n2 / "n2.txt").write_text("written by the new primary\n")
    wait_for(lambda: _lsn(c, "node2") > base_lsn, "node2 logs in term 2")

    # node1 comes back believing it is primary of term 1; dr1 too.
    c.start("node1")
    c.start("dr1")
    wait_for(lambda: c.mirror("node1").get("role") == "backup"
             and c.mirror("node1").get("term") == 2, "node1 steps down to backup of term 2",
             timeout=90)
    for r in ("node1", "dr1"):
        wait_for(lambda r=r: not differences(n2, c.nodes[r].root)
                 and c.mirror(r).get("connected"), f"{r} converges to node2", timeout=120)
    node1 = c.nodes["node1"]
    assert "stops acting as primary" in node1.log_text()
    # the old primary's tail is in its quarantine, with a report
    report = _report(c, "node1")
    assert report is not None, node1.log_text()[-3000:]
    text = report.read_text()
    for path in ("a.txt", "new.txt", "b.txt", "b2.txt", "dir/c.txt", "newdir"):
        assert f"\t{path}\t" in text, text
    assert f"shared up to LSN\t{base_lsn}" in text and "terms of those records\t1" in text
    moved = report.parent / "0"
    assert (moved / "a.txt").read_text() == "node1's divergent a\n"
    assert (moved / "new.txt").read_text() == "only node1 wrote this\n"
    assert (moved / "b2.txt").read_text() == "base b\n"
    assert (moved / "newdir" / "deep.txt").read_text() == "in a new directory\n"
    # and the replica is node2's version: nothing of the tail silently kept
    r1 = node1.root
    assert (r1 / "a.txt").read_text() == "node2's a\n"
    assert (r1 / "b.txt").read_text() == "base b\n" and not (r1 / "b2.txt").exists()
    assert (r1 / "dir" / "c.txt").read_text() == "base c\n"
    assert not (r1 / "new.txt").exists() and not (r1 / "newdir").exists()
    assert (r1 / "keep.txt").read_text() == "untouched\n"
    # dr1 received the same tail from node1: it quarantined it too
    assert _report(c, "dr1") is not None
    st = c.mirror("node1")
    assert st["divergences"] >= 1 and st["last_divergence"]["shared_lsn"] == base_lsn
    moved = sum(1 for line in text.splitlines()[7:] if not line.endswith("\t-"))
    counted = c.metric("node1", "mirrorkit_quarantined_files_total", mirror="records",
                       member="node1", reason="diverged")
    assert moved > 0 and counted is not None and counted >= moved  # once per divergence
    # term histories agree now (node1 adopted node2's at the resync)
    hist = [json.loads((c.nodes[n].state_dir / "records" / "terms.json").read_text())
            for n in ("node1", "node2")]
    assert hist[1]["history"][-1][0] == 2
    assert hist[0]["history"][: len(hist[1]["history"])] == hist[1]["history"]
